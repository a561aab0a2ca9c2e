"""Split rows into those that can be embedded and rejects with a reason.

Checks run column-wise in Arrow compute, never row by row in Python.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from functools import reduce

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.inputs import InputColumns
from schemas.outputs import rejects_batch
from transforms import METRICS_NAMESPACE
from transforms.read import ShardBatch

# In order of precedence: a row gets the first reason that applies.
REASONS = ("null_id", "nan_id", "invalid_utf8", "null_text", "text_not_string", "empty_text")
STATS = "stats"
REJECTED = "rejected"


def text_as_strings(column: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """The text column with dictionary encoding undone and bytes decoded as UTF-8.

    Parquet writers that leave out the string annotation produce binary columns;
    their values are text when they decode. Returns the column and which rows
    did not decode (they become null and are rejected), or None when all did.
    """
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if isinstance(column.type, pa.BaseExtensionType):  # JSON (DuckDB writes its JSON type so) is its text
        column = column.storage
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:  # Parquet readers do not check that string columns hold UTF-8; a writer may not have either
            column.validate(full=True)
        except pa.ArrowInvalid:
            column = column.view(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        return column, None
    # As wide as the bytes: a large_binary batch past 2 GiB does not fit string's 32-bit offsets.
    kind = pa.large_string() if pa.types.is_large_binary(column.type) else pa.string()
    try:
        return column.cast(kind), None
    except pa.ArrowInvalid:  # some values are not UTF-8: find them one by one
        values = column.to_pylist()
        decoded = [_decode(value) for value in values]
        invalid = [value is not None and text is None for value, text in zip(values, decoded, strict=True)]
        return pa.array(decoded, kind), pa.array(invalid)


def _decode(value: bytes | None) -> str | None:
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def not_utf8(column: pa.Array) -> pa.Array | None:
    """Which values of a column hold a string that is not UTF-8 (a writer that did not check), at any
    depth (list items, struct fields, map keys and items), or None when none does or it holds no
    strings. Written out, one such id or carried value would make the whole embeddings file
    unreadable to DuckDB and pandas; binary values are bytes and never checked. A dictionary's values
    are checked once each, not once per row; a list's items all at once, then mapped to their lists."""
    kind = column.type
    if isinstance(kind, pa.BaseExtensionType):  # arrow.json holds its text in its storage's strings
        return not_utf8(column.storage)
    if pa.types.is_dictionary(kind):
        invalid = not_utf8(column.dictionary)
        return None if invalid is None else pc.fill_null(invalid.take(column.indices), False)
    if pa.types.is_map(kind):  # list_flatten takes no maps (and list_parent_indices aborts on one)
        return not_utf8(column.cast(pa.list_(pa.struct([kind.key_field, kind.item_field]))))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        invalid = not_utf8(pc.list_flatten(column))  # the items of valid lists, as Parquet writes them
        if invalid is None:
            return None
        # Each item's list, counted as list_flatten takes them (list_parent_indices also counts the
        # items a null list's offsets still span, which list_flatten skips).
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
        parents = np.repeat(np.arange(len(column)), lengths)
        rows = np.zeros(len(column), dtype=bool)
        rows[parents[pc.fill_null(invalid, False).to_numpy(zero_copy_only=False)]] = True
        return pa.array(rows)
    if pa.types.is_struct(kind):  # flatten() nulls a null struct's fields: Parquet does not write them
        masks = [mask for field in column.flatten() if (mask := not_utf8(field)) is not None]
        return reduce(pc.or_, masks) if masks else None
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None
    return text_as_strings(column)[1]


def utf8_dictionary(column: pa.DictionaryArray) -> pa.DictionaryArray:
    """The column without its dictionary's entries that are not UTF-8, used or not, the rows using one null
    (they are rejected): Parquet's writer writes a top-level column's dictionary whole, and one such entry
    made the whole file unreadable (pyarrow writes a nested dictionary's values one by one)."""
    invalid = not_utf8(column.dictionary)
    if invalid is None or not pc.any(invalid).as_py():
        return column
    kept = pc.invert(invalid)
    moved = pa.array(np.cumsum(kept.to_numpy(zero_copy_only=False)) - 1).take(column.indices)  # kept entries' places
    indices = pc.if_else(pc.fill_null(invalid.take(column.indices), False), pa.scalar(None, moved.type), moved)
    return pa.DictionaryArray.from_arrays(
        indices.cast(column.type.index_type), column.dictionary.filter(kept), ordered=column.type.ordered
    )


