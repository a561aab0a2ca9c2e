"""Join today's units (passages, or rows) with the previous run's output by id: reuse, re-embed, or drop.

Per id, the first document by (file, row number) is kept and every other row
with that id is rejected as `duplicate_id`. Each kept unit whose content hash
equals one of that id's units in the previous output, under the same model
fingerprint, takes that vector bit for bit and never reaches the model; with
passages, only the edited passages of a changed document are embedded again.
Previous ids with no valid row today are counted as deleted and left out.
Without --previous the join still runs, to settle duplicate ids across shards.

With --previous it also makes the change set that turns yesterday's output into
today's: the upserts are the units embedded today and the reused ones that are
restated, i.e. whose other written values (carried columns, passage offsets)
differ from the previous row of the same (id, chunk), or that had no such row;
the deletes are the previous (id, chunk) keys no kept unit has. Values are
compared by a 64-bit digest per row (transforms.value_hashes), so only the
digest crosses the shuffle, never the values.

Everything moves as Arrow tables, never one element per row. Ids are spread
over `buckets` by a hash of their bytes. Each unit batch sends each bucket one
table of claims: per unit its id, row number, chunk, place in the batch and
content hash. A document that is not its id's first within the batch is
rejected there, unless it is the batch's first or last (its passages may go on
in the next batch: the bucket rejects it, once), so an id repeated a million
times sends at most three documents' claims per batch, not a million. Each bucket settles its ids with Arrow sorts and
joins, and sends each unit batch one table of decisions: which of its units to
keep and, for reused ones, yesterday's vector. The units themselves, carried
columns included, stay in their batches and meet their decisions in a second
join by batch key, so carried values of any type arrive bit for bit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.inputs import InputError
from schemas.outputs import CHUNK_COLUMN, CONTENT_HASH_COLUMN, EMBEDDING_COLUMN, rejects_batch
from transforms import METRICS_NAMESPACE
from transforms.id_buckets import id_buckets, id_values
from transforms.passages import UnitBatch
from transforms.read import ShardBatch
from transforms.spill import spill, unspill
from transforms.validate import REJECTED, STATS
from transforms.value_hashes import row_digests
from transforms.write import PER_DOCUMENT

CURRENT, PREVIOUS, REUSED = "current", "previous", "reused"
BATCH, DECISIONS = "batch", "decisions"
# Column names of claims and decisions (internal to the join).
ID, ROW, CHUNK, INDEX, HASH, SOURCE, PART, VECTOR = "id", "row", "chunk", "index", "hash", "source", "part", "vector"
DIGEST, RESTATED = "digest", "restated"
WRITTEN = "written"  # float ids as written, beside ID as compared (see _id_columns)
OVERLAP = "overlap"  # with passages: document tokens a passage repeats from the one before
DELETES = "deletes"  # tag of the change set's deleted keys


@dataclass(frozen=True)
class ChangeSet:
    """What the join needs to make the change set."""

    restated: list[str]  # the written columns compared with the previous row of the same key
    deletes: pa.Schema  # of the deleted keys
    comparable: bool  # the previous run wrote the same columns; else every reused row is restated


@dataclass(frozen=True)
class Claims:
    """One unit batch's units whose ids fall in one bucket."""

    path: str
    key: str  # the unit batch's key
    table: pa.Table  # ID (and WRITTEN for float ids), ROW, CHUNK, INDEX, HASH, and DIGEST with a change set


def _id_columns(ids: pa.Array | pa.ChunkedArray) -> dict[str, pa.Array | pa.ChunkedArray]:
    """ID: the ids as the join compares them; for float ids also WRITTEN, the ids as written, since
    the join compares -0.0 as 0.0 and the rejects and deletes must show the id that was written."""
    compared = id_values(ids)
    if not pa.types.is_floating(compared.type):
        return {ID: compared}
    return {ID: compared, WRITTEN: ids.dictionary_decode() if pa.types.is_dictionary(ids.type) else ids}


def _shown_ids(table: pa.Table) -> pa.ChunkedArray:
    """The ids of claims or keys as written (see _id_columns)."""
    return table.column(WRITTEN if WRITTEN in table.column_names else ID)


