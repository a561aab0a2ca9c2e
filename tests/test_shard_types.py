"""Shards whose columns hold the same values under different Arrow types (pandas 3 writes
large_string, pyarrow string; view types; dictionaries; null-typed empty or all-null columns) are
one input: their columns are read as the first shard's types, view types as large ones."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.inputs import integer_holding_both, type_family, type_holding_both, typed_by_values
from tests.conftest import read_manifest, record, run_cli, run_clis, write_parquet


def _outputs(output, kind: str) -> pa.Table:
    return pq.read_table(sorted(output.glob(f"{kind}-*.parquet")))


def test_shards_of_one_type_family_are_read_as_the_first_shards_types(tmp_path):
    folder = tmp_path / "in"
    write_parquet(folder / "a.parquet", id=["a", "b"], text=["text a", "text b"], title=["A", "B"])
    pd.DataFrame({"id": ["c", "d"], "text": ["text c", "text d"], "title": ["C", "D"]}).to_parquet(
        folder / "b.parquet", index=False
    )
    empty = pd.DataFrame({name: pd.Series([], dtype=object) for name in ("id", "text", "title")})
    empty.to_parquet(folder / "0.parquet", index=False)  # first, and typeless: the plan takes a.parquet's types
    nulls = write_parquet(folder / "d.parquet", id=pa.nulls(2), text=["text n1", "text n2"], title=pa.nulls(2))
    write_parquet(
        folder / "e.parquet",
        id=pa.array(["e"], pa.string_view()),
        text=pa.array(["text e"], pa.string_view()),
        title=pa.array(["E"]).dictionary_encode(),
    )
    write_parquet(folder / "f.parquet", id=["f"], text=["text f"], title=pa.nulls(1))
    assert [pq.read_schema(folder / f"{name}.parquet").field("id").type for name in "0abdef"] == [
        pa.null(),
        pa.string(),
        pa.large_string(),
        pa.null(),
        pa.string_view(),
        pa.string(),
    ]
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "title,text")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (8, 6, 2)
    assert manifest["rejected_by_reason"] == {"null_id": 2}
    case = "shards: string, large_string, null, view"
    outcome = "success: one type; null ids rejected"
    assert record("input", case, outcome, sorted(folder.glob("*.parquet")), output) == 0
    rejected = _outputs(output, "rejected")
    assert rejected.schema.field("id").type == pa.string()
    assert sorted((r["source_file"], r["row_number"], r["reason"]) for r in rejected.to_pylist()) == [
        (str(nulls), 0, "null_id"),
        (str(nulls), 1, "null_id"),
    ]
    embedded = _outputs(output, "embeddings")
    assert [embedded.schema.field(name).type for name in ("id", "title", "text")] == [pa.string()] * 3
    assert sorted(embedded.select(["id", "title", "text"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": "a", "title": "A", "text": "text a"},
        {"id": "b", "title": "B", "text": "text b"},
        {"id": "c", "title": "C", "text": "text c"},
        {"id": "d", "title": "D", "text": "text d"},
        {"id": "e", "title": "E", "text": "text e"},
        {"id": "f", "title": None, "text": "text f"},
    ]


def test_view_typed_first_shard_is_read_as_large_types_and_once_under_three_spellings(tmp_path):
    path = write_parquet(
        tmp_path / "v.parquet",
        id=pa.array(["v1", "v2"], pa.string_view()),
        text=pa.array(["hello world", "foo"], pa.string_view()),
        note=pa.array([b"\x00x", None], pa.binary_view()),
        label=pa.array(["one", "two"], pa.string_view()),
    )
    (tmp_path / "sub").mkdir()
    spellings = f"{path},{tmp_path}/./v.parquet,{tmp_path}/sub/../v.parquet"  # one file: read once
    output = tmp_path / "out"
    result = run_cli("--input", spellings, "--output", str(output), "--carry_columns", "note,label,text")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (2, 2, 0)
    outcome = "success: large types; the file read once"
    assert record("input", "view types; one file under three spellings", outcome, [path], output) == 0
    embedded = _outputs(output, "embeddings")
    assert [embedded.schema.field(name).type for name in ("id", "note", "label", "text")] == [
        pa.large_string(),
        pa.large_binary(),
        pa.large_string(),
        pa.string(),
    ]
    assert sorted(embedded.select(["id", "note", "label", "text"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": "v1", "note": b"\x00x", "label": "one", "text": "hello world"},
        {"id": "v2", "note": None, "label": "two", "text": "foo"},
    ]


def test_a_view_typed_text_column_holding_only_nulls_is_read_and_its_rows_rejected_as_null_text(tmp_path):
    """Told null by its footer, a string_view or binary_view text column was read as it is, not cast:
    Arrow has no take kernel for a view type, and the job failed with a traceback."""
    night, alone = tmp_path / "night", tmp_path / "alone"
    write_parquet(night / "a.parquet", id=[1, 2], text=["one", "two"])
    write_parquet(night / "b.parquet", id=[3, 4], text=pa.array([None, None], pa.string_view()))
    write_parquet(alone / "b.parquet", id=[3, 4], text=pa.array([None, None], pa.binary_view()))
    results = run_clis(
        ["--input", f"{night}/*.parquet", "--output", str(tmp_path / "out")],
        ["--input", f"{alone}/*.parquet", "--output", str(tmp_path / "out-alone")],
    )
    for result, output, embedded in zip(results, ("out", "out-alone"), ([1, 2], []), strict=True):
        assert result.returncode == 0, result.stderr
        manifest = read_manifest(tmp_path / output)
        assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (
            len(embedded) + 2, len(embedded), 2
        )  # fmt: skip
        assert manifest["rejected_by_reason"] == {"null_text": 2}
        assert sorted(_outputs(tmp_path / output, "embeddings").column("id").to_pylist()) == embedded
        rejected = _outputs(tmp_path / output, "rejected").select(["id", "row_number", "reason"]).to_pylist()
        assert sorted(rejected, key=lambda r: r["id"]) == [
            {"id": 3, "row_number": 0, "reason": "null_text"}, {"id": 4, "row_number": 1, "reason": "null_text"}
        ]  # fmt: skip


def test_view_typed_columns_after_a_dictionary_typed_first_shard_are_read_as_its_dictionaries(tmp_path):
    """Arrow casts no view type to a dictionary, its large type it does: a string_view or binary_view
    shard after a dictionary-typed first one was refused, though read the other way round."""
    night = tmp_path / "night"
    write_parquet(
        night / "a.parquet",
        id=[1, 2],
        text=["one", "two"],
        title=pa.array(["x", "y"]).dictionary_encode(),
        blob=pa.array([b"\x00x", b"y"]).dictionary_encode(),
    )
    write_parquet(
        night / "b.parquet",
        id=[3, 4],
        text=["three", "four"],
        title=pa.array(["z", None], pa.string_view()),
        blob=pa.array([b"z", b"\x00w"], pa.binary_view()),
    )
    output = tmp_path / "out"
    result = run_cli("--input", f"{night}/*.parquet", "--output", str(output), "--carry_columns", "title,blob")
    assert result.returncode == 0, result.stderr
    embedded = _outputs(output, "embeddings")
    assert [embedded.schema.field(name).type for name in ("title", "blob")] == [
        pa.dictionary(pa.int32(), pa.string()), pa.dictionary(pa.int32(), pa.binary())
    ]  # fmt: skip
    assert sorted(embedded.select(["id", "title", "blob"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": 1, "title": "x", "blob": b"\x00x"},
        {"id": 2, "title": "y", "blob": b"y"},
        {"id": 3, "title": "z", "blob": b"z"},
        {"id": 4, "title": None, "blob": b"\x00w"},
    ]


def test_null_typed_columns_take_a_later_shards_type_and_yesterdays_string_ids_join_todays_large_ones(tmp_path):
    day1 = tmp_path / "day1"
    tags = pa.list_(pa.string_view())  # views nested in a list: read as list<large_string>
    write_parquet(day1 / "a.parquet", id=["a", "b"], text=["text a", "text b"], title=pa.nulls(2),
                  tags=pa.array([["x"], None], tags))  # fmt: skip
    write_parquet(day1 / "b.parquet", id=["c"], text=["text c"], title=["C"], tags=pa.array([["y", "z"]], tags))
    first = tmp_path / "out1"
    result = run_cli("--input", f"{day1}/*.parquet", "--output", str(first), "--carry_columns", "title,tags")
    assert result.returncode == 0, result.stderr
    embedded = _outputs(first, "embeddings")
    assert [embedded.schema.field(name).type for name in ("id", "title", "tags")] == [
        pa.string(),
        pa.string(),
        pa.list_(pa.large_string()),
    ]
    assert sorted(embedded.select(["id", "title", "tags"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": "a", "title": None, "tags": ["x"]},
        {"id": "b", "title": None, "tags": None},
        {"id": "c", "title": "C", "tags": ["y", "z"]},
    ]
    day2 = tmp_path / "day2"  # the same rows, written by pandas 3: ids are large_string today
    day2.mkdir()
    pd.DataFrame({"id": ["a", "b", "c"], "text": ["text a", "text b", "text c"]}).to_parquet(
        day2 / "kb.parquet", index=False
    )
    second = tmp_path / "out2"
    result = run_cli("--input", f"{day2}/*.parquet", "--output", str(second), "--previous", str(first))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(second)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_reused"]) == (3, 0, 3)
    assert _outputs(second, "embeddings-reused").schema.field("id").type == pa.large_string()


def test_a_shard_whose_lists_were_all_empty_takes_the_item_types_of_the_others_and_a_night_of_them_reuses_rows(
    tmp_path,
):
    """pyarrow and pandas type a column of empty lists list<null> (a struct field always None: null):
    a shard whose tags were all empty is the same input as the others, not refused as another type,
    whichever shard comes first; a night where every shard's were empty reuses rows and keeps the
    previous run's types (list<null> would break a loader appending to last night's table), and
    writes list<null> without a previous run."""
    day1 = tmp_path / "day1"
    meta = [pa.struct([("n", pa.null()), ("s", pa.string())]), pa.struct([("n", pa.int64()), ("s", pa.string())])]
    write_parquet(day1 / "a.parquet", id=["a", "b"], text=["text a", "text b"],
                  tags=pa.array([[], None], pa.list_(pa.null())),
                  meta=pa.array([{"n": None, "s": "x"}] * 2, meta[0]))  # fmt: skip
    write_parquet(day1 / "b.parquet", id=["c"], text=["text c"], tags=pa.array([[1, 2]], pa.list_(pa.int32())),
                  meta=pa.array([{"n": 7, "s": "y"}], meta[1]))  # fmt: skip
    write_parquet(day1 / "c.parquet", id=["d"], text=["text d"], tags=pa.array([[None]], pa.list_(pa.null())),
                  meta=pa.array([None], meta[0]))  # fmt: skip
    first = tmp_path / "out1"
    result = run_cli("--input", f"{day1}/*.parquet", "--output", str(first), "--carry_columns", "tags,meta")
    assert result.returncode == 0, result.stderr
    embedded = _outputs(first, "embeddings")
    assert [embedded.schema.field(name).type for name in ("tags", "meta")] == [pa.list_(pa.int32()), meta[1]]
    assert sorted(embedded.select(["id", "tags", "meta"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": "a", "tags": [], "meta": {"n": None, "s": "x"}},
        {"id": "b", "tags": None, "meta": {"n": None, "s": "x"}},
        {"id": "c", "tags": [1, 2], "meta": {"n": 7, "s": "y"}},
        {"id": "d", "tags": [None], "meta": None},
    ]
    day2 = write_parquet(tmp_path / "day2" / "kb.parquet", id=["a", "c"], text=["text a", "text c, edited"],
                         tags=pa.array([[], []], pa.list_(pa.null())),
                         meta=pa.array([{"n": None, "s": "z"}] * 2, meta[0]))  # fmt: skip
    second, alone = tmp_path / "out2", tmp_path / "alone"
    carried = ("--carry_columns", "tags,meta")
    results = run_clis(["--input", str(day2), "--output", str(second), "--previous", str(first), *carried],
                       ["--input", str(day2), "--output", str(alone), *carried])  # fmt: skip
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    manifest = read_manifest(second)
    assert [manifest[k] for k in ("rows_in", "rows_embedded", "rows_reused", "rows_deleted")] == [2, 1, 1, 2]
    written = _outputs(second, "embeddings")  # those embedded tonight and those reused
    assert [written.schema.field(name).type for name in ("tags", "meta")] == [pa.list_(pa.int32()), meta[1]]
    assert sorted(written.select(["id", "tags", "meta"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": "a", "tags": [], "meta": {"n": None, "s": "z"}},
        {"id": "c", "tags": [], "meta": {"n": None, "s": "z"}},
    ]
    written = _outputs(alone, "embeddings")
    assert [written.schema.field(name).type for name in ("tags", "meta")] == [pa.list_(pa.null()), meta[0]]
    assert written.column("tags").to_pylist() == [[], []]


def test_pandas_categoricals_of_more_categories_in_a_later_shard_are_read_with_wider_indices(tmp_path):
    """pandas sizes a categorical's dictionary indices to its categories (int8 up to 127, int16 past):
    the first shard's int8 could not hold a later shard's 300 categories, and the night failed."""
    folder = tmp_path / "in"
    teams = [f"team-{n}" for n in range(300)]
    few = pd.DataFrame(
        {"id": pd.Categorical(["a", "b"]), "text": ["text a", "text b"], "team": pd.Categorical(["red", "blue"])}
    )
    many = pd.DataFrame({"id": pd.Categorical([f"m{n}" for n in range(300)]), "text": [f"text {t}" for t in teams],
                         "team": pd.Categorical(teams)})  # fmt: skip
    folder.mkdir()
    few.to_parquet(folder / "a.parquet", index=False)
    many.to_parquet(folder / "b.parquet", index=False)
    indices = [pq.read_schema(folder / name).field("team").type.index_type for name in ("a.parquet", "b.parquet")]
    assert indices == [pa.int8(), pa.int16()]
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "team")
    assert result.returncode == 0, result.stderr
    assert (read_manifest(output)["rows_in"], read_manifest(output)["rows_embedded"]) == (302, 302)
    table = _outputs(output, "embeddings")
    assert table.schema.field("team").type == pa.dictionary(pa.int32(), pa.string())
    assert sorted(zip(table["id"].to_pylist(), table["team"].to_pylist(), strict=True)) == sorted(
        [("a", "red"), ("b", "blue"), *((f"m{n}", t) for n, t in enumerate(teams))]
    )


def test_pandas_categoricals_of_shards_whose_categories_together_pass_int8_are_read_into_one_batch(tmp_path):
    """Two shards of 120 categories each (int8 indices, both): a batch of rows from both holds 240, and the
    night failed in the embedding step ("These dictionaries cannot be combined"), naming no file or column."""
    folder = tmp_path / "in"
    folder.mkdir()
    rows = {}
    for shard in "ab":
        ids = [f"{shard}{n}" for n in range(120)]
        frame = pd.DataFrame({"id": pd.Categorical(ids), "text": [f"text {i}" for i in ids],
                              "team": pd.Categorical([f"team {i}" for i in ids])})  # fmt: skip
        frame.to_parquet(folder / f"{shard}.parquet", index=False)
        assert pq.read_schema(folder / f"{shard}.parquet").field("team").type.index_type == pa.int8()
        rows.update({i: f"team {i}" for i in ids})
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "team")
    assert result.returncode == 0, result.stderr
    assert (read_manifest(output)["rows_in"], read_manifest(output)["rows_embedded"]) == (240, 240)
    table = _outputs(output, "embeddings")
    assert table.schema.field("id").type == table.schema.field("team").type == pa.dictionary(pa.int32(), pa.string())
    assert dict(zip(table["id"].to_pylist(), table["team"].to_pylist(), strict=True)) == rows


def test_timestamps_in_utc_by_any_of_its_names_are_one_family(tmp_path):
    """pandas writes UTC "UTC", pyarrow before 13 wrote Python's timezone.utc "+00:00": one zone,
    read as the first shard's; another zone stays another family."""
    folder = tmp_path / "in"
    write_parquet(folder / "a.parquet", id=["a"], text=["text a"], at=pa.array([1_000_000], pa.timestamp("us", "UTC")))
    write_parquet(folder / "b.parquet", id=["b"], text=["text b"], at=pa.array([2_000], pa.timestamp("ms", "+00:00")))
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "at")
    assert result.returncode == 0, result.stderr
    table = _outputs(output, "embeddings").sort_by("id")
    assert table["at"].type == pa.timestamp("us", "UTC") and table["at"].cast(pa.int64()).to_pylist() == [
        1_000_000,
        2_000_000,
    ]
    assert type_family(pa.timestamp("us", "Europe/Berlin")) != type_family(pa.timestamp("us", "UTC"))


