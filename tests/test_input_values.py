"""Odd input values read as they are written: what a writer other than pyarrow's defaults puts in a shard."""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import embedding_rows, read_manifest, run_cli, run_clis, write_parquet
from transforms.validate import not_utf8


def _unchecked(values: list[bytes | None]) -> pa.Array:
    """A string column holding `values` as a writer that does not check UTF-8 leaves them."""
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())


def _offsets(rows: list[list]) -> pa.Array:
    """The offsets of a list column holding `rows`."""
    return pa.array(np.cumsum([0, *map(len, rows)], dtype=np.int32))


def test_spark_int96_timestamps_beyond_nanosecond_range_are_carried_unchanged(tmp_path):
    """Spark and Hive write INT96 timestamps; read as nanoseconds, year 3000 wrapped to 1830."""
    far = [datetime(3000, 1, 1), datetime(1, 1, 1), datetime(2020, 5, 6, 7, 8, 9, 123456)]
    path = tmp_path / "in" / "spark.parquet"
    path.parent.mkdir()
    table = pa.table(
        {"id": ["a", "b", "c"], "text": ["one", "two", "three"], "seen": pa.array(far, pa.timestamp("us"))}
    )
    pq.write_table(table, path, use_deprecated_int96_timestamps=True)
    output = tmp_path / "out"
    result = run_cli("--input", str(path), "--output", str(output), "--carry_columns", "seen")
    assert result.returncode == 0, result.stderr
    assert read_manifest(output)["rows_embedded"] == 3
    assert {key: row["seen"] for key, row in embedding_rows(output).items()} == dict(zip("abc", far, strict=True))


def test_string_ids_that_are_not_utf8_are_rejected_and_every_output_file_stays_readable(tmp_path):
    """A writer that did not check put bytes that are not UTF-8 in a string id column; written out,
    one such id made DuckDB refuse the whole embeddings file."""
    ids = _unchecked([b"ok-1", b"\xff\xfe", b"ok-2", None])
    path = tmp_path / "in" / "a.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"id": ids, "text": ["one", "two", "three", "four"]}), path)
    output = tmp_path / "out"
    result = run_cli("--input", str(path), "--output", str(output))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (4, 2, 2)
    assert manifest["rejected_by_reason"] == {"invalid_utf8": 1, "null_id": 1}
    for written in output.glob("*.parquet"):
        pq.read_table(written).validate(full=True)
    assert sorted(embedding_rows(output)) == ["ok-1", "ok-2"]
    rejected = pq.read_table(sorted(output.glob("rejected-*.parquet"))).to_pylist()
    assert sorted((r["row_number"], r["id"], r["reason"], r["column"]) for r in rejected) == [
        (1, None, "invalid_utf8", "id"),
        (3, None, "null_id", None),
    ]


def test_carried_strings_that_are_not_utf8_reject_their_row_naming_the_column(tmp_path):
    """A carried string column (plain or dictionary-encoded) holding bytes that are not UTF-8 was
    written out as it was, and DuckDB then refused the whole embeddings file. Each such row is now
    rejected as invalid_utf8 like a text or id, the reject naming the first such column (id, text, carried)."""
    kind = pa.DictionaryArray.from_arrays(pa.array([0, 0, 1, 0, 2], pa.int32()), _unchecked([b"x", b"\xe9t\xe9", b"y"]))
    path = tmp_path / "in" / "a.parquet"
    columns = {
        "id": ["a", "b", "c", "d", "e"],
        "text": _unchecked([b"one", b"two", b"three", b"\xfe", b"five"]),
        "title": _unchecked([b"ok", b"\xff", b"fine", b"\xff", None]),
        "kind": kind,
    }
    write_parquet(path, **columns)
    output = tmp_path / "out"
    result = run_cli("--input", str(path), "--output", str(output), "--carry_columns", "title,kind")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_reused"]) == (5, 2, 0)
    assert (manifest["rows_rejected"], manifest["rejected_by_reason"]) == (3, {"invalid_utf8": 3})
    assert {key: (row["title"], row["kind"]) for key, row in embedding_rows(output).items()} == {
        "a": ("ok", "x"),
        "e": (None, "y"),
    }
    rejected = pq.read_table(sorted(output.glob("rejected-*.parquet"))).to_pylist()
    assert sorted((r["source_file"], r["row_number"], r["id"], r["reason"], r["column"]) for r in rejected) == [
        (str(path), 1, "b", "invalid_utf8", "title"),
        (str(path), 2, "c", "invalid_utf8", "kind"),
        (str(path), 3, "d", "invalid_utf8", "text"),
    ]
    connection = duckdb.connect()
    for written in output.glob("*.parquet"):  # DuckDB refused a file holding one such value
        found = connection.execute(f"SELECT count(*) FROM read_parquet('{written}')").fetchone()[0]
        assert found == pq.read_metadata(written).num_rows
        # pandas and pyarrow refused one whose dictionary kept the entry no row written used any more
        assert len(pd.read_parquet(written)) == found
        pq.read_table(written).validate(full=True)