def reject_reasons(batch: pa.RecordBatch, columns: InputColumns, invalid_utf8: pa.Array | None = None) -> pa.Array:
    """A reason per row, null where the row is fine."""
    ids, text = batch.column(columns.id.name), batch.column(columns.text)
    false = pa.array(np.zeros(batch.num_rows, dtype=bool))
    is_string = pa.types.is_string(text.type) or pa.types.is_large_string(text.type)
    conditions = [
        pc.is_null(ids),
        _nan_ids(ids),
        false if invalid_utf8 is None else invalid_utf8,
        pc.is_null(text),
        false if is_string else pc.is_valid(text),
        pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), False) if is_string else false,
    ]
    return pc.case_when(pc.make_struct(*conditions, field_names=REASONS), *REASONS)


def _nan_ids(ids: pa.Array) -> pa.Array:
    """Which ids are NaN (only float ids can be).

    NaN equals nothing, itself included, so a NaN id can neither be joined with the previous
    run nor found as a duplicate: such rows are rejected rather than lost between the steps.
    """
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if not pa.types.is_floating(ids.type):
        return pa.array(np.zeros(len(ids), dtype=bool))
    return pc.fill_null(pc.is_nan(ids), False)


class _Validate(beam.DoFn):
    def __init__(self, columns: InputColumns, rejects_schema: pa.Schema) -> None:
        self._columns = columns
        self._rejects_schema = rejects_schema
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_rejected")
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_in")

    def process(self, shard: ShardBatch) -> Iterator:
        batch = shard.batch
        index = batch.schema.get_field_index(self._columns.text)
        text, invalid_text = text_as_strings(batch.column(index))
        batch = batch.set_column(index, self._columns.text, text)
        id_name, ids = self._columns.id.name, batch.column(self._columns.id.name)
        # Columns that must hold UTF-8, in order of precedence: a reject names the first its row fails.
        carried = [f.name for f in self._columns.typed[1:]]
        masks = [not_utf8(ids), invalid_text, *(not_utf8(batch.column(name)) for name in carried)]
        names = [id_name, self._columns.text, *carried]
        invalid = {name: mask for name, mask in zip(names, masks, strict=True) if mask is not None}
        invalid_utf8 = reduce(pc.or_, invalid.values()) if invalid else None
        reasons = reject_reasons(batch, self._columns, invalid_utf8)
        for name in names:  # after the reasons: a row whose value is nulled here is rejected as not UTF-8
            index = batch.schema.get_field_index(name)
            if pa.types.is_dictionary(batch.schema.field(index).type):
                batch = batch.set_column(index, batch.schema.field(index), utf8_dictionary(batch.column(index)))
        ids = batch.column(id_name)
        if id_name in invalid:  # the rejects name it by file and row
            ids = pc.if_else(invalid[id_name], pa.scalar(None, ids.type), ids)
        rejected = pc.is_valid(reasons)
        counts = Counter({"rows_in": batch.num_rows})
        self._read.inc(batch.num_rows)
        rejected_count = pc.sum(rejected).as_py() or 0
        if rejected_count:
            why = reasons.filter(rejected)
            column = None
            if invalid:
                first = pc.case_when(pc.make_struct(*invalid.values(), field_names=list(invalid)), *invalid)
                column = pc.if_else(pc.equal(why, "invalid_utf8"), first.filter(rejected), pa.scalar(None, pa.string()))
            yield beam.pvalue.TaggedOutput(
                REJECTED,
                rejects_batch(
                    self._rejects_schema,
                    ids.filter(rejected),
                    pa.array([shard.path] * rejected_count, pa.string()),
                    pa.array(shard.row_numbers).filter(rejected),
                    why,
                    column,
                ),
            )
            for item in pc.value_counts(why).to_pylist():
                counts[f"rejected:{item['values']}"] = item["counts"]
            self._rejected.inc(rejected_count)
            kept = pc.invert(rejected)
            # The row numbers go with the rows kept, so later rejects (duplicate_id, no_tokens) name the right row.
            shard = ShardBatch(shard.path, shard.row_numbers[kept.to_numpy(zero_copy_only=False)], batch.filter(kept))
        else:
            shard = ShardBatch(shard.path, shard.row_numbers, batch)
        yield beam.pvalue.TaggedOutput(STATS, counts)
        if shard.batch.num_rows:
            yield shard


class ValidateRows(beam.PTransform):
    """ShardBatches in; outputs `valid` ShardBatches, `rejected` record batches and `stats` Counters."""

    def __init__(self, columns: InputColumns, rejects_schema: pa.Schema) -> None:
        super().__init__()
        self._columns = columns
        self._rejects_schema = rejects_schema

    def expand(self, shards: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return shards | "CheckRows" >> beam.ParDo(_Validate(self._columns, self._rejects_schema)).with_outputs(
            REJECTED, STATS, main="valid"
        )
