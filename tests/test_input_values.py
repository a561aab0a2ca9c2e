"""Odd input values read as they are written: what a writer other than pyarrow's defaults puts in a shard."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import embedding_rows, read_manifest, run_cli


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
    raw = pa.array([b"ok-1", b"\xff\xfe", b"ok-2", None], pa.binary())
    ids = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # as such a writer leaves them: unchecked
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
    assert sorted((r["row_number"], r["id"], r["reason"]) for r in rejected) == [
        (1, None, "invalid_utf8"),
        (3, None, "null_id"),
    ]