def test_dictionary_entries_that_are_not_utf8_leave_every_output_file_readable(tmp_path):
    """A dictionary-encoded id or carried column whose dictionary holds an entry that is not UTF-8, used by a
    row (rejected) or by none: Parquet's writer wrote the dictionary whole, and pandas could not read the
    embeddings or rejects file ("Wrapping ... failed")."""
    ids = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2], pa.int32()), _unchecked([b"a", b"\xff", b"c"]))
    tag = pa.DictionaryArray.from_arrays(pa.array([0, 0, 0], pa.int32()), _unchecked([b"ok", b"\xc3"]))  # unused
    path = write_parquet(tmp_path / "in" / "a.parquet", id=ids, text=["one", "two", "three"], tag=tag)
    output = tmp_path / "out"
    result = run_cli("--input", str(path), "--output", str(output), "--carry_columns", "tag")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_embedded"], manifest["rejected_by_reason"]) == (2, {"invalid_utf8": 1})
    assert {key: row["tag"] for key, row in embedding_rows(output).items()} == {"a": "ok", "c": "ok"}
    rejected = pq.read_table(sorted(output.glob("rejected-*.parquet"))).to_pylist()
    assert [(r["row_number"], r["id"], r["reason"], r["column"]) for r in rejected] == [(1, None, "invalid_utf8", "id")]
    for written in output.glob("*.parquet"):
        assert len(pd.read_parquet(written)) == pq.read_metadata(written).num_rows
        pq.read_table(written).validate(full=True)


def test_columns_one_shard_declares_required_may_hold_nulls_in_another(tmp_path):
    """Spark declares non-null columns required. The first shard's declaration held for every shard: a null
    id, carried value or list item in a later one failed the whole job as it wrote ("Column 'id' is declared
    non-nullable but contains nulls"), naming no file or row."""
    required = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("title", pa.string(), nullable=False),
            pa.field("tags", pa.list_(pa.field("element", pa.string(), nullable=False)), nullable=False),
        ]
    )
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "text": ["one", "two"], "title": ["t1", "t2"], "tags": [["x"], []]},
                            schema=required), folder / "a.parquet")  # fmt: skip
    later = {"id": [3, None, 5], "text": ["three", "four", "five"], "title": [None, "t4", "t5"],
             "tags": [["y", None], ["z"], None]}  # fmt: skip
    pq.write_table(pa.table(later), folder / "b.parquet")
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "title,tags")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rejected_by_reason"]) == (5, 4, {"null_id": 1})
    assert {key: (row["title"], row["tags"]) for key, row in embedding_rows(output).items()} == {
        1: ("t1", ["x"]),
        2: ("t2", []),
        3: (None, ["y", None]),
        5: ("t5", None),
    }
    rejected = pq.read_table(sorted(output.glob("rejected-*.parquet"))).to_pylist()
    assert [(r["source_file"], r["row_number"], r["id"], r["reason"]) for r in rejected] == [
        (str(folder / "b.parquet"), 1, None, "null_id")
    ]


