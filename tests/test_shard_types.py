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
