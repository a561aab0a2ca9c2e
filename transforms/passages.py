"""Turn valid rows into what is embedded: passages of each text with --chunk_tokens, else the rows themselves.

Each unit (passage or row) gets its content hash here, before the join with the
previous run, so that a nightly run can match passages by hash. Carried columns
are taken with Arrow's `take`, never through Python objects, so values of any
type (nanosecond timestamps, decimals, nested lists and structs) arrive bit for bit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.utils import shared

from encoder.passages import PassageSplitter
from encoder.tokens import TextTokenizer
from schemas.inputs import InputColumns
from schemas.outputs import CONTENT_HASH_COLUMN, content_hashes, rejects_batch, units_schema
from transforms import METRICS_NAMESPACE
from transforms.embed import EncoderHandler
from transforms.read import ShardBatch
from transforms.validate import REJECTED, STATS


@dataclass(frozen=True)
class Chunking:
    tokens: int  # at most this many tokens per passage, as the model counts them
    overlap: int  # tokens repeated from the end of one passage at the start of the next
    prompt_merges: bool = False  # the prompt's last token merges into a text's first word (`Ġ` + `word`)


@dataclass(frozen=True)
class UnitBatch:
    """Units of one read batch, with where each one's document came from."""

    key: str  # unique per UnitBatch in a run: file, first row and part
    path: str
    row_numbers: np.ndarray  # int64: each unit's document's row within `path`
    batch: pa.RecordBatch  # of `units_schema`
    # With passages, int32: document tokens each passage repeats from the one before (counted once
    # the join has settled which documents are kept: a duplicate id's passages are not written).
    overlaps: np.ndarray | None = None


class _ToUnits(beam.DoFn):
    def __init__(
        self,
        columns: InputColumns,
        prompt: str,
        rejects: pa.Schema,
        units_per_batch: int,
        handler: EncoderHandler,
        chunking: Chunking | None,
    ) -> None:
        self._columns = columns
        self._prompt = prompt
        self._rejects = rejects
        self._units_per_batch = units_per_batch
        self._handler = handler
        self._chunking = chunking
        self._schema = units_schema(columns, chunking is not None)
        self._shared = shared.Shared()
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_rejected")

    def setup(self) -> None:
        self._splitter: PassageSplitter | None = None

    def _tokenizer(self) -> TextTokenizer:
        return self._shared.acquire(self._handler.load_tokenizer, tag=f"tokenizer{self._handler!r}")

    def _load_splitter(self) -> PassageSplitter:
        tokenizer = self._tokenizer()
        return PassageSplitter(tokenizer.raw, self._chunking.tokens, self._chunking.overlap, tokenizer.count)

    def process(self, shard: ShardBatch) -> Iterator:
        batch = shard.batch
        counts = Counter()
        if self._chunking is None:  # the text stays in Arrow: a huge one is never copied into Python
            units = batch.column(self._columns.text).cast(pa.string())
            without = self._tokenizer().without_tokens(units)
            yield from self._reject_without_tokens(shard, without, counts)
            documents = np.flatnonzero(~without)
            if without.any():
                units = units.take(pa.array(documents))
            located, overlaps = [], None
        else:
            if self._splitter is None:
                self._splitter = self._load_splitter()
            texts = batch.column(self._columns.text).to_pylist()
            passages = self._splitter.split(texts)
            documents = passages.document
            units = pa.array(passages.texts(texts), pa.string())
            located = [passages.chunk, passages.char_start, passages.char_end]
            overlaps = passages.overlaps.astype(np.int32)
            per_document = np.bincount(documents, minlength=batch.num_rows)
            yield from self._reject_without_tokens(shard, per_document == 0, counts)
        parts = range(0, len(units), self._units_per_batch)
        for part, start in enumerate(parts):
            end = start + self._units_per_batch
            piece = units[start:end]
            if len(parts) > 1:  # its own buffers: a pickled slice would carry the whole array's
                piece = piece.take(pa.array(np.arange(len(piece))))
            yield UnitBatch(
                f"{shard.path}#{shard.row_numbers[0]}#{part}",
                shard.path,
                shard.row_numbers[documents[start:end]],
                self._unit_batch(batch, documents[start:end], piece, [a[start:end] for a in located]),
                None if overlaps is None else overlaps[start:end],
            )
        yield beam.pvalue.TaggedOutput(STATS, counts)

    def _unit_batch(
        self, batch: pa.RecordBatch, documents: np.ndarray, units: pa.Array, located: list[np.ndarray]
    ) -> pa.RecordBatch:
        take = pa.array(documents)
        columns = {f.name: batch.column(f.name).take(take) for f in self._columns.carry if f.name != self._columns.text}
        columns[self._columns.text] = units
        columns[CONTENT_HASH_COLUMN] = content_hashes(self._prompt, units)
        arrays = [batch.column(self._columns.id.name).take(take), *map(pa.array, located)]
        arrays += [columns[name] for name in self._schema.names[len(arrays) :]]
        return pa.RecordBatch.from_arrays(arrays, schema=self._schema)

    def _reject_without_tokens(self, shard: ShardBatch, rejected: np.ndarray, counts: Counter) -> Iterator:
        """A text with no token the model knows (only characters its tokenizer drops) has no passage, and
        no meaning to embed."""
        if not rejected.any():
            return
        rows = np.flatnonzero(rejected)
        counts["rejected:no_tokens"] += len(rows)
        self._rejected.inc(len(rows))
        yield beam.pvalue.TaggedOutput(
            REJECTED,
            rejects_batch(
                self._rejects,
                shard.batch.column(self._columns.id.name).take(pa.array(rows)),
                pa.array([shard.path] * len(rows), pa.string()),
                pa.array(shard.row_numbers[rows]),
                pa.array(["no_tokens"] * len(rows), pa.string()),
            ),
        )


class MakeUnits(beam.PTransform):
    """Valid ShardBatches in; UnitBatches out (passages with `chunking`, else one unit per row),
    plus `rejected` record batches (texts without a passage) and `stats` Counters."""

    def __init__(
        self,
        columns: InputColumns,
        prompt: str,
        rejects: pa.Schema,
        units_per_batch: int,
        handler: EncoderHandler,
        chunking: Chunking | None,
    ) -> None:
        super().__init__()
        self._dofn = _ToUnits(columns, prompt, rejects, units_per_batch, handler, chunking)

    def expand(self, valid: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return valid | "Split" >> beam.ParDo(self._dofn).with_outputs(REJECTED, STATS, main="units")