def test_strings_nested_in_carried_columns_that_are_not_utf8_reject_their_row_naming_the_column(tmp_path):
    """Strings inside carried lists (plain, large, fixed-size, of a dictionary), structs and maps were
    written out as they were when not UTF-8, and DuckDB and pyarrow then refused the embeddings file.
    Each such row is rejected as invalid_utf8 naming its top-level column; a null list's items, which
    Parquet does not write, reject nothing."""
    ids = list("abcdefghi")
    broken = dict(zip("bcdefgh", ["tags", "notes", "pair", "meta", "key", "item", "labels"], strict=True))

    def values(column: str, good, bad) -> list:
        return [bad if broken.get(i) == column else good for i in ids]

    tags = [*values("tags", [b"ok"], [b"ok", b"\xff"])[:-1], [b"\xfe"]]  # i: a null list over this
    notes = values("notes", [b"n"], [b"\xe9"])
    keys, items = values("key", [b"k"], [b"\xff"]), values("item", [b"v"], [b"\xfe"])
    labels = values("labels", [0], [0, 1])

    def flat(rows: list[list]) -> list:
        return [value for row in rows for value in row]

    path = write_parquet(
        tmp_path / "in" / "a.parquet",
        id=ids,
        text=[f"text {i}" for i in ids],
        tags=pa.ListArray.from_arrays(_offsets(tags), _unchecked(flat(tags)), mask=pa.array([i == "i" for i in ids])),
        notes=pa.LargeListArray.from_arrays(_offsets(notes).cast(pa.int64()), _unchecked(flat(notes))),
        pair=pa.FixedSizeListArray.from_arrays(_unchecked(flat(values("pair", [b"p", b"q"], [b"p", b"\xc3"]))), 2),
        meta=pa.StructArray.from_arrays(
            [pa.array(range(9)), _unchecked(values("meta", b"web", b"w\xffb"))], ["n", "source"]
        ),
        attrs=pa.MapArray.from_arrays(_offsets(keys), _unchecked(flat(keys)), _unchecked(flat(items))),
        labels=pa.ListArray.from_arrays(
            _offsets(labels),
            pa.DictionaryArray.from_arrays(pa.array(flat(labels), pa.int32()), _unchecked([b"red", b"\xff"])),
        ),
    )
    output = tmp_path / "out"
    carried = ["tags", "notes", "pair", "meta", "attrs", "labels"]
    result = run_cli("--input", str(path), "--output", str(output), "--carry_columns", ",".join(carried))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_reused"]) == (9, 2, 0)
    assert (manifest["rows_rejected"], manifest["rejected_by_reason"]) == (7, {"invalid_utf8": 7})
    kept = {"notes": ["n"], "pair": ["p", "q"], "attrs": [("k", "v")], "labels": ["red"]}
    assert {key: {name: row[name] for name in carried} for key, row in embedding_rows(output).items()} == {
        i: {"tags": tags, **kept, "meta": {"n": n, "source": "web"}}
        for i, n, tags in (("a", 0, ["ok"]), ("i", 8, None))
    }
    rejected = pq.read_table(sorted(output.glob("rejected-*.parquet"))).to_pylist()
    assert sorted((r["row_number"], r["id"], r["reason"], r["column"]) for r in rejected) == [
        (1, "b", "invalid_utf8", "tags"),
        (2, "c", "invalid_utf8", "notes"),
        (3, "d", "invalid_utf8", "pair"),
        (4, "e", "invalid_utf8", "meta"),
        (5, "f", "invalid_utf8", "attrs"),
        (6, "g", "invalid_utf8", "attrs"),
        (7, "h", "invalid_utf8", "labels"),
    ]
    connection = duckdb.connect()
    for written in output.glob("*.parquet"):  # both refused the file holding one such value
        pq.read_table(written).validate(full=True)
        assert (
            len(connection.execute(f"SELECT * FROM read_parquet('{written}')").fetchall())
            == pq.read_metadata(written).num_rows
        )


def test_a_null_list_spanning_items_and_a_sliced_batch_are_checked_item_by_their_own_list():
    """A null list's offsets may still span items (Arrow allows it; list_parent_indices counts them,
    list_flatten does not), and a batch may be a slice of a larger array: each bad item is traced to
    its own row, and items under a null list reject nothing."""
    rows = [[b"ok"], [b"\xff"], [b"fine", b"ok"], [b"\xfe"]]  # row 1 is null: its bad item is not written
    column = pa.ListArray.from_arrays(
        _offsets(rows), _unchecked([v for row in rows for v in row]), mask=pa.array([False, True, False, False])
    )
    assert not_utf8(column).to_pylist() == [False, False, False, True]
    assert not_utf8(column.slice(1)).to_pylist() == [False, False, True]
    assert not_utf8(column.slice(0, 3)) is None  # the one bad item lies under the null list


