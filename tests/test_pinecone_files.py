"""`python -m pipeline.load pinecone`: a run (or its change set) as Pinecone import files."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.load import LoadError, Run, export_pinecone, read_run
from pipeline.pinecone_files import IMPORT_SCHEMA, metadata_json, pinecone_ids
from tests.conftest import ROOT, read_manifest
from tests.test_load_pgvector import DAY_ONE, day_one, dot_night, embed_night, parquet_rows  # noqa: F401 (fixtures)


def export(run_dir, output, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline.load", "pinecone", "--output", str(output), *options, str(run_dir)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_snapshot_becomes_id_values_and_json_metadata(day_one, tmp_path):  # noqa: F811
    result = export(day_one, tmp_path / "ns")
    assert result.returncode == 0, result.stderr
    assert "30 vectors of run" in result.stdout
    assert result.stdout.strip().endswith("to import into an index of metric cosine")
    files = sorted((tmp_path / "ns").glob("part-*.parquet"))
    holding_rows = [n for n in read_manifest(day_one)["files"]["embeddings"] if pq.read_metadata(day_one / n).num_rows]
    assert len(files) == len(holding_rows) == 1  # the reused rows' file of a first night holds none
    table = pq.read_table(files)
    assert table.schema == IMPORT_SCHEMA
    expected = parquet_rows(day_one)
    assert sorted(table["id"].to_pylist()) == sorted(expected)
    for row in table.to_pylist():
        title, digest, vector = expected[row["id"]]
        assert np.array_equal(np.array(row["values"], np.float32), vector)
        assert json.loads(row["metadata"]) == {"id": row["id"], "title": title, "content_hash": digest}


def test_metadata_is_valid_json_for_odd_values_and_leaves_nulls_out():
    table = pa.table(
        {
            "text": ['say "hi"\\n', "tab\tnew\nline \x01 ü 🚀", None],
            "score": [1.5, float("nan"), -2.0],
            "ok": [True, False, None],
            "at": pa.array([datetime.datetime(2026, 12, 2, 7, 30), None, datetime.datetime(1999, 1, 1)]),
            "tags": [["a", "b"], [], None],
            "weights": [[0.5, float("nan")], None, [float("inf")]],
            "n": pa.array([1, None, 3], pa.int64()),
        }
    )
    strict = {"parse_constant": lambda name: pytest.fail(f"{name} is not JSON")}
    rows = [json.loads(text, **strict) for text in metadata_json(table, table.column_names).to_pylist()]
    assert rows == [
        {
            "text": 'say "hi"\\n',
            "score": 1.5,
            "ok": True,
            "at": "2026-12-02 07:30:00.000000",
            "tags": ["a", "b"],
            "weights": [0.5, None],
            "n": 1,
        },
        {"text": "tab\tnew\nline \x01 ü 🚀", "ok": False, "tags": []},
        {"score": -2.0, "at": "1999-01-01 00:00:00.000000", "weights": [None], "n": 3},
    ]


def test_bytes_are_hex_and_maps_with_text_keys_objects_at_any_depth():
    """Bytes as lowercase hex (PostgreSQL's `encode(b, 'hex')`, as the loader's bytea text reads) and
    a map with text keys as a JSON object, inside lists and structs too, not Python's reprs or a
    list of pairs; a slice of the table converts as the whole does."""
    table = pa.table(
        {
            "blob": pa.array([b"\x00\xff", b"hi", None, b""], pa.binary()),
            "digest": pa.array([b"\x01\x02", b"\xab\xcd", b"\x00\x00", None], pa.binary(2)),
            "labels": pa.array(
                [[("k", "v"), ("q", 'say "x"')], [], None, [("z", None)]], pa.map_(pa.string(), pa.string())
            ),
            "files": pa.array([[("a", b"\xfe")], None, [("b", b"")], []], pa.map_(pa.string(), pa.binary())),
            "codes": pa.array([[(1, "one")], [(2, None)], None, []], pa.map_(pa.int32(), pa.string())),
            "parts": pa.array([[b"\x00\x01", None], [], None, [b"\x7f"]], pa.list_(pa.binary())),
            "doc": pa.array(
                [{"raw": b"\x10", "n": 1}, {"raw": None, "n": None}, None, {"raw": b"", "n": 4}],
                pa.struct([("raw", pa.binary()), ("n", pa.int64())]),
            ),
            "took": pa.array([1_500_000, None, 0, -1], pa.duration("us")),
            "waited": pa.array([0, 1, None, 1_500], pa.duration("ns")),  # a decimal's text turns to "1E-9"
        }
    )
    expected = [
        {
            "blob": "00ff",
            "digest": "0102",
            "labels": {"k": "v", "q": 'say "x"'},
            "files": {"a": "fe"},
            "codes": [[1, "one"]],
            "parts": ["0001", None],
            "doc": {"raw": "10", "n": 1},
            "took": "1.500000",
            "waited": "0.000000000",
        },
        {"blob": "6869", "digest": "abcd", "labels": {}, "codes": [[2, None]], "parts": [],
         "doc": {"raw": None, "n": None}, "waited": "0.000000001"},
        {"digest": "0000", "files": {"b": ""}, "took": "0.000000"},
        {"blob": "", "labels": {"z": None}, "files": {}, "codes": [], "parts": ["7f"], "doc": {"raw": "", "n": 4},
         "took": "-0.000001", "waited": "0.000001500"},
    ]  # fmt: skip
    assert [json.loads(text) for text in metadata_json(table, table.column_names).to_pylist()] == expected
    assert [json.loads(text) for text in metadata_json(table.slice(1, 2), table.column_names).to_pylist()] == (
        expected[1:3]
    )


def test_ids_join_the_chunk_only_for_passages():
    """Without passages a `chunk` column is carried metadata: two rows must not become `a#1` and `a#2`."""
    table = pa.table({"id": ["a", "b"], "chunk": pa.array([1, 2], pa.int32())})
    assert pinecone_ids(table, "id", passages=True).to_pylist() == ["a#1", "b#2"]
    assert pinecone_ids(table, "id", passages=False).to_pylist() == ["a", "b"]


def test_uuid_and_bytes_ids_are_written_as_their_text_forms():
    """A UUID id's text in its dashed form, bytes as hex (not UTF-8 necessarily: casting them failed the export
    with "Invalid UTF8 payload"), in the id and in the metadata alike."""
    uuids = pa.array([uuid.UUID(int=255).bytes, uuid.UUID("7428beef-a535-432b-9d69-d7a2726732e3").bytes], pa.binary(16))
    for ids, texts in [
        (uuids.cast(pa.uuid()), ["00000000-0000-0000-0000-0000000000ff", "7428beef-a535-432b-9d69-d7a2726732e3"]),
        (pa.array([b"\xff\x00", b"ok"]), ["ff00", "6f6b"]),
    ]:
        table = pa.table({"id": ids, "chunk": pa.array([0, 3], pa.int32())})
        assert pinecone_ids(table, "id", passages=False).to_pylist() == texts
        assert pinecone_ids(table, "id", passages=True).to_pylist() == [f"{texts[0]}#0", f"{texts[1]}#3"]
        assert [json.loads(m)["id"] for m in metadata_json(table, ["id"]).to_pylist()] == texts


def test_a_json_columns_values_are_metadata_as_json_and_one_that_does_not_parse_is_refused_naming_it(tmp_path):
    """Parquet's JSON type (DuckDB's JSON columns), read as extension<arrow.json>, went in as JSON strings
    holding the text. They go in as the JSON they hold; a value that is not JSON (pyarrow does not check)
    is refused naming its file, column and id, and no part file is left for Pinecone to import."""
    rows = {"id": ["a", "b", "c"], "text": ["one", "two", "three"]}
    good = embed_night(tmp_path, "good", {**rows, "j": pa.array(['{"k": [1, 2]}', '"s"', None], pa.json_())},
                       carried=("--carry_columns", "j"))  # fmt: skip
    assert export(good, tmp_path / "ns").returncode == 0
    metadata = pq.read_table(sorted((tmp_path / "ns").glob("part-*.parquet"))).column("metadata").to_pylist()
    parsed = sorted((json.loads(m)["id"], json.loads(m).get("j")) for m in metadata)
    assert parsed == [("a", {"k": [1, 2]}), ("b", "s"), ("c", None)]
    bad = embed_night(tmp_path, "bad", {**rows, "j": pa.array(["{}", "NaN", "[1]"], pa.json_())},
                      carried=("--carry_columns", "j"))  # fmt: skip
    result = export(bad, tmp_path / "ns-bad")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bad / 'embeddings-00000-of-00001.parquet'}: column 'j' of id 'b': 'NaN' is not JSON (NaN is not JSON)"
    )
    assert list((tmp_path / "ns-bad").glob("*")) == []


def test_a_night_whose_rows_were_all_reused_exports_no_empty_part_file(day_one, tmp_path):  # noqa: F811
    """The night's embeddings file holds no rows (every vector was reused): it gets no part file, and
    an earlier export's part of that number, left in the folder, is removed."""
    unchanged = embed_night(tmp_path, "same", DAY_ONE, "--previous", str(day_one))
    manifest = read_manifest(unchanged)
    assert (manifest["rows_embedded"], manifest["rows_reused"]) == (0, 30)
    files = manifest["files"]["embeddings"]
    rows = [pq.read_metadata(unchanged / name).num_rows for name in files]
    assert 0 in rows and sum(rows) == 30
    assert export(day_one, tmp_path / "ns").returncode == 0  # an earlier night's parts in the folder
    result = export(unchanged, tmp_path / "ns")
    assert result.returncode == 0, result.stderr
    parts = sorted((tmp_path / "ns").glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-{n:05d}.parquet" for n, count in enumerate(rows) if count]
    assert all(pq.read_metadata(p).num_rows for p in parts)
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 30


def test_a_folder_of_an_earlier_export_is_reused_and_any_other_refused(day_one, tmp_path):  # noqa: F811
    """Pinecone imports every file of the folder: an earlier export's extra part files would add stale vectors."""
    folder = tmp_path / "ns"
    assert export(day_one, folder).returncode == 0
    parts = sorted(path.name for path in folder.iterdir())
    (folder / "part-00009.parquet").write_bytes((folder / parts[0]).read_bytes())  # a bigger export's last file
    result = export(day_one, folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("metric cosine (replacing an earlier export; 1 of its files removed)")
    assert sorted(path.name for path in folder.iterdir()) == parts
    assert pq.read_table(sorted(folder.iterdir())).num_rows == 30
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("kept")
    for other in (day_one, tmp_path / "other"):  # the run's own folder; a folder holding another file
        result = export(day_one, other)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith(f"error: --output {other}: holds ")
        assert "Pinecone would import them too: pass an empty folder, or one only this command wrote" in result.stderr
    assert not list(day_one.glob("part-*")) and [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]
    with pytest.raises(LoadError, match=f"^--output {tmp_path}/other/notes.txt: cannot write there \\(.*File exists"):
        export_pinecone(read_run(str(day_one)), str(tmp_path / "other" / "notes.txt"))  # a file, not a folder


def test_a_dot_product_models_vectors_go_to_an_index_of_metric_dotproduct(dot_night, tmp_path):  # noqa: F811
    result = export(dot_night, tmp_path / "ns")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(
        "30 vectors of run " + read_manifest(dot_night)["run_id"] + " to import into an index of metric dotproduct"
    )


def test_a_model_compared_by_manhattan_distance_is_refused_naming_the_run(tmp_path):
    run = Run(str(tmp_path / "run"), {"model": {"similarity": "manhattan"}}, {"embeddings": []})
    with pytest.raises(LoadError) as refused:
        export_pinecone(run, str(tmp_path / "ns"))
    assert str(refused.value) == (
        f"{tmp_path / 'run'}: the model compares vectors by manhattan distance, which no Pinecone index metric "
        "(cosine, dotproduct, euclidean) computes"
    )
    assert not (tmp_path / "ns").exists()