def _group_starts(*columns: pa.ChunkedArray) -> np.ndarray:
    """For rows sorted by `columns`: True where a row's values differ from the row before."""
    starts = np.ones(len(columns[0]), dtype=bool)
    if len(starts) > 1:
        starts[1:] = False
        for column in columns:
            starts[1:] |= pc.not_equal(column[1:], column[:-1]).to_numpy(zero_copy_only=False)
    return starts


def _first_documents(claims: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Claims sorted by (id, source, row), whether each one's document is its id's first, and
    whether it is the first claim of its document."""
    claims = claims.sort_by([(ID, "ascending"), (SOURCE, "ascending"), (ROW, "ascending")])
    ids = claims.column(ID)
    id_starts = _group_starts(ids)
    document_starts = _group_starts(ids, claims.column(SOURCE), claims.column(ROW))
    document = np.cumsum(document_starts) - 1
    first = document[id_starts][np.cumsum(id_starts) - 1]
    return claims, document == first, document_starts


def _duplicates(claims: pa.Table, which: np.ndarray, paths: list[str], rejects: pa.Schema) -> pa.RecordBatch:
    """Rejected rows for the documents of `claims` marked in `which`."""
    rows = claims.filter(pa.array(which))
    sources = pa.DictionaryArray.from_arrays(rows.column(SOURCE).combine_chunks(), pa.array(paths, pa.string()))
    return rejects_batch(
        rejects,
        _shown_ids(rows).combine_chunks().cast(rejects.field(0).type),
        sources.dictionary_decode(),
        rows.column(ROW).combine_chunks(),
        pa.array(np.full(rows.num_rows, "duplicate_id", dtype=object), pa.string()),
    )


class _Claim(beam.DoFn):
    """UnitBatch in; (bucket, Claims) per bucket its ids fall in, and rejects for documents that
    are not their id's first within the batch nor at its edges."""

    def __init__(
        self,
        id_column: str,
        rejects: pa.Schema,
        buckets: int,
        spill_dir: str | None,
        passages: bool,
        restated: list[str] | None = None,
    ) -> None:
        self._id_column = id_column
        self._rejects = rejects
        self._buckets = buckets
        self._passages = passages
        self._restated = restated
        self._spill_dir = spill_dir
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_rejected")

    def process(self, units: UnitBatch) -> Iterator:
        batch = units.batch
        rows = batch.num_rows
        claims = pa.table(
            {
                **_id_columns(batch.column(self._id_column)),
                SOURCE: np.zeros(rows, np.int32),
                ROW: units.row_numbers,
                CHUNK: _chunks(batch, self._passages),
                INDEX: np.arange(rows, dtype=np.int32),
                HASH: batch.column(CONTENT_HASH_COLUMN),
            }
        )
        if self._restated is not None:
            claims = claims.append_column(DIGEST, pa.array(row_digests(batch, self._restated)))
        if units.overlaps is not None:
            claims = claims.append_column(OVERLAP, pa.array(units.overlaps, pa.int32()))
        claims, first, document_starts = _first_documents(claims)
        numbers = claims.column(ROW).to_numpy()
        sent = first | (numbers == units.row_numbers.min()) | (numbers == units.row_numbers.max())
        duplicates = document_starts & ~sent
        if duplicates.any():
            yield beam.pvalue.TaggedOutput(REJECTED, _duplicates(claims, duplicates, [units.path], self._rejects))
            yield beam.pvalue.TaggedOutput(STATS, Counter({"rejected:duplicate_id": int(duplicates.sum())}))
            self._rejected.inc(int(duplicates.sum()))
        claims = claims.filter(pa.array(sent)).drop_columns([SOURCE])
        for bucket, part in _by_bucket(claims, self._buckets):
            yield bucket, spill(Claims(units.path, units.key, part), self._spill_dir)


def _by_bucket(table: pa.Table, buckets: int) -> Iterator[tuple[int, pa.Table]]:
    """(bucket, the rows of `table` whose ids fall in it) for each bucket that has some."""
    numbers = id_buckets(table.column(ID).combine_chunks(), buckets)
    order = np.argsort(numbers, kind="stable")
    present, starts = np.unique(numbers[order], return_index=True)
    for bucket, indices in zip(present.tolist(), np.split(order, starts[1:]), strict=True):
        yield bucket, table.take(pa.array(indices)).combine_chunks()


def _chunks(batch: pa.RecordBatch, passages: bool) -> pa.Array | np.ndarray:
    """Each unit's chunk: the job's `chunk` column with passages; 0 without, where a column of that
    name is a carried one, not part of the key."""
    return batch.column(CHUNK_COLUMN) if passages else np.zeros(batch.num_rows, np.int32)


def _previous_claims(
    shard: ShardBatch,
    id_column: str,
    buckets: int,
    spill_dir: str | None,
    passages: bool,
    change_set: ChangeSet | None = None,
) -> Iterator[tuple[int, pa.Table]]:
    """Previous output rows (`passages`: the previous run's were) -> (bucket, table of ID, CHUNK, HASH
    and, when vectors are reused, VECTOR; with a change set DIGEST, null when the previous run wrote
    other columns than this one)."""
    batch = shard.batch
    names = batch.schema.names
    columns = {
        **_id_columns(batch.column(id_column)),
        CHUNK: _chunks(batch, passages),
        HASH: batch.column(CONTENT_HASH_COLUMN),
    }
    if change_set is not None:
        columns[DIGEST] = (
            pa.array(row_digests(batch, change_set.restated))
            if change_set.comparable
            else pa.nulls(batch.num_rows, pa.uint64())
        )
    if EMBEDDING_COLUMN in names:
        columns[VECTOR] = batch.column(EMBEDDING_COLUMN)
    for bucket, table in _by_bucket(pa.table(columns), buckets):
        yield bucket, spill(table, spill_dir)


def _deleted(previous: pa.Table, claimed: pa.Array | None, kept: pa.Table | None) -> tuple[Counter, pa.Table]:
    """Counts of previous ids with no claim today and of previous (id, chunk) keys that no kept
    unit has, and those keys."""
    ids = previous.column(ID)
    gone = ids if claimed is None else ids.filter(pc.invert(pc.is_in(ids, value_set=claimed)))
    written = [(WRITTEN, "min")] if WRITTEN in previous.column_names else []  # one value per id
    keys = previous.group_by([ID, CHUNK], use_threads=False).aggregate(written)
    keys = keys.rename_columns({f"{WRITTEN}_min": WRITTEN}) if written else keys
    if kept is not None:
        keys = keys.join(kept.select([ID, CHUNK]), [ID, CHUNK], join_type="left anti", use_threads=False)
    return Counter(rows_deleted=pc.count_distinct(gone).as_py(), passages_deleted=keys.num_rows), keys


class _Settle(beam.DoFn):
    """One bucket's claims and previous rows in; (batch key, decisions) per unit batch with kept
    units out, with duplicate rejects and counts. Decisions hold INDEX, each kept unit's place in
    its batch, and with reuse VECTOR: yesterday's vector as a variable list, null (holding no values)
    where the unit is to be embedded."""

    def __init__(
        self,
        rejects: pa.Schema,
        reuse: bool,
        passages: bool,
        vector_type: pa.DataType,
        spill_dir: str | None,
        deletes: pa.Schema | None = None,
        previous: str | None = None,
    ) -> None:
        self._previous = previous  # the folder, to name in a message
        self._spill_dir = spill_dir
        self._rejects = rejects
        self._deletes = deletes  # None: no change set
        self._reuse = reuse
        self._passages = passages
        self._vector_type = vector_type
        self._metrics = {
            name: beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)
            for name in ("rows_embedded", "rows_reused", "rows_deleted", "rows_rejected")
        }

    def process(self, item: tuple) -> Iterator:
        for output in self._settle(item):
            if isinstance(output, beam.pvalue.TaggedOutput) and output.tag == STATS:
                for name, counter in self._metrics.items():
                    counter.inc(output.value["rejected:duplicate_id" if name == "rows_rejected" else name])
            yield output

    def _settle(self, item: tuple) -> Iterator:
        _, grouped = item
        parts: list[Claims] = [unspill(part) for part in grouped[CURRENT]]
        earlier = [unspill(table) for table in grouped[PREVIOUS]]
        previous = pa.concat_tables(earlier) if earlier else None
        if not parts:
            counts, gone = _deleted(previous, None, None)
            yield from self._deleted_keys(gone)
            yield beam.pvalue.TaggedOutput(STATS, counts)
            return
        claims, first, document_starts, paths = _settle_documents(parts)
        kept = claims.filter(pa.array(first))
        counts = Counter()
        if previous is not None:
            claimed = claims.column(ID).combine_chunks()
            self._check_previous(previous.filter(pc.is_in(previous.column(ID), value_set=claimed)))
            counts, gone = _deleted(previous, claimed, kept)
            yield from self._deleted_keys(gone)
        duplicates = document_starts & ~first
        if duplicates.any():
            counts["rejected:duplicate_id"] += int(duplicates.sum())
            yield beam.pvalue.TaggedOutput(REJECTED, _duplicates(claims, duplicates, paths, self._rejects))
        kept = self._with_vectors(kept, previous)
        reused = pc.is_valid(kept.column(VECTOR)) if self._reuse else pa.array(np.zeros(kept.num_rows, bool))
        documents = kept.append_column("reused", reused).group_by(ID, use_threads=False).aggregate([("reused", "all")])
        all_reused = pc.sum(documents.column("reused_all")).as_py() or 0
        counts.update(
            rows_reused=all_reused,
            rows_embedded=documents.num_rows - all_reused,
            passages=kept.num_rows,
            passages_reused=pc.sum(reused).as_py() or 0,
        )
        if RESTATED in kept.column_names:
            counts["passages_restated"] = pc.sum(kept.column(RESTATED)).as_py() or 0
        if OVERLAP in kept.column_names:  # of the documents written only, not of duplicate ids
            counts["overlap_tokens"] = pc.sum(kept.column(OVERLAP)).as_py() or 0
            per_document = kept.group_by(ID, use_threads=False).aggregate([([], "count_all")]).column("count_all")
            values, times = np.unique(per_document.to_numpy(), return_counts=True)
            counts.update({f"{PER_DOCUMENT}{n}": int(c) for n, c in zip(values.tolist(), times.tolist(), strict=True)})
        yield beam.pvalue.TaggedOutput(STATS, counts)
        kept = kept.sort_by([(PART, "ascending"), (INDEX, "ascending")])
        present, starts = np.unique(kept.column(PART).to_numpy(), return_index=True)
        ends = [*starts[1:].tolist(), kept.num_rows]
        kept = kept.select([name for name in (INDEX, VECTOR, RESTATED) if name in kept.column_names])
        if VECTOR in kept.column_names:  # a variable list's nulls (units to embed) hold no values; fixed ones a vector
            at = kept.column_names.index(VECTOR)
            kept = kept.set_column(at, VECTOR, kept.column(VECTOR).cast(pa.list_(self._vector_type.value_type)))
        for part, start, end in zip(present.tolist(), starts.tolist(), ends, strict=True):
            # Taken, not sliced: a pickled slice carries the whole bucket's buffers, vectors included.
            decisions = kept.take(pa.array(np.arange(start, end))).combine_chunks()
            yield parts[part].key, spill(decisions, self._spill_dir)

    def _check_previous(self, previous: pa.Table) -> None:
        if not self._reuse or self._passages or pc.count_distinct(previous.column(ID)).as_py() == previous.num_rows:
            return
        repeats = previous.group_by(ID, use_threads=False).aggregate([([], "count_all")])
        repeated = repeats.filter(pc.greater(repeats.column("count_all"), 1)).slice(0, 1).to_pylist()[0]
        raise InputError(
            f"--previous {self._previous} holds id {repeated[ID]!r} {repeated['count_all']} times, which no run "
            "writes (were files of two runs listed in its manifest?); it cannot be reused: pass a finished run's "
            "output as it wrote it, or leave --previous out"
        )

    def _deleted_keys(self, keys: pa.Table) -> Iterator:
        if self._deletes is None or keys.num_rows == 0:
            return
        keys = keys.sort_by([(ID, "ascending"), (CHUNK, "ascending")]).combine_chunks()
        columns = [_shown_ids(keys).cast(self._deletes.field(0).type), keys.column(CHUNK)][: len(self._deletes)]
        yield beam.pvalue.TaggedOutput(
            DELETES, pa.RecordBatch.from_arrays([c.chunk(0) for c in columns], schema=self._deletes)
        )

    def _with_vectors(self, kept: pa.Table, previous: pa.Table | None) -> pa.Table:
        """With reuse, `kept` with VECTOR: yesterday's vector of the same id and content hash, that of
        the same chunk if there is one (else null); with a change set also RESTATED: whether a
        reused unit's other values differ from its (id, chunk)'s previous row, or it had none."""
        if not self._reuse:
            return kept
        if previous is None:
            kept = kept.append_column(VECTOR, pa.nulls(kept.num_rows, self._vector_type))
            return kept.append_column(RESTATED, pa.array(np.zeros(kept.num_rows, bool))) if self._deletes else kept
        numbered = previous.select([ID, CHUNK, HASH]).append_column("row", pa.array(np.arange(previous.num_rows)))
        same_key = numbered.group_by([ID, CHUNK, HASH], use_threads=False).aggregate([("row", "min")])
        same_text = numbered.group_by([ID, HASH], use_threads=False).aggregate([("row", "min")])
        joined = kept.join(
            same_key.rename_columns([ID, CHUNK, HASH, "same_key"]), [ID, CHUNK, HASH], use_threads=False
        ).join(same_text.rename_columns([ID, HASH, "same_text"]), [ID, HASH], use_threads=False)
        exact = joined.column("same_key").combine_chunks()
        rows = pc.coalesce(exact, joined.column("same_text").combine_chunks())
        joined = joined.drop_columns(["same_key", "same_text"])
        vectors = previous.column(VECTOR).combine_chunks().cast(self._vector_type).take(rows)  # either layout
        if self._deletes is not None:
            unchanged = pc.equal(joined.column(DIGEST), previous.column(DIGEST).combine_chunks().take(exact))
            restated = pc.and_(pc.is_valid(vectors), pc.invert(pc.fill_null(unchanged, False)))
            joined = joined.append_column(RESTATED, restated)
        return joined.append_column(VECTOR, vectors)