def test_integer_widths_and_timestamp_units_are_one_family_and_todays_string_ids_refuse_yesterdays_ints(tmp_path):
    day1 = tmp_path / "day1"
    spark = write_parquet(day1 / "a.parquet", id=pa.array([1, 2], pa.int32()), text=["text a", "text b"],
                          at=pa.array([1_000_000, None], pa.timestamp("us")))  # fmt: skip
    pandas = write_parquet(day1 / "b.parquet", id=pa.array([3], pa.int64()), text=["text c"],
                           at=pa.array([2_000_000_000], pa.timestamp("ns")))  # fmt: skip
    write_parquet(day1 / "c.parquet", id=pa.array([4], pa.uint8()), text=["text d"], at=pa.nulls(1))
    first = tmp_path / "out1"
    result = run_cli("--input", f"{day1}/*.parquet", "--output", str(first), "--carry_columns", "at")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(first)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (4, 4, 0)
    case = "ids int32/int64/uint8; timestamps us/ns"
    outcome = "success: ids int64 (every shard's); times first's"
    assert record("input", case, outcome, [spark, pandas, day1 / "c.parquet"], first) == 0
    embedded = _outputs(first, "embeddings")
    assert [embedded.schema.field(name).type for name in ("id", "at")] == [pa.int64(), pa.timestamp("us")]
    assert sorted(embedded.select(["id", "at"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": 1, "at": datetime(1970, 1, 1, 0, 0, 1)},
        {"id": 2, "at": None},
        {"id": 3, "at": datetime(1970, 1, 1, 0, 0, 2)},
        {"id": 4, "at": None},
    ]
    day2 = write_parquet(tmp_path / "day2" / "kb.parquet", id=["1", "2"], text=["text a", "text b"])
    second = tmp_path / "out2"
    result = run_cli("--input", str(day2), "--output", str(second), "--previous", str(first))
    assert result.returncode == 1, result.stderr
    previous_file = first / manifest["files"]["embeddings"][0]
    assert (
        f"error: --previous {first}: {previous_file}: column 'id' is int64, but this run writes string; "
        "leave --previous out to embed every row afresh"
    ) in result.stderr.splitlines()
    assert not second.exists()  # refused by the plan: no worker started, no folder made
    # The same after a night that reused every row, whose first embeddings file holds none.
    reused = tmp_path / "out-reused"
    again = ["--input", f"{day1}/*.parquet", "--output", str(reused), "--carry_columns", "at", "--previous", str(first)]
    assert run_cli(*again).returncode == 0
    manifest = read_manifest(reused)
    assert manifest["rows_reused"] == 4 and manifest["file_checks"][manifest["files"]["embeddings"][0]]["rows"] == 0
    result = run_cli("--input", str(day2), "--output", str(second), "--previous", str(reused))
    assert result.returncode == 1, result.stderr
    assert "column 'id' is int64, but this run writes string" in result.stderr and not second.exists()


def test_ids_wider_in_a_later_shard_are_read_as_the_integer_type_holding_every_shards(tmp_path):
    """Spark wrote the first shard's ids int32, another writer a later one's uint64 (no integer type
    holds both: int64 holds its values below 2^63): the run reads them all as int64, planned from the
    footers, where it used to fail at the first wide id."""
    folder = tmp_path / "in"
    write_parquet(folder / "a.parquet", id=pa.array([1], pa.int32()), text=["text a"],
                  at=pa.array([1_000_000], pa.timestamp("us")))  # fmt: skip
    write_parquet(folder / "b.parquet", id=pa.array([3, 4, 3_000_000_000], pa.uint64()), text=["b", "c", "d"],
                  at=pa.array([2_000_000_000] * 3, pa.timestamp("ns")))  # fmt: skip
    write_parquet(folder / "c.parquet", id=pa.array([5], pa.int16()), text=["e"],
                  at=pa.array([3_000_000], pa.timestamp("us")))  # fmt: skip
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "at")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(sorted(output.glob("embeddings-*.parquet")))
    assert table.schema.field("id").type == pa.int64() and table.schema.field("at").type == pa.timestamp("us")
    assert sorted(table["id"].to_pylist()) == [1, 3, 4, 5, 3_000_000_000]
    outcome = "success: ids int64; every row embedded"
    lost = record("input", "uint64 id past the first shard's int32", outcome, sorted(folder.iterdir()), output)
    assert lost == 0


@pytest.mark.parametrize("statistics", [True, False])
def test_a_value_no_integer_type_of_the_run_holds_fails_naming_file_and_rows(tmp_path, statistics):
    """A uint64 id past int64 beside signed ids: refused by the footer's statistics before the model
    loads, naming the file and the row group's rows; a footer without statistics leaves it to the
    worker, which names the row."""
    folder = tmp_path / "in"
    write_parquet(folder / "a.parquet", id=pa.array([1], pa.int32()), text=["text a"])
    write_parquet(folder / "b.parquet", id=pa.array([2], pa.int64()), text=["b"])
    wide = folder / "c.parquet"
    table = pa.table({"id": pa.array([3, 4, 5, 2**63], pa.uint64()), "text": ["c", "d", "e", "f"]})
    pq.write_table(table, wide, row_group_size=2, write_statistics=statistics)
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output))
    assert result.returncode == 1, result.stderr
    if statistics:
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: {wide}: column 'id' holds {2**63} in rows 2-3, past int64, which this run reads it as: no "
            "integer type holds both this file's uint64 and the signed integers of the run's other files (input "
            "shards, the --previous run's); write it as one integer type in every shard and night"
        )
        assert "device:" not in result.stderr  # before the model loads
        case, outcome = "uint64 id past int64 beside signed ids", "refused before any worker starts, naming rows"
    else:
        assert (
            f"error: {wide}: column 'id' at row 3 cannot be read as int64, the type this run gives it" in result.stderr
        )
        assert "integers as wide as the plan found every shard's" in result.stderr
        case, outcome = "uint64 id past int64, no footer statistics", "job fails naming file and row; nothing published"
    assert "Traceback" not in result.stderr  # found by the worker in this process: Beam's log of it is left out
    assert record("input", case, outcome) is None
    assert (sorted(output.iterdir()) if output.exists() else []) == []