def test_decimals_typed_by_each_files_values_are_read_in_a_type_holding_every_shards(tmp_path):
    """pyarrow types a file's decimals by the values in it: 1.5 is decimal128(2, 1), 12345.25
    decimal128(7, 2). The second shard used to fail the job: 'Rescaling Decimal value would cause data loss'."""
    folder = tmp_path / "in"
    folder.mkdir()
    pd.DataFrame({"id": ["a"], "text": ["one"], "price": [Decimal("1.5")]}).to_parquet(folder / "a.parquet")
    pd.DataFrame({"id": ["b"], "text": ["two"], "price": [Decimal("12345.25")]}).to_parquet(folder / "b.parquet")
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "price")
    assert result.returncode == 0, result.stderr
    assert read_manifest(output)["rows_embedded"] == 2
    table = pq.read_table(sorted(output.glob("embeddings-*.parquet")))
    assert table.schema.field("price").type == pa.decimal128(7, 2)
    assert {key: row["price"] for key, row in embedding_rows(output).items()} == {
        "a": Decimal("1.50"),
        "b": Decimal("12345.25"),
    }
    assert "decimal256" not in result.stderr


def test_decimals_that_only_decimal256_holds_together_are_warned_of_naming_column_and_shard(tmp_path):
    """Spark's decimal(38, 0) beside decimal(38, 18) is held by decimal256(56, 18) alone, which Polars refuses
    and DuckDB reads as DOUBLE: the run went on without a word."""
    folder = tmp_path / "in"
    write_parquet(folder / "a.parquet", id=[1], text=["one"], amt=pa.array([Decimal(10**19)], pa.decimal128(38, 0)))
    write_parquet(folder / "b.parquet", id=[2], text=["two"], amt=pa.array([Decimal("1.5")], pa.decimal128(38, 18)))
    arguments = ["--input", f"{folder}/*.parquet", "--output", str(tmp_path / "out"), "--carry_columns", "amt"]
    result = run_cli(*arguments, "--plan_only")
    assert result.returncode == 0, result.stderr
    assert (
        f"WARNING pipeline.plan: column 'amt' is decimal128(38, 0) in {folder}/a.parquet, and is written as "
        "decimal256(56, 18) to hold the decimals of every shard (and of --previous): Polars cannot read it and DuckDB "
        "reads it as DOUBLE (digits lost); write the shards with one decimal type to keep decimal128\n"
    ) in result.stderr
    # Inside a struct whose other part a shard typed null, and ids widened to hold --previous's, likewise.
    first = pa.array([{"x": None, "d": Decimal(10**19)}], pa.struct([("x", pa.null()), ("d", pa.decimal128(38, 0))]))
    night = tmp_path / "night"
    ids = [pa.array([Decimal(n)], pa.decimal128(38, 0)) for n in (1, 2)]
    write_parquet(night / "a.parquet", id=ids[0], text=["one"], rec=first)
    write_parquet(night / "b.parquet", id=ids[1], text=["two"], rec=[{"x": "s", "d": Decimal("1.5")}])
    result = run_cli("--input", f"{night}/*.parquet", "--output", str(tmp_path / "o"), "--carry_columns", "rec")
    assert result.returncode == 0, result.stderr
    assert "column 'rec' is struct<x: null, d: decimal128(38, 0)> in " in result.stderr
    widened = write_parquet(tmp_path / "ids.parquet", id=pa.array([Decimal("1.5")], pa.decimal128(38, 18)), text=["x"])
    result = run_cli("--input", str(widened), "--output", str(tmp_path / "o2"), "--previous", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert f"column 'id' is decimal128(38, 18) in {widened}, and is written as decimal256(" in result.stderr


def test_decimal_ids_yesterday_held_at_a_wider_type_join_tonights(tmp_path):
    """Yesterday's ids were decimal128(7, 2), tonight's (one file, one small id) decimal128(2, 1): the
    run used to fail reading yesterday's file ('Rescaling Decimal value would cause data loss')."""
    for night, ids in (("1", ["12345.25", "1.5"]), ("2", ["1.5"])):
        (tmp_path / night).mkdir()
        frame = pd.DataFrame({"id": [Decimal(i) for i in ids], "text": [f"text {i}" for i in ids]})
        frame.to_parquet(tmp_path / night / "a.parquet")
    first, second = tmp_path / "out1", tmp_path / "out2"
    assert run_cli("--input", str(tmp_path / "1" / "a.parquet"), "--output", str(first)).returncode == 0
    result = run_cli("--input", str(tmp_path / "2" / "a.parquet"), "--output", str(second), "--previous", str(first))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(second)
    assert (manifest["rows_in"], manifest["rows_reused"], manifest["rows_deleted"]) == (1, 1, 1)
    reused = pq.read_table(sorted(second.glob("embeddings-reused-*.parquet")))
    assert reused.schema.field("id").type == pa.decimal128(7, 2)
    assert reused["id"].to_pylist() == [Decimal("1.50")]


def test_nested_columns_whose_parts_are_of_one_family_are_one_input(tmp_path):
    """Spark writes array<int> as list<int32> and a struct's timestamps in microseconds, pandas
    list<int64> and nanoseconds: the job used to fail ("column 'tags' is list<element: int64>, but
    other shards have list<element: int32>") though the same columns at the top level are read."""
    folder = tmp_path / "in"
    folder.mkdir()
    seen = datetime(2024, 1, 2, 3, 4, 5)
    spark = {"tags": pa.array([[1, 2]], pa.list_(pa.int32())), "meta": pa.array([{"at": seen}])}
    pq.write_table(pa.table({"id": ["a"], "text": ["one"], **spark}), folder / "a.parquet")
    meta = pa.array([{"at": seen}], pa.struct([("at", pa.timestamp("ns"))]))
    pandas_like = {"tags": pa.array([[3, 2**31 - 1]], pa.list_(pa.int64())), "meta": meta}
    pq.write_table(pa.table({"id": ["b"], "text": ["two"], **pandas_like}), folder / "b.parquet")
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "tags,meta")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(sorted(output.glob("embeddings-*.parquet")))
    assert table.schema.field("tags").type == pa.list_(pa.field("element", pa.int64()))
    assert {key: (row["tags"], row["meta"]) for key, row in embedding_rows(output).items()} == {
        "a": ([1, 2], {"at": seen}),
        "b": ([3, 2**31 - 1], {"at": seen}),
    }


