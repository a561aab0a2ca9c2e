"""Input planning, reading and validation: cases found in review."""

from __future__ import annotations

import pyarrow as pa

from pipeline.plan import typed_schema
from tests.conftest import write_parquet


def test_a_null_column_takes_its_type_from_a_shard_holding_rows_not_an_empty_one(tmp_path):
    """A carried column all null in the first shard (type null) is typed by the next shard that holds
    rows: an empty pandas shard between them types it double, a writer's guess, and taking that
    failed the job at the third shard ("column 'title' is string, but other shards have double")."""
    files = [
        write_parquet(tmp_path / "a.parquet", id=["a"], text=["x"], title=pa.array([None], pa.null())),
        write_parquet(
            tmp_path / "b.parquet",
            id=pa.array([], pa.float64()),
            text=pa.array([], pa.float64()),
            title=pa.array([], pa.float64()),
        ),
        write_parquet(tmp_path / "c.parquet", id=["c"], text=["y"], title=["T"]),
    ]
    path, _, schema = typed_schema([str(f) for f in files], ["id", "text", "title"])
    assert path == str(files[0])
    assert schema.field("title").type == pa.string()
