"""Writing the output and its manifest: a retried finalize of a write, and a manifest whose files
do not hold the rows it counts."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from transforms.output_owner import OutputOwner
from transforms.write import MANIFEST, _ParquetSink, _write_manifest

STARTED = "2026-12-04T10:00:00+00:00"
SCHEMA = pa.schema([("id", pa.string())])


def _written(output: str, owner: OutputOwner, ids: list[list[str]]) -> tuple[_ParquetSink, str, list[str]]:
    """A sink that wrote one file per list of ids, not yet finalized."""
    sink = _ParquetSink(f"{output}/embeddings", SCHEMA, [], 1 << 20, owner)
    init = sink.initialize_write()
    results = []
    for number, values in enumerate(ids):
        writer = sink.open_writer(init, f"bundle-{number}")
        writer.write(pa.table({"id": values}, schema=SCHEMA))
        results.append(writer.close())
    return sink, init, results


def test_a_retried_finalize_still_names_every_file_of_the_write(tmp_path):
    """A runner retries the finalize step when its worker is lost after the renames: Beam's own
    finalize then renames nothing and yields no path, so the manifest listed none of the files and
    deleted them as unlisted, while its counts said they were there."""
    owner = OutputOwner(str(tmp_path), "run-a")
    owner.take(STARTED)
    sink, init, results = _written(str(tmp_path), owner, [["a", "b"], ["c"]])
    first = sorted(sink.finalize_write(init, results, None))
    assert first == [f"{tmp_path}/embeddings-0000{n}-of-00002.parquet" for n in range(2)]
    assert sorted(sink.finalize_write(init, results, None)) == first  # the retry


def _manifest_header(output: str, run_id: str) -> dict:
    return {"run_id": run_id, "output": output, "model": {}, "timings": {"started_at": STARTED}}


def test_no_manifest_when_the_embeddings_files_hold_fewer_rows_than_counted(tmp_path):
    owner = OutputOwner(str(tmp_path), "run-a")
    owner.take(STARTED)
    sink, init, results = _written(str(tmp_path), owner, [["a", "b"], ["c"]])
    paths = sorted(sink.finalize_write(init, results, None))
    counts = Counter(rows_in=3, rows_embedded=3, passages=3, passages_embedded=3)
    header = _manifest_header(str(tmp_path), "run-a")
    with pytest.raises(RuntimeError, match="embeddings files hold 2 rows, but the run counted 3"):
        _write_manifest(None, owner, header, counts, embeddings=paths[:1], rejected=[])
    assert not (tmp_path / MANIFEST).exists()
    _write_manifest(None, owner, header, counts, embeddings=paths, rejected=[])
    assert (tmp_path / MANIFEST).exists()