def test_yesterdays_uint64_ids_past_int64_beside_tonights_signed_ones_are_refused_before_the_model_loads(tmp_path):
    day1 = write_parquet(tmp_path / "day1" / "kb.parquet", id=pa.array([3, 2**63 + 5], pa.uint64()),
                         text=["text a", "text b"])  # fmt: skip
    first = tmp_path / "out1"
    assert run_cli("--input", str(day1), "--output", str(first)).returncode == 0
    day2 = write_parquet(tmp_path / "day2" / "kb.parquet", id=pa.array([3, 7], pa.int64()), text=["text a", "c"])
    output = tmp_path / "out2"
    result = run_cli("--input", str(day2), "--output", str(output), "--previous", str(first))
    assert result.returncode == 1, result.stderr
    written = read_manifest(first)["files"]["embeddings"][0]  # the rows embedded; then those reused (none)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --previous {first}: {first / written}: column 'id' holds {2**63 + 5} in rows 0-1, past int64, "
        "which this run reads it as: no integer type holds both this file's uint64 and the signed integers of the "
        "run's other files (input shards, the --previous run's); write it as one integer type in every shard and "
        "night; or leave --previous out to embed every row afresh"
    )
    assert "device:" not in result.stderr and not output.exists()


def test_the_narrowest_integer_type_holding_both_nights_ids():
    pairs = [(pa.int32(), pa.int64()), (pa.int64(), pa.int32()), (pa.int32(), pa.uint32()),
             (pa.uint8(), pa.int8()), (pa.uint16(), pa.uint64()), (pa.int16(), pa.uint8()),
             (pa.int64(), pa.uint64()), (pa.string(), pa.int32())]  # fmt: skip
    assert [integer_holding_both(ours, theirs) for ours, theirs in pairs] == [
        pa.int64(), pa.int64(), pa.int64(), pa.int16(), pa.uint64(), pa.int16(), None, None
    ]  # fmt: skip


