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
