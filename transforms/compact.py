"""Merge the small Parquet files a write left into files near the target size.

Beam's sink writes at least one file per bundle, so a job fed many small shards (or a runner
that cuts small bundles) leaves many small files, which bulk importers load slowly. Once a
write has finished, its files under half the target are packed (largest first) into groups of
at most the target and each group is rewritten as one file, row group by row group, so memory
stays at one row group. Only small files are read again: at most half the target per file
left by the sink.

A group's file is written under its final name and its sources are deleted only after it is
complete, so a retried merge either writes it again (every source still there) or finds it
done (a source gone). A run killed meanwhile leaves no manifest, and the next attempt replaces
every output file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.output_owner import OutputOwner

MERGED = "merged"  # in a merged file's name: `<prefix>-merged-SSSSS-of-NNNNN.parquet`

# Opens a Parquet writer on a file handle: the same settings as the write that made the sources.
WriterFactory = Callable[[object], pq.ParquetWriter]


def merge_groups(sizes: list[tuple[str, int]], max_file_bytes: int) -> list[list[str]]:
    """Groups of two or more files under half of `max_file_bytes`, each group's bytes at most
    `max_file_bytes` (first fit, largest first); deterministic, so a retried plan is the same."""
    small = sorted(((size, path) for path, size in sizes if size < max_file_bytes / 2), reverse=True)
    totals: list[int] = []
    groups: list[list[str]] = []
    for size, path in small:
        fit = next((i for i, total in enumerate(totals) if total + size <= max_file_bytes), None)
        if fit is None:
            totals.append(size)
            groups.append([path])
        else:
            totals[fit] += size
            groups[fit].append(path)
    return [sorted(group) for group in groups if len(group) > 1]


def _size(path: str) -> tuple[str, int]:
    return path, FileSystems.get_filesystem(path).size(path)  # the path as it is: not a pattern


def _plan(sizes: list[tuple[str, int]], prefix: str, max_file_bytes: int) -> Iterator[tuple[str, list[str]]]:
    """(file to keep or write, its sources): a kept file is its own single source."""
    groups = merge_groups(sizes, max_file_bytes)
    merged = {path for group in groups for path in group}
    for path, _ in sorted(sizes):
        if path not in merged:
            yield path, [path]
    for index, group in enumerate(groups):
        yield f"{prefix}-{MERGED}-{index:05d}-of-{len(groups):05d}.parquet", group


def merge_files(target: str, sources: list[str], open_writer: WriterFactory, owner: OutputOwner) -> str:
    """Write `sources` into `target`, then delete them; returns `target`. Done already when a
    source is gone and `target` is there (sources are deleted only once `target` is complete).
    Nothing is written once another run has taken the directory over: `target` may be its file."""
    if sources == [target]:
        return target
    owner.check()
    missing = [path for path in sources if not FileSystems.exists(path)]
    if missing and FileSystems.exists(target):
        return target
    if missing:
        raise RuntimeError(f"{target}: cannot be merged, its sources {missing} are gone; no manifest will be written")
    rows = 0
    with FileSystems.create(target, "application/x-parquet", CompressionTypes.UNCOMPRESSED) as handle:
        writer = open_writer(handle)
        for path in sources:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                source = pq.ParquetFile(f, page_checksum_verification=True)
                for index in range(source.num_row_groups):
                    writer.write_table(source.read_row_group(index))
                rows += source.metadata.num_rows
        writer.close()
    with FileSystems.open(target, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        written = pq.ParquetFile(f).metadata.num_rows
    if written != rows:
        raise RuntimeError(f"{target}: holds {written} rows after merging {rows} from {sources}")
    FileSystems.delete(sources)
    return target


class CompactFiles(beam.PTransform):
    """Written file paths in, the paths of the files kept or merged out (see the module's doc).
    `prefix`: the merged files' path before `-merged-SSSSS-of-NNNNN.parquet`; `owner`: this run's
    ownership of the directory."""

    def __init__(self, prefix: str, open_writer: WriterFactory, max_file_bytes: int, owner: OutputOwner) -> None:
        super().__init__()
        self._prefix = prefix
        self._open_writer = open_writer
        self._max_file_bytes = max_file_bytes
        self._owner = owner

    def expand(self, paths: beam.PCollection) -> beam.PCollection:
        return (
            paths
            | "Sizes" >> beam.Map(_size)
            | "AllSizes" >> beam.combiners.ToList()
            | "Plan" >> beam.FlatMap(_plan, self._prefix, self._max_file_bytes)
            | "Spread" >> beam.Reshuffle()
            | "Merge"
            >> beam.Map(
                lambda planned, open_writer, owner: merge_files(*planned, open_writer, owner),
                self._open_writer,
                self._owner,
            )
        )