def test_integers_and_decimals_widen_at_any_depth_in_the_first_shards_container():
    """Names, list sizes and list or large_list stay the first shard's; only the integer and decimal
    parts widen; a part of another family (a later shard's to fail naming its file) stays as it is."""
    item = pa.field("element", pa.int16())
    pairs = [
        (pa.large_list(item), pa.list_(pa.uint16())),
        (pa.list_(pa.int32(), 2), pa.list_(pa.int64(), 2)),
        (pa.map_(pa.int8(), pa.decimal128(3, 1)), pa.map_(pa.int32(), pa.decimal128(5, 2))),
        (pa.struct([("n", pa.uint64()), ("s", pa.string())]), pa.struct([("n", pa.int8()), ("s", pa.large_string())])),
        (pa.list_(pa.int32()), pa.list_(pa.string())),
        (pa.list_(pa.int32()), pa.null()),
        (pa.list_(pa.dictionary(pa.int8(), pa.string())), pa.list_(pa.dictionary(pa.uint8(), pa.string()))),
    ]
    assert [type_holding_both(ours, theirs) for ours, theirs in pairs] == [
        pa.large_list(pa.field("element", pa.int32())),
        pa.list_(pa.int64(), 2),
        pa.map_(pa.int32(), pa.decimal128(5, 2)),
        pa.struct([("n", pa.int64()), ("s", pa.string())]),
        pa.list_(pa.int32()),
        pa.list_(pa.int32()),
        pa.list_(pa.dictionary(pa.int32(), pa.string())),
    ]


