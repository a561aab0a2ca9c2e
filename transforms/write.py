"""Write record batches to Parquet, then the manifest once everything else is written.

Beam's file sink writes to temporary files and renames them only when the
whole write succeeded; the manifest waits for both writes, so a manifest
next to the files means the run finished and its counts add up. Every step
that puts a file in the output directory first checks that this run still
holds it (transforms.output_owner).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.iobase import Write

from transforms.compact import CompactFiles
from transforms.output_owner import OutputOwner, OutputTakenOver
from transforms.paths import is_url

MANIFEST = "manifest.json"
CHANGES_DIR = "changes"  # the change set's files, beside the snapshot
# Every file a run publishes, the manifest first; an earlier run's are cleared before a run and any
# its manifest does not list before that.
OUTPUT_PATTERNS = (MANIFEST, "embeddings-*.parquet", "rejected-*.parquet", f"{CHANGES_DIR}/*.parquet")
CHANGE_KINDS = ("upserts", "deletes")
PER_DOCUMENT = "passages_per_document:"  # Counter keys of the passages-per-document histogram
READ_BLOCK = 8 << 20
CHECK_THREADS = 8  # files read at once for their checks: object stores answer each read slowly


def column_encodings(schema: pa.Schema, dictionary: list[str]) -> dict[str, str]:
    """Delta encoding for the values of integer vectors (int8, uint8, packed bits): 11-18% smaller
    than plain after zstd on the default model's vectors, and read by every Parquet v2 reader."""
    return {
        f"{field.name}.list.item": "DELTA_BINARY_PACKED"
        for field in schema
        if pa.types.is_fixed_size_list(field.type)
        and pa.types.is_integer(field.type.value_type)
        and field.name not in dictionary
    }


class _CountedFile:
    """A file that counts the bytes written to it: Beam's sink starts the next file once a file
    holds `max_bytes_per_shard` (FileBasedSinkWriter.at_capacity reads `sink.byte_counter`)."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self.bytes_written = 0

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def write(self, data) -> int:
        self.bytes_written += len(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def parquet_writer(handle, schema: pa.Schema, dictionary: list[str]) -> pq.ParquetWriter:
    """zstd pages, dictionary encoding only for the `dictionary` columns, integer vectors delta-encoded.
    Every page carries a CRC of its bytes, which the next night verifies as it reads them: a file changed in
    place keeps its size, and a flipped byte in zstd's raw blocks of vectors reads back as another vector."""
    return pq.ParquetWriter(
        handle,
        schema,
        compression="zstd",
        write_page_checksum=True,
        use_dictionary=dictionary,
        column_encoding=column_encodings(schema, dictionary) or None,
        use_compliant_nested_type=False,
    )


class _ParquetSink(filebasedsink.FileBasedSink):
    """Arrow tables into zstd Parquet files of about `max_file_bytes` each (a file is closed once
    it holds that much, so it exceeds it by less than one batch), with dictionary encoding only on
    the columns whose values repeat: pyarrow otherwise tries a dictionary on every column, vectors
    and hashes included, before falling back to plain values. Opens no file and renames none
    into place once another run has taken the directory over."""

    def __init__(
        self, prefix: str, schema: pa.Schema, dictionary: list[str], max_file_bytes: int, owner: OutputOwner
    ) -> None:
        super().__init__(
            prefix,
            coder=None,
            file_name_suffix=".parquet",
            mime_type="application/x-parquet",
            compression_type=CompressionTypes.UNCOMPRESSED,  # Parquet compresses its pages itself
            max_bytes_per_shard=max_file_bytes,
        )
        self._schema = schema
        self._dictionary = dictionary
        self._owner = owner

    def initialize_write(self) -> str:
        self._owner.check()  # before making its temporary folder in a directory that is no longer this run's
        return super().initialize_write()

    def open(self, temp_path: str) -> tuple:
        self._owner.check()
        self.byte_counter = handle = _CountedFile(FileSystems.create(temp_path, self.mime_type, self.compression_type))
        return handle, parquet_writer(handle, self._schema, self._dictionary)

    def pre_finalize(self, init_result, writer_results) -> None:
        """Beam deletes here every file matching `<prefix>-*-of-<N>.parquet`, which also matches the
        files of the other writes in the same folder (`embeddings-reused-…`, `…-merged-…`) when
        their count is the same. The folder holds no earlier run's files (pipeline.plan.prepare_output
        cleared them before the run), so there is nothing to delete. What is checked here is that
        the directory is still this run's: renaming would replace a later run's files."""
        self._owner.check()

    def finalize_write(self, init_result, writer_results, pre_finalize_results) -> list[str]:
        """Every file of the write, by its final name. Beam's own yields only the files it renamed
        this time: a retried finalize (its worker lost after the renames) would yield none, and the
        manifest would list none of them and delete them as unlisted."""
        for _ in super().finalize_write(init_result, writer_results, pre_finalize_results):
            pass  # the renames
        return [self._get_final_name(shard, len(writer_results)) for shard in range(len(writer_results))]

    def write_record(self, opened: tuple, table: pa.Table) -> None:
        opened[1].write_table(table)

    def close(self, opened: tuple) -> None:
        handle, writer = opened
        writer.close()
        handle.close()