def _settle_documents(parts: list[Claims]) -> tuple[pa.Table, np.ndarray, np.ndarray, list[str]]:
    """A bucket's claims with SOURCE (rank of the file's path) and PART (which Claims) added, sorted
    as `_first_documents` sorts them, its two masks, and the paths by rank."""
    paths = sorted({part.path for part in parts})
    rank = {path: number for number, path in enumerate(paths)}
    tables = [
        part.table.append_column(
            SOURCE, pa.array(np.full(part.table.num_rows, rank[part.path], np.int32))
        ).append_column(PART, pa.array(np.full(part.table.num_rows, number, np.int32)))
        for number, part in enumerate(parts)
    ]
    return (*_first_documents(pa.concat_tables(tables)), paths)


class _Apply(beam.DoFn):
    """One unit batch and its decisions in; the units to embed (main) and the reused ones with
    yesterday's vectors (embeddings schema) out, in the batch's order, and again the reused ones
    that are restated (RESTATED). Units without a decision were duplicates."""

    def __init__(self, schema: pa.Schema) -> None:
        self._schema = schema  # of the embeddings files

    def process(self, item: tuple) -> Iterator:
        _, grouped = item
        (batch,) = (unspill(batch) for batch in grouped[BATCH])
        decisions = [unspill(decided) for decided in grouped[DECISIONS]]
        if not decisions:
            return
        decided = pa.concat_tables(decisions).sort_by(INDEX)
        index = decided.column(INDEX).combine_chunks()
        if VECTOR in decided.column_names:
            vectors = decided.column(VECTOR).combine_chunks()
            reused = pc.is_valid(vectors)
        else:
            reused = pa.array(np.zeros(len(index), bool))
        if pc.any(reused).as_py():
            carried = batch.take(index.filter(reused)).select(self._schema.names[:-1])
            taken = vectors.filter(reused).cast(self._schema.field(EMBEDDING_COLUMN).type)  # sent as a variable list
            rows = pa.RecordBatch.from_arrays([*carried.columns, taken], schema=self._schema)
            yield beam.pvalue.TaggedOutput(REUSED, rows)
            if RESTATED in decided.column_names:
                restated = decided.column(RESTATED).combine_chunks().filter(reused)
                if pc.any(restated).as_py():
                    yield beam.pvalue.TaggedOutput(RESTATED, rows.filter(restated))
        if not pc.all(reused).as_py():
            yield batch.take(index.filter(pc.invert(reused)))