def test_ids_yesterday_held_past_tonights_integer_width_widen_tonights_ids(tmp_path):
    """pandas wrote yesterday's ids int64, Spark writes tonight's int32: the run takes the type
    holding both, so yesterday's id past int32's range is deleted and the output keeps int64."""
    day1 = write_parquet(tmp_path / "day1" / "kb.parquet", id=pa.array([1, 2, 3_000_000_000], pa.int64()),
                         text=["text a", "text b", "text c"])  # fmt: skip
    first = tmp_path / "out1"
    assert run_cli("--input", str(day1), "--output", str(first)).returncode == 0
    day2 = write_parquet(tmp_path / "day2" / "kb.parquet", id=pa.array([2, 1], pa.int32()),
                         text=["text b, edited", "text a"])  # fmt: skip
    counts, embedded, deletes = _night_after(first, day2, tmp_path / "out2")
    assert counts == [2, 1, 1, 1, 0, 1]
    assert embedded.schema.field("id").type == pa.int64() and sorted(embedded.column("id").to_pylist()) == [1, 2]
    assert deletes.schema.field("id").type == pa.int64() and deletes.column("id").to_pylist() == [3_000_000_000]


def _night_after(first, shard, output) -> tuple[list[int], pa.Table, pa.Table]:
    """`shard` embedded with `--previous first`: the run's counts (in, embedded, reused, deleted,
    rejected, and its change set's upserts), its embeddings and its change set's deletes."""
    result = run_cli("--input", str(shard), "--output", str(output), "--previous", str(first))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    counts = [manifest[key] for key in ("rows_in", "rows_embedded", "rows_reused", "rows_deleted", "rows_rejected")]
    assert manifest["changes"]["deletes"] == counts[3]
    counts.append(manifest["changes"]["upserts"])
    deletes = pq.read_table(sorted((output / "changes").glob("deletes-*.parquet")))
    return counts, _outputs(output, "embeddings"), deletes


