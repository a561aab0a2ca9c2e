"""Small files merged into files near the target size: real Parquet files, a real Beam runner."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from transforms.compact import CompactFiles, merge_files, merge_groups
from transforms.output_owner import OWNER_FILE, OutputOwner, OutputTakenOver
from transforms.write import _ParquetSink, parquet_writer

SCHEMA = pa.schema(
    [("id", pa.int64()), ("title", pa.string()), ("embedding", pa.list_(pa.int8(), 8))],
    metadata={"embedding_job": '{"dtype": "int8"}'},
)
DICTIONARY = ["title"]
STARTED = "2026-12-03T10:00:00+00:00"


def _owned(folder: Path, run_id: str = "run-a") -> OutputOwner:
    owner = OutputOwner(str(folder), run_id)
    owner.take(STARTED)
    return owner


def _small_files(folder: Path, rows_per_file: list[int]) -> list[str]:
    """Files as the sink writes them: one row group per batch, the job's writer settings."""
    paths, first = [], 0
    for index, rows in enumerate(rows_per_file):
        ids = np.arange(first, first + rows)
        vectors = (ids[:, None] * 7 + np.arange(8)) % 256 - 128
        table = pa.table(
            {
                "id": ids,
                "title": [f"t{i % 3}" for i in ids],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.int8()), 8),
            },
            schema=SCHEMA,
        )
        path = folder / f"embeddings-{index:05d}-of-{len(rows_per_file):05d}.parquet"
        with open(path, "wb") as f:
            writer = parquet_writer(f, SCHEMA, DICTIONARY)
            for batch in table.to_batches(max_chunksize=50):
                writer.write_batch(batch)
            writer.close()
        paths.append(str(path))
        first += rows
    return paths


def test_small_files_are_packed_largest_first_into_groups_within_the_target():
    sizes = [("a", 10), ("b", 60), ("c", 45), ("d", 30), ("e", 100), ("f", 40), ("g", 49)]
    # Under half of 100: g 49, c 45, f 40, d 30, a 10. g+c=94; f+d+a=80. b and e stay as they are.
    assert merge_groups(sizes, 100) == [["c", "g"], ["a", "d", "f"]]
    assert merge_groups([("a", 10), ("b", 60)], 100) == []  # one small file: nothing to merge with


def test_compaction_merges_small_files_keeps_large_ones_and_loses_no_row(tmp_path):
    paths = _small_files(tmp_path, [120, 3000, 80, 200, 0, 150])
    sizes = {Path(p).name: Path(p).stat().st_size for p in paths}
    big = "embeddings-00001-of-00006.parquet"
    target = sizes[big] + 1  # the 3,000-row file is the only one of at least half the target
    assert all(size < target / 2 for name, size in sizes.items() if name != big)
    expected = pq.read_table(paths).sort_by("id")
    owner = _owned(tmp_path)

    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        (
            pipeline
            | beam.Create(paths)
            | CompactFiles(
                str(tmp_path / "embeddings"),
                partial(parquet_writer, schema=SCHEMA, dictionary=DICTIONARY),
                target,
                owner,
            )
            | beam.combiners.ToList()
            | beam.Map(lambda names: (tmp_path / "written.txt").write_text("\n".join(sorted(names))))
        )

    written = (tmp_path / "written.txt").read_text().split("\n")
    on_disk = sorted(str(p) for p in tmp_path.glob("*.parquet"))
    assert written == on_disk == [str(tmp_path / big), str(tmp_path / "embeddings-merged-00000-of-00001.parquet")]
    merged = pq.ParquetFile(written[1])
    # The five small files (the empty one too), whole row groups in path order.
    assert merged.metadata.num_rows == 120 + 80 + 200 + 150
    assert merged.metadata.num_row_groups == 3 + 2 + 4 + 0 + 3
    assert merged.schema_arrow == SCHEMA and merged.schema_arrow.metadata == SCHEMA.metadata
    assert Path(written[1]).stat().st_size <= target
    assert pq.read_table(written).sort_by("id").equals(expected)
    # The writer's settings hold in the merged file: the vectors delta-encoded, the titles dictionary-encoded.
    columns = {c.path_in_schema: c for c in (merged.metadata.row_group(0).column(i) for i in range(3))}
    assert "DELTA_BINARY_PACKED" in columns["embedding.list.item"].encodings
    assert columns["title"].has_dictionary_page and not columns["id"].has_dictionary_page


