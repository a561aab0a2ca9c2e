"""Join today's units (passages, or rows) with the previous run's output by id: reuse, re-embed, or drop.

Per id, the first document by (file, row number) is kept and every other row
with that id is rejected as `duplicate_id`. Each kept unit whose content hash
equals one of that id's units in the previous output, under the same model
fingerprint, takes that vector bit for bit and never reaches the model; with
passages, only the edited passages of a changed document are embedded again.
Previous ids with no valid row today are counted as deleted and left out.
Without --previous the join still runs, to settle duplicate ids across shards.

Only decisions are shuffled by id: per unit its id, file, row number, chunk,
batch key, place in the batch and content hash (and yesterday's vector when it
is reused). The units themselves, carried columns included, stay in their Arrow
batches and meet their decisions in a second join by batch key, so carried
values of any type arrive bit for bit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa

from schemas.inputs import InputError
from schemas.outputs import CHUNK_COLUMN, CONTENT_HASH_COLUMN, EMBEDDING_COLUMN
from transforms import METRICS_NAMESPACE, in_global_window
from transforms.passages import UnitBatch
from transforms.read import ShardBatch
from transforms.validate import REJECTED, STATS

CURRENT, PREVIOUS, REUSED = "current", "previous", "reused"
BATCH, DECISIONS = "batch", "decisions"


def _key_units(units: UnitBatch, id_column: str) -> Iterator[tuple]:
    """UnitBatch -> (id, (file, row number, chunk, batch key, index in batch, content hash)) per unit."""
    batch = units.batch
    ids = batch.column(id_column).to_pylist()
    hashes = batch.column(CONTENT_HASH_COLUMN).to_pylist()
    names = batch.schema.names
    chunks = batch.column(CHUNK_COLUMN).to_pylist() if CHUNK_COLUMN in names else [0] * batch.num_rows
    for index, (id_, row, chunk, digest) in enumerate(
        zip(ids, units.row_numbers.tolist(), chunks, hashes, strict=True)
    ):
        yield id_, (units.path, row, chunk, units.key, index, digest)


def _key_previous(shard: ShardBatch, id_column: str) -> Iterator[tuple]:
    """Previous output rows -> (id, (chunk, content hash, vector bytes or None when vectors are not reused))."""
    batch = shard.batch
    hashes = batch.column(CONTENT_HASH_COLUMN).to_pylist()
    names = batch.schema.names
    chunks = batch.column(CHUNK_COLUMN).to_pylist() if CHUNK_COLUMN in names else [0] * batch.num_rows
    if EMBEDDING_COLUMN in names:
        vectors = batch.column(EMBEDDING_COLUMN)
        payloads = vectors.flatten().to_numpy().reshape(len(vectors), vectors.type.list_size)
        vectors = [row.tobytes() for row in payloads]
    else:
        vectors = [None] * batch.num_rows
    yield from zip(batch.column(id_column).to_pylist(), zip(chunks, hashes, vectors, strict=True), strict=True)


class _Decide(beam.DoFn):
    """One id's units and previous rows in; (batch key, (index, vector or None)) per kept unit out,
    with duplicate rejects and counts."""

    def __init__(self, rejects: pa.Schema, reuse: bool, passages: bool, rows_per_batch: int) -> None:
        self._rejects = rejects
        self._reuse = reuse
        self._passages = passages
        self._rows_per_batch = rows_per_batch
        self._embedded = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_embedded")

    def start_bundle(self) -> None:
        self._duplicates: list[tuple] = []
        self._counts: Counter = Counter()

    def process(self, item: tuple) -> Iterator:
        id_, grouped = item
        previous = list(grouped[PREVIOUS])
        current = sorted(grouped[CURRENT])
        if not current:
            self._counts["rows_deleted"] += 1
            self._counts["passages_deleted"] += len(previous)
            return
        if self._reuse and not self._passages and len(previous) > 1:
            raise InputError(f"--previous output holds id {id_!r} {len(previous)} times; it cannot be reused")
        document = current[0][:2]
        kept = [unit for unit in current if unit[:2] == document]
        others = sorted({unit[:2] for unit in current} - {document})
        self._duplicates.extend((id_, path, row) for path, row in others)
        self._counts["rejected:duplicate_id"] += len(others)
        vectors = {digest: vector for _, digest, vector in previous} if self._reuse else {}
        reused = 0
        for _, _, _, key, index, digest in kept:
            vector = vectors.get(digest)
            reused += vector is not None
            yield key, (index, vector)
        self._counts["rows_reused" if reused == len(kept) else "rows_embedded"] += 1
        self._counts["passages_reused"] += reused
        self._counts["passages"] += len(kept)
        self._counts["passages_deleted"] += len({chunk for chunk, _, _ in previous} - {unit[2] for unit in kept})
        if len(self._duplicates) >= self._rows_per_batch:
            yield self._rejected()

    def finish_bundle(self) -> Iterator:
        if self._duplicates:
            yield in_global_window(self._rejected())
        self._embedded.inc(self._counts["rows_embedded"])
        yield in_global_window(beam.pvalue.TaggedOutput(STATS, self._counts))

    def _rejected(self) -> beam.pvalue.TaggedOutput:
        ids, paths, rows = zip(*self._duplicates, strict=True)
        self._duplicates = []
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(ids, self._rejects.field(0).type),
                pa.array(paths, pa.string()),
                pa.array(rows, pa.int64()),
                pa.array(["duplicate_id"] * len(ids), pa.string()),
            ],
            schema=self._rejects,
        )
        return beam.pvalue.TaggedOutput(REJECTED, batch)


class _Apply(beam.DoFn):
    """One unit batch and its decisions in; the units to embed (main) and the reused ones with
    yesterday's vectors (embeddings schema) out. Units without a decision were duplicates."""

    def __init__(self, schema: pa.Schema) -> None:
        self._schema = schema  # of the embeddings files

    def process(self, item: tuple) -> Iterator:
        _, grouped = item
        (batch,) = grouped[BATCH]
        decisions = list(grouped[DECISIONS])
        if not decisions:
            return
        index = np.fromiter((i for i, _ in decisions), dtype=np.int64, count=len(decisions))
        reused = np.fromiter((v is not None for _, v in decisions), dtype=bool, count=len(decisions))
        if reused.any():
            flat = np.frombuffer(b"".join(v for _, v in decisions if v is not None), dtype=np.float32)
            vectors = pa.FixedSizeListArray.from_arrays(flat, self._schema.field(EMBEDDING_COLUMN).type.list_size)
            carried = batch.take(pa.array(index[reused])).select(self._schema.names[:-1])
            yield beam.pvalue.TaggedOutput(
                REUSED, pa.RecordBatch.from_arrays([*carried.columns, vectors], schema=self._schema)
            )
        if not reused.all():
            yield batch.take(pa.array(index[~reused]))