def test_uint64_ids_beside_signed_ones_are_read_as_int64_whichever_comes_first_or_was_yesterdays(tmp_path):
    """A uint64 first shard beside a later int8 one, then a night of uint64 ids after that night's
    int64 output: int64 both times, which holds every id, as when the signed shard comes first."""
    day1 = tmp_path / "day1"
    write_parquet(day1 / "a.parquet", id=pa.array([1, 2], pa.uint64()), text=["text a", "text b"])
    write_parquet(day1 / "b.parquet", id=pa.array([-5, 3], pa.int8()), text=["text minus", "text c"])
    first = tmp_path / "out1"
    result = run_cli("--input", f"{day1}/*.parquet", "--output", str(first))
    assert result.returncode == 0, result.stderr
    embedded = _outputs(first, "embeddings")
    assert embedded.schema.field("id").type == pa.int64() and sorted(embedded.column("id").to_pylist()) == [-5, 1, 2, 3]
    day2 = write_parquet(tmp_path / "day2" / "kb.parquet", id=pa.array([1, 2, 7], pa.uint64()),
                         text=["text a", "text b", "text new"])  # fmt: skip
    counts, embedded, deletes = _night_after(first, day2, tmp_path / "out2")
    assert counts == [3, 1, 2, 2, 0, 1]
    assert embedded.schema.field("id").type == pa.int64() and sorted(embedded.column("id").to_pylist()) == [1, 2, 7]
    assert deletes.schema.field("id").type == pa.int64() and sorted(deletes.column("id").to_pylist()) == [-5, 3]


