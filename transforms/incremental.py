"""Join today's valid rows with the previous run's output by id: reuse, re-embed, or drop.

Per id, the first row by (file, row number) is kept and every other row with
that id is rejected as `duplicate_id`. A kept row whose content hash equals
the previous output's, under the same model fingerprint, takes the previous
vector bit for bit and never reaches the model; the other kept rows go on to
be embedded. Previous ids with no valid row today are counted as deleted and
left out. The join is a CoGroupByKey, so it scales with the runner's shuffle,
never with one machine's memory; without --previous it still runs, to settle
duplicate ids across shards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa

from schemas.inputs import InputColumns, InputError
from schemas.outputs import CONTENT_HASH_COLUMN, EMBEDDING_COLUMN, content_hash
from transforms import in_global_window
from transforms.read import ShardBatch
from transforms.validate import REJECTED, STATS

CURRENT, PREVIOUS, REUSED = "current", "previous", "reused"


class _KeyRows(beam.DoFn):
    """ShardBatch -> (id, (file, row number, content hash, text, carried values)) per row."""

    def __init__(self, columns: InputColumns, prompt: str) -> None:
        self._columns = columns
        self._prompt = prompt

    def process(self, shard: ShardBatch) -> Iterator[tuple]:
        ids, texts, *carried = (shard.batch.column(name).to_pylist() for name in self._columns.names)
        for row, (id_, text, *values) in enumerate(zip(ids, texts, *carried, strict=True), shard.first_row):
            yield id_, (shard.path, row, content_hash(self._prompt + text), text, tuple(values))


def _key_previous(shard: ShardBatch, id_column: str) -> Iterator[tuple]:
    """Previous output rows -> (id, (content hash, vector bytes or None when vectors are not reused))."""
    batch = shard.batch
    hashes = batch.column(CONTENT_HASH_COLUMN).to_pylist()
    if EMBEDDING_COLUMN in batch.schema.names:
        vectors = batch.column(EMBEDDING_COLUMN)
        rows = vectors.flatten().to_numpy().reshape(len(vectors), vectors.type.list_size)
        payloads = [(h, row.tobytes()) for h, row in zip(hashes, rows, strict=True)]
    else:
        payloads = [(h, None) for h in hashes]
    yield from zip(batch.column(id_column).to_pylist(), payloads, strict=True)


class _Decide(beam.DoFn):
    """One id's rows in; record batches of rows to embed (main), reused rows, duplicate rejects and counts out."""

    def __init__(
        self, columns: InputColumns, schema: pa.Schema, rejects: pa.Schema, reuse: bool, rows_per_batch: int
    ) -> None:
        self._schema = schema  # of the embeddings files
        self._rejects = rejects
        self._reuse = reuse
        self._rows_per_batch = rows_per_batch
        self._to_embed = pa.schema([columns.id, pa.field(columns.text, pa.string()), *list(schema)[1:-1]])

    def start_bundle(self) -> None:
        self._embed: list[tuple] = []
        self._reused: list[tuple] = []
        self._duplicates: list[tuple] = []
        self._counts: Counter = Counter()

    def process(self, item: tuple) -> Iterator:
        id_, grouped = item
        previous = list(grouped[PREVIOUS])
        if len(previous) > 1:
            raise InputError(f"--previous output holds id {id_!r} {len(previous)} times; it cannot be reused")
        current = sorted(grouped[CURRENT], key=lambda row: row[:2])
        if not current:
            self._counts["rows_deleted"] += 1
            return
        if len(current) > 1:
            self._duplicates.extend((id_, path, row) for path, row, *_ in current[1:])
            self._counts["rejected:duplicate_id"] += len(current) - 1
        _, _, digest, text, carried = current[0]
        if self._reuse and previous and previous[0][0] == digest:
            self._reused.append((id_, *carried, digest, previous[0][1]))
        else:
            self._embed.append((id_, text, *carried, digest))
        yield from self._flush(self._rows_per_batch)

    def finish_bundle(self) -> Iterator:
        for output in self._flush(1):
            yield in_global_window(output)
        yield in_global_window(beam.pvalue.TaggedOutput(STATS, self._counts))

    def _flush(self, at_least: int) -> Iterator:
        if len(self._embed) >= at_least:
            yield _batch(self._embed, self._to_embed)
            self._embed = []
        if len(self._reused) >= at_least:
            *columns, vectors = zip(*self._reused, strict=True)
            dim = self._schema.field(EMBEDDING_COLUMN).type.list_size
            flat = pa.array(np.frombuffer(b"".join(vectors), dtype=np.float32))
            arrays = [pa.array(values, f.type) for values, f in zip(columns, self._schema, strict=False)]
            yield beam.pvalue.TaggedOutput(
                REUSED,
                pa.RecordBatch.from_arrays(
                    [*arrays, pa.FixedSizeListArray.from_arrays(flat, dim)], schema=self._schema
                ),
            )
            self._counts["rows_reused"] += len(self._reused)
            self._reused = []
        if len(self._duplicates) >= at_least:
            rows = [(*row, "duplicate_id") for row in self._duplicates]
            yield beam.pvalue.TaggedOutput(REJECTED, _batch(rows, self._rejects))
            self._duplicates = []


def _batch(rows: list[tuple], schema: pa.Schema) -> pa.RecordBatch:
    columns = zip(*rows, strict=True)
    return pa.RecordBatch.from_arrays(
        [pa.array(values, f.type) for values, f in zip(columns, schema, strict=True)], schema=schema
    )


class JoinPrevious(beam.PTransform):
    """Valid ShardBatches and the previous output's ShardBatches in; outputs record batches `to_embed`
    (id, text, carried columns, content hash), `reused` (embeddings schema), `rejected` and `stats`."""

    def __init__(
        self,
        columns: InputColumns,
        prompt: str,
        schema: pa.Schema,
        rejects: pa.Schema,
        reuse: bool,
        rows_per_batch: int,
    ) -> None:
        super().__init__()
        self._columns = columns
        self._prompt = prompt
        self._decide = _Decide(columns, schema, rejects, reuse, rows_per_batch)

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> beam.pvalue.DoOutputsTuple:
        valid, previous = inputs
        current = valid | "KeyRows" >> beam.ParDo(_KeyRows(self._columns, self._prompt))
        earlier = previous | "KeyPrevious" >> beam.FlatMap(_key_previous, self._columns.id.name)
        return (
            {CURRENT: current, PREVIOUS: earlier}
            | "JoinById" >> beam.CoGroupByKey()
            | "Decide" >> beam.ParDo(self._decide).with_outputs(REUSED, REJECTED, STATS, main="to_embed")
        )