def test_a_retried_merge_finishes_or_redoes_the_work_and_never_loses_rows(tmp_path):
    paths = _small_files(tmp_path, [30, 40])
    target = str(tmp_path / "embeddings-merged-00000-of-00001.parquet")
    open_writer = partial(parquet_writer, schema=SCHEMA, dictionary=DICTIONARY)
    owner = _owned(tmp_path)
    # Killed while writing: a partial file under the final name, every source still there.
    Path(target).write_bytes(b"PAR1 half a file")
    assert merge_files(target, paths, open_writer, owner) == target
    assert pq.read_table(target)["id"].to_pylist() == list(range(70))
    assert not any(Path(p).exists() for p in paths)
    # Run again after it finished (a source is gone): the merged file is left as it is.
    before = Path(target).read_bytes()
    assert merge_files(target, paths, open_writer, owner) == target
    assert Path(target).read_bytes() == before
    # A kept file is its own source and is left alone.
    assert merge_files(target, [target], open_writer, owner) == target and Path(target).read_bytes() == before
    # A source gone and no merged file: rows would be lost, so the merge fails, naming them.
    (tmp_path / "others").mkdir()
    others = _small_files(tmp_path / "others", [10, 10])
    Path(others[0]).unlink()
    with pytest.raises(RuntimeError, match="00000-of-00002.parquet'] are gone"):
        merge_files(str(tmp_path / "others" / "merged.parquet"), others, open_writer, _owned(tmp_path / "others"))


def test_a_write_finishing_leaves_the_other_writes_files_in_its_folder_alone(tmp_path):
    """Beam's sink deletes `<prefix>-*-of-<N>.parquet` before renaming its own files: for the
    embedded rows' write that pattern also matches the reused rows' and the merged files."""
    others = [
        "embeddings-reused-00000-of-00001.parquet",
        "embeddings-merged-00000-of-00001.parquet",
        "embeddings-reused-merged-00000-of-00001.parquet",
    ]
    for name in others:
        (tmp_path / name).write_bytes(b"another write's file")
    sink = _ParquetSink(str(tmp_path / "embeddings"), SCHEMA, DICTIONARY, 2**20, _owned(tmp_path))
    sink.pre_finalize(None, [str(tmp_path / "beam-temp" / "one")])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, OWNER_FILE])


def test_a_run_whose_directory_was_taken_over_opens_renames_and_merges_nothing(tmp_path):
    """A second run started on the same output (an orchestrator's retry) owns it from then on:
    the first one's writes stop before they could replace the second one's files."""
    paths = _small_files(tmp_path, [30, 40])
    first = _owned(tmp_path, "run-a")
    sink = _ParquetSink(str(tmp_path / "embeddings"), SCHEMA, DICTIONARY, 2**20, first)
    sink.open(str(tmp_path / "beam-temp-a" / "one.parquet"))[0].close()  # owned: the file is made
    assert first.holds()
    second = _owned(tmp_path, "run-b")
    before = sorted(p.name for p in tmp_path.iterdir())
    taken = r"was taken over by run run-b \(started 2026-12-03T10:00:00\+00:00 on .*, process \d+\) while run run-a"
    with pytest.raises(OutputTakenOver, match=taken):
        sink.open(str(tmp_path / "beam-temp-a" / "two.parquet"))
    with pytest.raises(OutputTakenOver, match=taken):
        sink.pre_finalize(None, [])
    open_writer = partial(parquet_writer, schema=SCHEMA, dictionary=DICTIONARY)
    with pytest.raises(OutputTakenOver, match=taken):
        merge_files(str(tmp_path / "embeddings-merged-00000-of-00001.parquet"), paths, open_writer, first)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made, renamed or deleted
    first.release()  # a taken-over run's release leaves the owner's file
    assert second.holds() and not first.holds()
    second.release()
    assert not (tmp_path / OWNER_FILE).exists()
    with pytest.raises(OutputTakenOver, match=r"taken over by another run \(_owner.json is gone"):
        first.check()