def test_shards_without_rows_decide_no_types_even_when_a_whole_night_is_empty(tmp_path):
    """pandas types the columns of an empty DataFrame double: such a shard beside string ids is
    no conflict, and an empty night after a night of int ids deletes every row."""
    day1 = tmp_path / "day1"
    write_parquet(day1 / "a.parquet", id=pa.array([1, 2], pa.int32()), text=["text a", "text b"], title=["A", "B"])
    empty = pd.DataFrame({"id": [], "text": [], "title": []})
    empty.to_parquet(day1 / "b.parquet", index=False)
    assert pq.read_schema(day1 / "b.parquet").types == [pa.float64()] * 3
    first = tmp_path / "out1"
    result = run_cli("--input", f"{day1}/*.parquet", "--output", str(first), "--carry_columns", "title")
    assert result.returncode == 0, result.stderr
    assert (read_manifest(first)["rows_in"], read_manifest(first)["rows_embedded"]) == (2, 2)
    day2 = tmp_path / "day2"
    day2.mkdir()
    empty.to_parquet(day2 / "kb.parquet", index=False)
    second = tmp_path / "out2"
    result = run_cli("--input", f"{day2}/*.parquet", "--output", str(second), "--carry_columns", "title",
                     "--previous", str(first))  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(second)
    assert (manifest["rows_in"], manifest["rows_deleted"]) == (0, 2)
    assert manifest["changes"] == {**manifest["changes"], "upserts": 0, "deletes": 2}
    deletes = pq.read_table(sorted((second / "changes").glob("deletes-*.parquet")))
    assert deletes.schema.field("id").type == pa.int32() and sorted(deletes.column("id").to_pylist()) == [1, 2]
    write_parquet(tmp_path / "day3" / "kb.parquet", id=pa.array([1], pa.int32()), text=["text a"], title=["A"])
    third = tmp_path / "out3"
    result = run_cli("--input", str(tmp_path / "day3" / "kb.parquet"), "--output", str(third),
                     "--carry_columns", "title", "--previous", str(second))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (read_manifest(third)["rows_embedded"], read_manifest(third)["changes"]["upserts"]) == (1, 1)


def test_a_night_without_rows_whose_columns_are_typed_null_is_refused_naming_the_column(tmp_path):
    """No shard holds a row and no previous run gives the types: pandas 3 writes an empty object
    column as null, which no output column can take. The refusal names the column and the way out,
    not an id type of a shard that holds nothing; typed empty shards publish an empty night."""
    night = tmp_path / "night"
    night.mkdir()
    pd.DataFrame({"id": pd.Series([], dtype="string"), "text": pd.Series([], dtype="string"),
                  "title": pd.Series([], dtype=object)}).to_parquet(night / "kb.parquet", index=False)  # fmt: skip
    assert pq.read_schema(night / "kb.parquet").field("title").type == pa.null()
    output = tmp_path / "out"
    result = run_cli("--input", f"{night}/*.parquet", "--output", str(output), "--carry_columns", "title")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no input shard holds a row (1 matched), and column 'title' is typed null in {night / 'kb.parquet'} "
        "(as pandas writes an empty column): the outputs' types cannot be known; write the shards with typed "
        "columns, or pass --previous (the last run's output) to take that run's types"
    )
    assert not output.exists()
    result = run_cli("--input", f"{night}/*.parquet", "--output", str(output))  # no untyped column asked for
    assert result.returncode == 0, result.stderr
    assert read_manifest(output)["rows_in"] == 0
    assert _outputs(output, "embeddings").schema.field("id").type == pa.large_string()


