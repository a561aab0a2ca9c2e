"""Shards whose columns hold the same values under different Arrow types (pandas 3 writes
large_string, pyarrow string; view types; dictionaries; null-typed empty or all-null columns) are
one input: their columns are read as the first shard's types, view types as large ones."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import read_manifest, record, run_cli, write_parquet


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


def test_a_shard_arrow_cannot_cast_to_the_first_shards_type_fails_naming_file_and_column(tmp_path):
    folder = tmp_path / "in"
    write_parquet(folder / "a.parquet", id=["a"], text=["text a"], n=pa.array(["x"]).dictionary_encode())
    plain = write_parquet(folder / "b.parquet", id=["b"], text=["text b"], n=pa.array(["y"], pa.string_view()))
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "n")
    assert result.returncode == 1, result.stderr
    assert (
        f"error: {plain}: column 'n' is string_view, which Arrow cannot read as "
        "dictionary<values=string, indices=int32, ordered=0>, its type in the other shards" in result.stderr
    )
    assert (sorted(output.iterdir()) if output.exists() else []) == []