def test_a_carried_column_whose_name_holds_a_comma_is_named_in_a_json_list(tmp_path):
    """The comma-separated form splits such a name in two; a JSON list names every column exactly. Messages
    quote each name, so that the names a shard holds read as they are."""
    columns = {"title, short": ["x", "y"], "url": ["u1", "u2"]}
    path = write_parquet(tmp_path / "in" / "a.parquet", id=[1, 2], text=["one", "two"], **columns)
    output = tmp_path / "out"
    args = ("--input", str(path), "--output", str(output), "--carry_columns")
    result = run_cli(*args, "title, short,url")
    assert result.returncode == 1
    found = "columns found: 'id', 'text', 'title, short', 'url'"
    assert result.stderr.splitlines()[-1] == f"error: {path}: column 'title', 'short' not found; {found}"
    result = run_cli(*args, '["title,short", "url"]')
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"error: {path}: column 'title,short' not found; {found}"
    result = run_cli(*args, '["title, short", "url"')
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        """error: --carry_columns '["title, short", "url"' is neither comma-separated names nor a JSON list of """
        """non-empty strings (for a name holding a comma: --carry_columns '["title, short", "url"]')"""
    )
    result = run_cli(*args, '["title, short", "url"]')
    assert result.returncode == 0, result.stderr
    rows = embedding_rows(output)
    assert {key: (row["title, short"], row["url"]) for key, row in rows.items()} == {1: ("x", "u1"), 2: ("y", "u2")}
    # A night that forgets them is told the value that carries them again.
    result = run_cli("--input", str(path), "--output", str(tmp_path / "out2"), "--previous", str(output))
    assert result.returncode == 0, result.stderr
    assert (
        f"--previous {output} carried 'title, short', 'url', this run does not: its rows are written without them "
        "(restated in the change set) and a loader drops those columns; pass "
        """--carry_columns '["title, short", "url"]' to keep them"""
    ) in result.stderr