@pytest.mark.parametrize("first", ["untitled", "titled"])
def test_a_column_holding_only_nulls_takes_the_type_of_the_shards_holding_values(tmp_path, first):
    """pandas types a column it read empty from CSV double, all NaN, which Parquet holds as nulls: a
    shard of such untitled pages beside titled ones is one input, read as nulls of the titles' type,
    whichever shard comes first; without the footer's null counts it is refused as before."""
    night = tmp_path / "night"
    night.mkdir()
    order = ["untitled", "titled"] if first == "untitled" else ["titled", "untitled"]
    names = {kind: f"{place}.parquet" for place, kind in enumerate(order)}
    untitled = pd.DataFrame({"id": ["u1", "u2"], "text": ["text u1", "text u2"], "title": [np.nan, np.nan]})
    untitled.to_parquet(night / names["untitled"], index=False)
    pd.DataFrame({"id": ["t1"], "text": ["text t1"], "title": ["T1"]}).to_parquet(night / names["titled"], index=False)
    assert pq.read_schema(night / names["untitled"]).field("title").type == pa.float64()
    output = tmp_path / "out"
    result = run_cli("--input", f"{night}/*.parquet", "--output", str(output), "--carry_columns", "title")
    assert result.returncode == 0, result.stderr
    embedded = _outputs(output, "embeddings")
    assert embedded.schema.field("title").type == pa.large_string()
    assert sorted(zip(embedded.column("id").to_pylist(), embedded.column("title").to_pylist(), strict=True)) == [
        ("t1", "T1"), ("u1", None), ("u2", None)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pandas(untitled, preserve_index=False), night / names["untitled"],
                   write_statistics=False)  # fmt: skip
    result = run_cli("--input", f"{night}/*.parquet", "--output", str(tmp_path / "out2"), "--carry_columns", "title")
    assert result.returncode == 1
    later, kinds = (names["titled"], ("large_string", "double")) if first == "untitled" else (
        names["untitled"], ("double", "large_string"))  # fmt: skip
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {night / later}: column 'title' is {kinds[0]}, but other shards have {kinds[1]}"
    )


def test_a_column_holding_only_nulls_beside_row_groups_of_no_rows_takes_the_other_shards_type(tmp_path):
    """A row group of no rows has no statistics: counted as holding values, it kept an all-null double
    column's type, and the night was refused as double beside string."""
    night = tmp_path / "night"
    write_parquet(night / "a.parquet", id=[1, 2], text=["one", "two"], title=["T1", "T2"])
    untitled = pa.table({"id": [3, 4], "text": ["three", "four"], "title": pa.array([None, None], pa.float64())})
    with pq.ParquetWriter(night / "b.parquet", untitled.schema) as writer:
        for rows in (0, 2, 0):
            writer.write_table(untitled.slice(0, rows))
    footer = pq.read_metadata(night / "b.parquet")
    assert [footer.row_group(g).num_rows for g in range(footer.num_row_groups)] == [0, 2, 0]
    output = tmp_path / "out"
    result = run_cli("--input", f"{night}/*.parquet", "--output", str(output), "--carry_columns", "title")
    assert result.returncode == 0, result.stderr
    embedded = _outputs(output, "embeddings")
    assert embedded.schema.field("title").type == pa.string()
    assert sorted(zip(embedded.column("id").to_pylist(), embedded.column("title").to_pylist(), strict=True)) == [
        (1, "T1"), (2, "T2"), (3, None), (4, None)
    ]  # fmt: skip


def test_a_column_holding_only_nulls_in_every_shard_keeps_its_type(tmp_path):
    """A column pandas typed double and left all NaN in every shard is read, and written, as it is."""
    night = tmp_path / "night"
    night.mkdir()
    pd.DataFrame({"id": ["a", "b"], "text": ["text a", "text b"], "score": [np.nan, np.nan]}).to_parquet(
        night / "kb.parquet", index=False
    )
    output = tmp_path / "out"
    result = run_cli("--input", f"{night}/*.parquet", "--output", str(output), "--carry_columns", "score")
    assert result.returncode == 0, result.stderr
    embedded = _outputs(output, "embeddings")
    assert embedded.schema.field("score").type == pa.float64()
    assert embedded.column("score").null_count == 2


def test_only_top_level_columns_of_plain_values_are_told_null_by_their_footers(tmp_path):
    """A column named with a dot is not the field of a struct of that name; lists and structs, whose
    leaves' nulls are not theirs, keep their types; a dictionary of nulls is null."""
    table = pa.table(
        {
            "s": pa.array([{"a": None}, {"a": None}], pa.struct([("a", pa.string())])),
            "s.a": ["v1", "v2"],
            "score": pa.array([None, None], pa.float64()),
            "tags": pa.array([[None], None], pa.list_(pa.string())),
            "kind": pa.array([None, None], pa.string()).dictionary_encode(),
        }
    )
    pq.write_table(table, tmp_path / "kb.parquet", row_group_size=1)
    typed = typed_by_values(pq.ParquetFile(tmp_path / "kb.parquet"))
    assert [typed.field(name).type for name in table.column_names] == [
        table.schema.field("s").type, pa.string(), pa.null(), table.schema.field("tags").type, pa.null()
    ]  # fmt: skip