class JoinPrevious(beam.PTransform):
    """UnitBatches and the previous output's ShardBatches in; outputs unit record batches `to_embed`,
    `reused` (embeddings schema), `rejected` and `stats`."""

    def __init__(
        self, id_column: str, schema: pa.Schema, rejects: pa.Schema, reuse: bool, passages: bool, rows_per_batch: int
    ) -> None:
        super().__init__()
        self._id_column = id_column
        self._schema = schema
        self._decide = _Decide(rejects, reuse, passages, rows_per_batch)

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> dict[str, beam.PCollection]:
        units, previous = inputs
        current = units | "KeyUnits" >> beam.FlatMap(_key_units, self._id_column)
        earlier = previous | "KeyPrevious" >> beam.FlatMap(_key_previous, self._id_column)
        decided = (
            {CURRENT: current, PREVIOUS: earlier}
            | "JoinById" >> beam.CoGroupByKey()
            | "Decide" >> beam.ParDo(self._decide).with_outputs(REJECTED, STATS, main=DECISIONS)
        )
        batches = units | "KeyBatches" >> beam.Map(lambda unit_batch: (unit_batch.key, unit_batch.batch))
        applied = (
            {BATCH: batches, DECISIONS: decided[DECISIONS]}
            | "JoinByBatch" >> beam.CoGroupByKey()
            | "Apply" >> beam.ParDo(_Apply(self._schema)).with_outputs(REUSED, main="to_embed")
        )
        return {
            "to_embed": applied.to_embed,
            REUSED: applied[REUSED],
            REJECTED: decided[REJECTED],
            STATS: decided[STATS],
        }