class WriteBatches(beam.PTransform):
    """Record batches in, `DIR/<name>-SSSSS-of-NNNNN.parquet` out, the small ones then merged into
    `DIR/<name>-merged-SSSSS-of-NNNNN.parquet` (transforms.compact); returns the paths.
    `dictionary`: the columns whose values repeat enough for dictionary encoding; `max_file_bytes`:
    the target size: a file is closed and the next begun once it holds that much; `owner`: this
    run's hold on `owner.output`, the directory written into."""

    def __init__(
        self, owner: OutputOwner, name: str, schema: pa.Schema, dictionary: list[str], max_file_bytes: int
    ) -> None:
        super().__init__()
        prefix = FileSystems.join(owner.output, name)
        self._sink = _ParquetSink(prefix, schema, dictionary, max_file_bytes, owner)
        open_writer = partial(parquet_writer, schema=schema, dictionary=dictionary)
        self._compact = CompactFiles(prefix, open_writer, max_file_bytes, owner)

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "ToTables" >> beam.Map(lambda batch: pa.Table.from_batches([batch]))
            | "WriteParquet" >> Write(self._sink)
            | "Compact" >> self._compact
        )


class SumCounts(beam.CombineFn):
    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, total: Counter, counts: Counter) -> Counter:
        total.update(counts)
        return total

    def merge_accumulators(self, totals: Iterable[Counter]) -> Counter:
        return sum(totals, Counter())

    def extract_output(self, total: Counter) -> Counter:
        return total