class JoinPrevious(beam.PTransform):
    """UnitBatches and the previous output's ShardBatches in; outputs unit record batches `to_embed`,
    `reused` (embeddings schema), `rejected` and `stats`, and with a change set `restated`
    (embeddings schema) and `deletes`. `passages`, `previous_passages`: whether tonight's units and
    the previous run's rows are passages, keyed by (id, chunk). `buckets`: how many groups of ids
    are settled apart (each in one process); `change_set`: None without one (no --previous, or rows
    one night and passages the next); `spill_dir`: where a local run's shuffled values go
    (transforms.spill), None on a distributed runner; `previous`: its folder, for messages."""

    def __init__(
        self,
        id_column: str,
        schema: pa.Schema,
        rejects: pa.Schema,
        reuse: bool,
        passages: bool,
        previous_passages: bool,
        buckets: int,
        change_set: ChangeSet | None = None,
        spill_dir: str | None = None,
        previous: str | None = None,
    ) -> None:
        super().__init__()
        self._id_column = id_column
        self._schema = schema
        self._buckets = buckets
        self._spill_dir = spill_dir
        self._previous_passages = previous_passages
        self._change_set = change_set
        restated, deletes = (change_set.restated, change_set.deletes) if change_set else (None, None)
        self._claim = _Claim(id_column, rejects, buckets, spill_dir, passages, restated)
        vector_type = schema.field(EMBEDDING_COLUMN).type
        self._settle = _Settle(rejects, reuse, passages, vector_type, spill_dir, deletes, previous)

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> dict[str, beam.PCollection]:
        units, previous = inputs
        claimed = units | "Claim" >> beam.ParDo(self._claim).with_outputs(REJECTED, STATS, main="claims")
        earlier = previous | "ClaimPrevious" >> beam.FlatMap(
            _previous_claims, self._id_column, self._buckets, self._spill_dir, self._previous_passages, self._change_set
        )
        settled = (
            {CURRENT: claimed.claims, PREVIOUS: earlier}
            | "JoinById" >> beam.CoGroupByKey()
            | "Settle" >> beam.ParDo(self._settle).with_outputs(REJECTED, STATS, DELETES, main=DECISIONS)
        )
        batches = units | "KeyBatches" >> beam.Map(
            lambda unit_batch, folder: (unit_batch.key, spill(unit_batch.batch, folder)), self._spill_dir
        )
        applied = (
            {BATCH: batches, DECISIONS: settled[DECISIONS]}
            | "JoinByBatch" >> beam.CoGroupByKey()
            | "Apply" >> beam.ParDo(_Apply(self._schema)).with_outputs(REUSED, RESTATED, main="to_embed")
        )
        return {
            "to_embed": applied.to_embed,
            REUSED: applied[REUSED],
            RESTATED: applied[RESTATED],
            DELETES: settled[DELETES],
            REJECTED: (claimed[REJECTED], settled[REJECTED]) | "JoinRejects" >> beam.Flatten(),
            STATS: (claimed[STATS], settled[STATS]) | "JoinStats" >> beam.Flatten(),
        }