def test_nested_integers_are_read_as_wide_as_every_shards(tmp_path):
    """list<int32> and struct<n: int16> in the first shard, list<int64> and struct<n: int32> in the next:
    the job used to fail at the second shard's first item past the first's width ("column 'tags' at row
    0 cannot be read as list<element: int32>") where top-level integers were read widened."""
    folder = tmp_path / "in"
    narrow = {
        "tags": pa.array([[1, 2]], pa.list_(pa.int32())),
        "meta": pa.array([{"n": 7, "name": "x"}], pa.struct([("n", pa.int16()), ("name", pa.string())])),
    }
    write_parquet(folder / "a.parquet", id=["a"], text=["one"], **narrow)
    wide = {
        "tags": pa.array([[3, 2**40], None], pa.list_(pa.int64())),
        "meta": pa.array([{"n": 70_000, "name": "y"}, None], pa.struct([("n", pa.int32()), ("name", pa.string())])),
    }
    write_parquet(folder / "b.parquet", id=["b", "c"], text=["two", "three"], **wide)
    output = tmp_path / "out"
    result = run_cli("--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "tags,meta")
    assert result.returncode == 0, result.stderr
    assert read_manifest(output)["rows_embedded"] == 3
    schema = pq.read_schema(sorted(output.glob("embeddings-*.parquet"))[0])
    assert schema.field("tags").type == pa.list_(pa.field("element", pa.int64()))
    assert schema.field("meta").type == pa.struct([("n", pa.int32()), ("name", pa.string())])
    assert {key: (row["tags"], row["meta"]) for key, row in embedding_rows(output).items()} == {
        "a": ([1, 2], {"n": 7, "name": "x"}),
        "b": ([3, 2**40], {"n": 70_000, "name": "y"}),
        "c": (None, None),
    }


def test_uuid_ids_that_duckdb_writes_are_joined_night_to_night_and_written_as_uuids(tmp_path):
    """DuckDB writes UUID columns as Parquet's UUID type, which pyarrow reads as extension<arrow.uuid>:
    such ids were refused ("an extension type: write its storage"). Arrow sorts and compares their bytes."""
    connection = duckdb.connect()
    connection.execute(
        "CREATE TABLE kb AS SELECT uuid() AS id, 'article ' || i || ' about VPN tokens' AS text, uuid() AS author, "
        "i AS n FROM range(12) t(i)"
    )
    ids = [row[0] for row in connection.execute("SELECT id FROM kb ORDER BY n").fetchall()]

    def night(name: str, *previous: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for part in range(2):
            connection.execute(f"COPY (SELECT * FROM kb WHERE n % 2 = {part}) TO '{folder}/{part}.parquet'")
        output = tmp_path / f"{name}-out"
        result = run_cli(
            "--input", f"{folder}/*.parquet", "--output", str(output), "--carry_columns", "author,n", *previous
        )
        assert result.returncode == 0, result.stderr
        return output

    first = night("day1")
    assert pq.read_schema(tmp_path / "day1" / "0.parquet").field("id").type == pa.uuid()
    connection.execute("DELETE FROM kb WHERE n = 0")
    connection.execute("UPDATE kb SET text = 'edited ' || text WHERE n = 1")
    connection.execute("INSERT INTO kb SELECT id, 'a second copy', author, n + 100 FROM kb WHERE n = 2")  # same id
    second = night("day2", "--previous", str(first))
    manifest = read_manifest(second)
    assert [manifest[k] for k in ("rows_in", "rows_embedded", "rows_reused", "rows_rejected", "rows_deleted")] == [
        12,
        1,
        10,
        1,
        1,
    ]
    embedded = pq.read_table(sorted(second.glob("embeddings-0*.parquet")))
    assert (embedded.schema.field("id").type, embedded.schema.field("author").type) == (pa.uuid(), pa.uuid())
    assert embedded.column("id").to_pylist() == [ids[1]]
    reused = pq.read_table(sorted(second.glob("embeddings-reused-*.parquet")))
    assert sorted(reused.column("id").to_pylist()) == sorted(ids[2:])
    deleted = pq.read_table(sorted((second / "changes").glob("deletes-*.parquet")))
    assert (deleted.schema.field("id").type, deleted.column("id").to_pylist()) == (pa.uuid(), [ids[0]])
    rejected = pq.read_table(sorted(second.glob("rejected-*.parquet"))).to_pylist()
    assert [(r["id"], r["reason"], r["source_file"]) for r in rejected] == [
        (ids[2], "duplicate_id", str(tmp_path / "day2" / "0.parquet"))
    ]
    found = connection.execute(f"SELECT id, n FROM read_parquet('{second}/embeddings-*.parquet') ORDER BY n").fetchall()
    assert found == [(ids[n], n) for n in range(1, 12)]  # DuckDB reads them back as its UUIDs


def test_json_columns_are_checked_for_utf8_and_a_json_text_column_is_embedded_as_its_text(tmp_path):
    """Arrow's JSON type (DuckDB writes its JSON columns so) holds its text in strings: a carried one that
    was not UTF-8 went out as it was and the embeddings file could not be read back, and a text column of
    that type was rejected row by row as not text."""
    document = ['{"title": "one"}', '{"title": "\xe9t\xe9"}', '{"title": "three"}']
    carried = pa.ExtensionArray.from_storage(pa.json_(), _unchecked([b'{"a": 1}', b'{"a": "\xff"}', b"{}"]))
    path = tmp_path / "in" / "a.parquet"
    path.parent.mkdir()
    pq.write_table(
        pa.table({"id": ["a", "b", "c"], "text": pa.array(document).cast(pa.json_()), "meta": carried}), path
    )
    assert pq.read_schema(path).field("text").type == pq.read_schema(path).field("meta").type == pa.json_()
    output = tmp_path / "out"
    result = run_cli("--input", str(path), "--output", str(output), "--carry_columns", "meta")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rejected_by_reason"]) == (
        3,
        2,
        {"invalid_utf8": 1},
    )
    rows = embedding_rows(output)
    assert {key: row["meta"] for key, row in rows.items()} == {"a": '{"a": 1}', "c": "{}"}
    hashes = {key: row["content_hash"] for key, row in rows.items()}
    assert hashes == {
        key: hashlib.sha256(text.encode()).hexdigest() for key, text in zip("ac", document[::2], strict=True)
    }
    rejected = pq.read_table(sorted(output.glob("rejected-*.parquet"))).to_pylist()
    assert [(r["row_number"], r["id"], r["reason"], r["column"]) for r in rejected] == [
        (1, "b", "invalid_utf8", "meta")
    ]
    for written in output.glob("*.parquet"):
        pq.read_table(written).validate(full=True)
        assert len(pd.read_parquet(written)) == pq.read_metadata(written).num_rows


def int96_refusal(path: Path, column: str, row: int) -> str:
    """The job's last line for the INT96 value 2023-11-14 22:13:20.000000123."""
    return (
        f"error: {path}: column {column!r} at row {row} holds an INT96 timestamp with nanoseconds (2023-11-14 "
        "22:13:20.000000123), which the job reads in microseconds, as Spark's dates past 2262 need; write the "
        "column as INT64 timestamps (pyarrow's default) to keep them"
    )


def test_int96_timestamps_holding_nanoseconds_fail_naming_file_column_row_and_value(tmp_path):
    """Impala and Hive write INT96 timestamps in nanoseconds, which the job reads in microseconds (Spark's
    dates past 2262 need them): four ids a nanosecond apart were read as one, three rejected as duplicates."""
    path = tmp_path / "in" / "impala.parquet"
    path.parent.mkdir()
    ids = pa.array(
        [1_700_000_000_000_000_000, None, 1_700_000_000_000_000_000, 1_700_000_000_000_000_123], pa.timestamp("ns")
    )
    pq.write_table(
        pa.table({"id": ids, "text": ["one", "two", "three", "four"]}), path, use_deprecated_int96_timestamps=True
    )
    result = run_cli("--input", str(path), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == int96_refusal(path, "id", 3)
    assert "Traceback" not in result.stderr


def test_int96_timestamps_holding_nanoseconds_in_a_struct_list_or_map_fail_naming_column_and_row(tmp_path):
    """Only top-level INT96 columns were checked: a struct's, list's or map's were cut to microseconds without
    a word. Each is refused naming its column and the row holding the value; whole microseconds are carried."""
    whole, nanos, stamp = 1_700_000_000_000_000_000, 1_700_000_000_000_000_123, pa.timestamp("ns")
    nested = {
        "st": pa.array(
            [None, {"n": 1, "t": whole}, {"n": 2, "t": nanos}], pa.struct([("n", pa.int64()), ("t", stamp)])
        ),
        "lst": pa.array([[whole, whole], [], [whole, nanos]], pa.list_(stamp)),
        "mp": pa.array([[("a", whole)], None, [("b", whole), ("c", nanos)]], pa.map_(pa.string(), stamp)),
    }
    paths = [tmp_path / "in" / "impala.parquet", tmp_path / "whole" / "impala.parquet"]
    for path, rows in zip(paths, (3, 2), strict=True):
        path.parent.mkdir()
        table = pa.table({"id": [1, 2, 3], "text": ["one", "two", "three"], **nested}).slice(0, rows)
        pq.write_table(table, path, use_deprecated_int96_timestamps=True, store_schema=False)
    results = run_clis(
        *(["--input", str(paths[0]), "--output", str(tmp_path / name), "--carry_columns", name] for name in nested),
        ["--input", str(paths[1]), "--output", str(tmp_path / "out"), "--carry_columns", "st,lst,mp"],
    )
    for name, result in zip(nested, results[:3], strict=True):
        assert result.returncode == 1
        assert result.stderr.splitlines()[-1] == int96_refusal(paths[0], name, 2)
        assert "Traceback" not in result.stderr
    assert results[3].returncode == 0, results[3].stderr
    at = datetime(2023, 11, 14, 22, 13, 20)
    assert {key: [row["st"], row["lst"], row["mp"]] for key, row in embedding_rows(tmp_path / "out").items()} == {
        1: [None, [at, at], [("a", at)]],
        2: [{"n": 1, "t": at}, [], None],
    }


def test_a_fixed_size_list_column_holding_a_null_list_is_named_when_pyarrow_cannot_read_it(tmp_path):
    """pyarrow writes a fixed_size_list column holding a null list but cannot read it back: the job's
    message named the file's row group only, not which of the columns read failed, nor why."""
    path = write_parquet(tmp_path / "in" / "kb.parquet", id=["a", "b", "c"], text=["one", "two", "three"],
                         vec=pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32(), 2)))  # fmt: skip
    carried, left = run_clis(
        ["--input", str(path), "--output", str(tmp_path / "carried"), "--carry_columns", "vec"],
        ["--input", str(path), "--output", str(tmp_path / "left")],
    )
    assert carried.returncode == 1
    assert carried.stderr.splitlines()[-1] == (
        f"error: {path}: column 'vec' in row group 0 cannot be read (Expected all lists to be of size=2 but index 2 "
        f"had size=0): pyarrow {pa.__version__} cannot read back a fixed_size_list column holding a null list; "
        "write the column as a variable-size list, or with its nulls as lists of nulls"
    )
    assert not (tmp_path / "carried" / "manifest.json").exists()
    assert left.returncode == 0, left.stderr
    assert read_manifest(tmp_path / "left")["rows_embedded"] == 3


def test_a_row_group_whose_every_column_fails_names_no_column(tmp_path):
    """Pages of every column unreadable, the footer intact: the file is what fails, not a column of it."""
    path = write_parquet(tmp_path / "in" / "kb.parquet", id=["a", "b"], text=["one", "two"])
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[4 : len(data) - 8 - footer] = bytes(len(data) - 12 - footer)  # every page zeroed
    path.write_bytes(bytes(data))
    result = run_cli("--input", str(path), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"error: {path}: row group 0 cannot be read ("), last