def _spread(histogram: dict[int, int]) -> dict:
    """Min, median and max of values given as {value: how many times}."""
    values = sorted(histogram)
    ranks = np.cumsum([histogram[v] for v in values])
    middle = [
        values[int(np.searchsorted(ranks, rank, side="right"))] for rank in ((ranks[-1] - 1) // 2, ranks[-1] // 2)
    ]
    return {"min": values[0], "median": sum(middle) / 2, "max": values[-1]}


def file_name(kind: str, path: str) -> str:
    """A written file's name as the manifest lists it: relative to the run's directory."""
    name = path.rsplit("/", 1)[-1]
    return f"{CHANGES_DIR}/{name}" if kind in CHANGE_KINDS else name


def _check(kind: str, path: str) -> tuple[str, dict]:
    digest, size = hashlib.sha256(), 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        rows = pq.ParquetFile(f).metadata.num_rows
    return file_name(kind, path), {"rows": rows, "bytes": size, "sha256": digest.hexdigest()}


def file_checks(files: dict[str, list[str]]) -> dict[str, dict]:
    """Rows (from the footer), bytes and sha256 of each written file, by name: what a loader verifies."""
    kinds_and_paths = [(kind, path) for kind, paths in files.items() for path in paths]
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        return dict(sorted(pool.map(lambda item: _check(*item), kinds_and_paths)))


def _change_set(counts: Counter, files: dict[str, list[str]], checks: dict[str, dict], header: dict) -> dict:
    """The change set's summary; refuses to exist when its files do not hold what the join decided."""
    written = {kind: sum(checks[file_name(kind, path)]["rows"] for path in files[kind]) for kind in CHANGE_KINDS}
    decided = {
        "upserts": counts["passages_embedded"] + counts["passages_restated"],
        "deletes": counts["passages_deleted"],
    }
    if written != decided:
        raise RuntimeError(f"change set files hold {written} rows, but the join decided {decided}; no manifest written")
    return {"previous_run_id": header["previous"]["run_id"], **written, "restated": counts["passages_restated"]}


def manifest(counts: Counter, files: dict[str, list[str]], header: dict) -> dict:
    """The run's summary; refuses to exist when rows or passages went missing."""
    rejected = {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("rejected:")}
    body = {
        **header,
        "rows_in": counts["rows_in"],
        "rows_out": counts["passages_embedded"] + counts["passages_reused"],  # rows written
        "rows_embedded": counts["rows_embedded"],  # went through the model (with passages: any of them)
        "rows_reused": counts["rows_reused"],  # vector carried over from --previous (with passages: all of them)
        "rows_rejected": sum(rejected.values()),
        "rejected_by_reason": rejected,
        "rows_deleted": counts["rows_deleted"],  # in --previous, with no valid row today
        "rows_truncated": counts["rows_truncated"],
        "tokens": counts["tokens"],
        "padded_tokens": counts["padded_tokens"],
        "files": {kind: sorted(file_name(kind, p) for p in paths) for kind, paths in files.items()},
    }
    if "calibration" in header["model"]:  # int8, uint8: values past the calibrated ranges are clipped
        body["clipped"] = {"vectors": counts["vectors_clipped"], "values": counts["values_clipped"]}
    if counts["zero_vectors"]:  # no direction, so no cosine: stored as the model gave them, and counted
        body["zero_vectors"] = counts["zero_vectors"]
    if "chunk_tokens" in header["model"]:
        per_document = {int(k.split(":", 1)[1]): v for k, v in counts.items() if k.startswith(PER_DOCUMENT)}
        body["passages"] = {
            "embedded": counts["passages_embedded"],
            "reused": counts["passages_reused"],
            "deleted": counts["passages_deleted"],  # in --previous, with no passage of that id and chunk today
            "per_document": _spread(per_document) if per_document else None,
            "overlap_tokens": counts["overlap_tokens"],
        }
    if body["rows_in"] != body["rows_embedded"] + body["rows_reused"] + body["rows_rejected"]:
        raise RuntimeError(
            f"rows do not add up: {body['rows_in']} in, {body['rows_embedded']} embedded, "
            f"{body['rows_reused']} reused, {body['rows_rejected']} rejected; no manifest written"
        )
    if counts["passages"] != body["rows_out"]:
        raise RuntimeError(
            f"passages do not add up: {counts['passages']} to write, {counts['passages_embedded']} embedded, "
            f"{counts['passages_reused']} reused; no manifest written"
        )
    body["file_checks"] = file_checks(files)
    for kind, decided in (("embeddings", body["rows_out"]), ("rejected", body["rows_rejected"])):
        written = sum(body["file_checks"][name]["rows"] for name in body["files"].get(kind, []))
        if written != decided:
            raise RuntimeError(f"{kind} files hold {written} rows, but the run counted {decided}; no manifest written")
    if "upserts" in files:
        body["changes"] = _change_set(counts, files, body["file_checks"], header)
    started = datetime.fromisoformat(header["timings"]["started_at"])
    finished = datetime.now(UTC)
    seconds = (finished - started).total_seconds()
    body["timings"] = {
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "seconds": round(seconds, 3),
        "rows_per_second": round(body["rows_in"] / max(seconds, 1e-9), 1),
    }
    return body


def remove_temp_files(output: str) -> None:
    """A failed run leaves Beam's temporary write folders behind (beside each kind of file), as does
    one whose directory was taken over, after it, and perhaps its manifest not yet renamed into
    place; they are not outputs. So is a local `changes/` folder left empty (by them, or by a replaced
    run's change set)."""
    temporary = set()
    for pattern in (FileSystems.join(output, "beam-temp-*"), FileSystems.join(output, CHANGES_DIR, "beam-temp-*")):
        if is_url(output):  # object stores: a folder is the prefix of its objects, which are deleted one by one
            temporary |= {m.path for m in FileSystems.match([pattern + "/**"])[0].metadata_list}
        else:  # local folders may be empty, which file matching does not list
            temporary |= set(glob.glob(pattern))
    # A manifest written by a run stopped or taken over before renaming it into place.
    manifests = FileSystems.match([FileSystems.join(output, MANIFEST + ".*.tmp")])[0].metadata_list
    if temporary or manifests:
        FileSystems.delete(sorted(temporary) + [m.path for m in manifests])
    if not is_url(output):  # the change set's folder, made as the run began (object stores hold no folders)
        with contextlib.suppress(OSError):  # holding anything, it is kept
            os.rmdir(os.path.join(output, CHANGES_DIR))


def output_files(output_dir: str) -> dict[str, str]:
    """The published files in `output_dir`, by their name in a manifest (`changes/…` for the change
    set's), the manifest first: deleted in this order they never leave a manifest without its files."""
    files = {}
    for pattern in OUTPUT_PATTERNS:
        folder = CHANGES_DIR + "/" if pattern.startswith(CHANGES_DIR) else ""
        for found in FileSystems.match([FileSystems.join(output_dir, pattern)])[0].metadata_list:
            files[folder + found.path.rsplit("/", 1)[-1]] = found.path
    return files


def remove_unlisted(output_dir: str, listed: dict[str, list[str]]) -> None:
    """Delete the output files that `listed` (a manifest's `files`) does not name: what a run that
    overlapped this one renamed into place in the moment before it saw it had lost the directory."""
    names = {name for names in listed.values() for name in names}
    unlisted = [path for name, path in output_files(output_dir).items() if name not in names]
    if unlisted:
        FileSystems.delete(unlisted)


def _published_by(path: str, run_id: str) -> bool:
    if not FileSystems.exists(path):
        return False
    with FileSystems.open(path) as f:
        return json.load(f).get("run_id") == run_id


def _write_manifest(_, owner: OutputOwner, header: dict, counts: Counter, **files: list[str]) -> str:
    """Publish, once: a retry of this step after the manifest was written (its worker lost
    before the runner recorded the step done) finds it and only lets go of the directory."""
    path = FileSystems.join(owner.output, MANIFEST)
    if _published_by(path, owner.run_id):
        owner.release()
        return path
    owner.check()
    body = manifest(counts, files, header)
    owner.check()  # again after reading every file for its checks, which takes a while
    remove_unlisted(owner.output, body["files"])
    remove_temp_files(owner.output)  # this run's own went when its writes finished: these are a taken-over run's
    temp = f"{path}.{owner.run_id}.tmp"  # its own name: a run that took over writes its own beside it
    with FileSystems.create(temp) as f:
        f.write(json.dumps(body, indent=2).encode())
    try:
        owner.check()
    except OutputTakenOver:
        FileSystems.delete([temp])
        raise
    FileSystems.rename([temp], [path])
    owner.release()
    return path


class WriteManifest(beam.PTransform):
    """Stats Counters in; writes DIR/manifest.json after every file write has finished, then lets
    go of DIR (`owner.output`). `files`: the written paths of each kind
    (embeddings, rejected, and with a change set upserts, deletes)."""

    def __init__(self, owner: OutputOwner, header: dict, files: dict[str, beam.PCollection]):
        super().__init__()
        self._owner = owner
        self._header = header
        self._files = files

    def expand(self, stats: beam.PCollection) -> beam.PCollection:
        counts = stats | "Total" >> beam.CombineGlobally(SumCounts())
        return (
            stats.pipeline
            | "Once" >> beam.Create([None])
            | "WriteManifest"
            >> beam.Map(
                _write_manifest,
                self._owner,
                self._header,
                beam.pvalue.AsSingleton(counts),
                **{kind: beam.pvalue.AsList(paths) for kind, paths in self._files.items()},
            )
        )
