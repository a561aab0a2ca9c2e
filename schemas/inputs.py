"""What an input shard must hold, checked against each file's own schema."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq


class InputError(ValueError):
    """Input the job cannot use; the message names the file and what is wrong."""


@dataclass(frozen=True)
class InputColumns:
    """The input columns the job reads, with the types the outputs will carry."""

    text: str
    id: pa.Field
    # Copied into the embeddings files, in the order asked. The text column may be among them
    # (as string: the text or passage embedded); the id column never, since it is always written.
    carry: tuple[pa.Field, ...] = ()

    @property
    def names(self) -> list[str]:
        """Columns read from every shard."""
        return [self.id.name, self.text, *(f.name for f in self.carry if f.name != self.text)]

    @property
    def typed(self) -> tuple[pa.Field, ...]:
        """Columns whose type every shard must share; the text is checked row by row instead."""
        return (self.id, *(f for f in self.carry if f.name != self.text))


# Field metadata keys a writer keeps of its shard's values: Polars' Enum categories and Categorical settings.
WRITERS_VALUE_NOTES = (b"_PL_",)


def input_columns(schema: pa.Schema, path: str, text: str, id_: str, carry: tuple[str, ...]) -> InputColumns:
    """Take the job's columns from the first shard's schema, or say which are missing.

    View types become their large counterparts: Arrow's take and filter have no kernels for them.
    Every column, and every part of one, may hold nulls: a writer that declares a column required
    (Spark's non-null columns) speaks for its own shard, not the others, and a null id is rejected
    by name rather than failing the write. Likewise a writer's note of a column's values (Polars'
    `_PL_ENUM_VALUES2`, an Enum's categories) is the first shard's (without_writers_notes).
    """
    _require(schema, path, [id_, text, *carry])

    def field(name: str) -> pa.Field:
        found = without_writers_notes(schema.field(name))
        return found.with_type(nullable_throughout(without_views(found.type))).with_nullable(True)

    carried = (pa.field(text, pa.string()) if name == text else field(name) for name in dict.fromkeys(carry))
    return InputColumns(text=text, id=field(id_), carry=tuple(f for f in carried if f.name != id_))


def without_writers_notes(field: pa.Field) -> pa.Field:
    """`field` without a writer's notes of its values (WRITERS_VALUE_NOTES), on it or on any part of it
    (Polars' List(Enum), Struct{Enum}): they are the first shard's, and kept in the outputs they made Polars
    read every category the other shards added since back as null. Other metadata (an extension type's) is kept."""
    kept = {k: v for k, v in (field.metadata or {}).items() if not k.startswith(WRITERS_VALUE_NOTES)}
    field = field.with_metadata(kept) if kept else field.remove_metadata()
    parts = _part_fields(field.type)
    return field.with_type(_with_part_fields(field.type, list(map(without_writers_notes, parts)))) if parts else field


def without_views(kind: pa.DataType) -> pa.DataType:
    """string_view and binary_view, at any depth (dictionary values, list items, struct fields, map
    keys and items), as large_string and large_binary."""
    if pa.types.is_string_view(kind):
        return pa.large_string()
    if pa.types.is_binary_view(kind):
        return pa.large_binary()
    if pa.types.is_dictionary(kind):
        return pa.dictionary(kind.index_type, without_views(kind.value_type), kind.ordered)
    return _with_parts(kind, [without_views(part) for part in _parts(kind)])


def nullable_throughout(kind: pa.DataType) -> pa.DataType:
    """`kind` with its parts declared to hold nulls at any depth (list items, struct fields, map items; a
    map's keys never do): Arrow refuses to write a null where a field says there is none."""
    return _with_parts(kind, [nullable_throughout(part) for part in _parts(kind)], nullable=True)


def without_encodings(kind: pa.DataType) -> pa.DataType:
    """`kind` with dictionaries as their values' type and large_string, large_binary and large_list
    as string, binary and list, at any depth: each pair holds its values in the same bytes, in a
    dictionary or behind wider offsets, so transforms.value_hashes digests their values alike."""
    if pa.types.is_dictionary(kind):
        return without_encodings(kind.value_type)
    if pa.types.is_large_string(kind):
        return pa.string()
    if pa.types.is_large_binary(kind):
        return pa.binary()
    parts = [without_encodings(part) for part in _parts(kind)]
    if pa.types.is_large_list(kind):
        return pa.list_(kind.value_field.with_type(parts[0]))
    return _with_parts(kind, parts)


def _part_fields(kind: pa.DataType) -> list[pa.Field]:
    """The fields a list, map or struct is made of (items; key and item; fields), else none."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return [kind.value_field]
    if pa.types.is_map(kind):
        return [kind.key_field, kind.item_field]
    if pa.types.is_struct(kind):
        return list(kind)
    return []


def _parts(kind: pa.DataType) -> list[pa.DataType]:
    """The types a list, map or struct is made of (items; key and item; fields), else none."""
    return [field.type for field in _part_fields(kind)]


def _with_part_fields(kind: pa.DataType, fields: list[pa.Field]) -> pa.DataType:
    """`kind` made of `fields` (as `_part_fields` lists them): container and sizes kept."""
    if pa.types.is_map(kind):
        return pa.map_(fields[0].type, fields[1])
    if pa.types.is_struct(kind):
        return pa.struct(fields)
    if not fields:
        return kind
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(fields[0], kind.list_size)
    return pa.large_list(fields[0]) if pa.types.is_large_list(kind) else pa.list_(fields[0])


def _with_parts(kind: pa.DataType, parts: list[pa.DataType], nullable: bool = False) -> pa.DataType:
    """`kind` with its parts (as `_parts` lists them) of the types `parts`: names, sizes and container
    kept (and each part's nullability, unless `nullable` says all may be null), so one helper rebuilds
    a nested type for every change made part by part."""
    fields = [field.with_type(part) for field, part in zip(_part_fields(kind), parts, strict=True)]
    return _with_part_fields(kind, [field.with_nullable(True) for field in fields] if nullable else fields)


# Names of UTC that writers give timestamps: pandas, Spark and pyarrow today "UTC", pyarrow before 13
# "+00:00" for Python's timezone.utc.
UTC_SPELLINGS = frozenset({"UTC", "+00:00", "-00:00", "Z", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal"})


def is_uuid(kind: pa.DataType) -> bool:
    """Arrow's UUID extension type, which pyarrow reads Parquet's UUID columns as (DuckDB writes them)."""
    return isinstance(kind, pa.BaseExtensionType) and kind.extension_name == "arrow.uuid"


def is_json(kind: pa.DataType) -> bool:
    """Arrow's JSON extension type (text holding JSON), which pyarrow reads Parquet's JSON columns as."""
    return isinstance(kind, pa.BaseExtensionType) and kind.extension_name == "arrow.json"


def type_family(kind: pa.DataType) -> pa.DataType | str | tuple:
    """Types that hold the same values: writers pick among them (pandas 3 writes large_string,
    pyarrow string; pandas int64 and nanoseconds, Spark int32 and microseconds), so shards that
    differ only so are one input. Casts within a family are checked value by value (a value the
    other type cannot hold fails, naming the file and column), so none changes a value; float32 and
    float64 are not one family, since Arrow narrows floats without a check. Nested types go by their
    parts' families (Spark writes array<int> as list<int32>, pandas list<int64>)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return ("list", type_family(kind.value_type))
    if pa.types.is_fixed_size_list(kind):
        return ("fixed_size_list", kind.list_size, type_family(kind.value_type))
    if pa.types.is_map(kind):
        return ("map", type_family(kind.key_type), type_family(kind.item_type))
    if pa.types.is_struct(kind):
        return ("struct", *((field.name, type_family(field.type)) for field in kind))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "string"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return "binary"
    if pa.types.is_timestamp(kind):  # one instant means another wall-clock time in another zone
        return ("timestamp", "UTC" if kind.tz in UTC_SPELLINGS else kind.tz)
    for name in ("integer", "date", "time", "duration", "decimal"):
        if getattr(pa.types, f"is_{name}")(kind):
            return name
    return kind


def one_family(ours: pa.DataType, theirs: pa.DataType) -> bool:
    """Whether the two types hold one input's values: the same family (type_family), where a part typed
    null on either side stands for any type. A writer types what held no value null (pyarrow and pandas
    type a column of empty lists list<null>), so a shard whose tags were all empty is not another input."""
    return _families_match(type_family(ours), type_family(theirs))


def _families_match(ours, theirs) -> bool:
    if any(isinstance(f, pa.DataType) and pa.types.is_null(f) for f in (ours, theirs)):
        return True
    if isinstance(ours, tuple) and isinstance(theirs, tuple):
        return len(ours) == len(theirs) and all(map(_families_match, ours, theirs))
    return ours == theirs


def holds_null(kind: pa.DataType) -> bool:
    """Whether `kind` is null or holds a part of type null, at any depth (list<null>: a writer's guess)."""
    return pa.types.is_null(kind) or any(map(holds_null, _parts(kind)))


def integer_holding_both(ours: pa.DataType, theirs: pa.DataType) -> pa.DataType | None:
    """The narrowest integer type that holds every value of both (int32 and int64: int64; uint32
    and int32: int64), or None where the two are not both integers or no type does (uint64 and a
    signed type)."""
    if not (pa.types.is_integer(ours) and pa.types.is_integer(theirs)):
        return None
    signed = [t for t in (ours, theirs) if pa.types.is_signed_integer(t)]
    if len(signed) != 1:  # one signedness: the wider of the two
        return max(ours, theirs, key=lambda t: t.bit_width)
    unsigned = theirs if signed[0] == ours else ours
    bits = max(signed[0].bit_width, 2 * unsigned.bit_width)
    return {8: pa.int8(), 16: pa.int16(), 32: pa.int32(), 64: pa.int64()}.get(bits)


def decimal_holding_both(ours: pa.DataType, theirs: pa.DataType) -> pa.DataType | None:
    """The decimal type holding every value of both, with the larger scale and the more integer
    digits (decimal128(2, 1) and decimal128(7, 2): decimal128(7, 2)), decimal256 past 38 digits;
    None where the two are not both decimals or no type does. pyarrow types each file's decimals
    by the values in it, so shards of one writer differ."""
    if not (pa.types.is_decimal(ours) and pa.types.is_decimal(theirs)):
        return None
    scale = max(ours.scale, theirs.scale)
    precision = max(ours.precision - ours.scale, theirs.precision - theirs.scale) + scale
    if precision <= 38 and pa.types.is_decimal128(ours) and pa.types.is_decimal128(theirs):
        return pa.decimal128(precision, scale)
    return pa.decimal256(precision, scale) if precision <= 76 else None


def type_holding_both(ours: pa.DataType, theirs: pa.DataType) -> pa.DataType:
    """`ours` with each integer and decimal, at any depth, as wide as `theirs` needs too: Spark's
    list<int32> beside pandas' list<int64> is read as list<int64>, not refused at the first item past
    int32. Integers take `integer_holding_both` (int64 where none does: uint64 beside signed), decimals
    `decimal_holding_both`, a dictionary's indices those of both and at least int32 (Arrow's own): a
    batch's dictionary is every shard's it came from, and 120 pandas categories (int8) in each of two
    shards make 240; a part of type null in ours takes theirs (one_family), and parts of another family,
    or of type null in theirs, leave ours as it is."""
    if pa.types.is_null(theirs):
        return ours
    if pa.types.is_null(ours):
        return theirs
    if pa.types.is_integer(ours) and pa.types.is_integer(theirs):
        return integer_holding_both(ours, theirs) or pa.int64()
    if pa.types.is_decimal(ours) and pa.types.is_decimal(theirs):
        return decimal_holding_both(ours, theirs) or ours
    if pa.types.is_dictionary(ours):  # pandas sizes a categorical's indices to its categories: int8 up to 127
        values, indices = (
            (theirs.value_type, theirs.index_type) if pa.types.is_dictionary(theirs) else (theirs, pa.int32())
        )
        if type_family(ours.value_type) != type_family(values):
            return ours
        index = integer_holding_both(integer_holding_both(ours.index_type, indices) or pa.int64(), pa.int32())
        return pa.dictionary(index, type_holding_both(ours.value_type, values), ours.ordered)
    parts = _parts(ours)
    if not parts or not one_family(ours, theirs):
        return ours
    return _with_parts(ours, [type_holding_both(a, b) for a, b in zip(parts, _parts(theirs), strict=True)])


def holds_decimal256(kind: pa.DataType) -> bool:
    """Whether `kind` is or holds a decimal256, at any depth (a dictionary's values too)."""
    if pa.types.is_dictionary(kind):
        return holds_decimal256(kind.value_type)
    return pa.types.is_decimal256(kind) or any(map(holds_decimal256, _parts(kind)))


def may_widen(kind: pa.DataType) -> bool:
    """Whether `type_holding_both` can change `kind`: it holds an integer narrower than 64 bits, a
    uint64 (int64 beside signed integers), a decimal or a dictionary, at any depth."""
    if pa.types.is_integer(kind):
        return kind != pa.int64()
    if pa.types.is_dictionary(kind):
        return kind.index_type != pa.int64() or may_widen(kind.value_type)
    return pa.types.is_decimal(kind) or any(may_widen(part) for part in _parts(kind))


def typed_by_values(shard: pq.ParquetFile) -> pa.Schema:
    """The file's Arrow schema with each top-level flat column whose every value is null, by its
    footer's statistics, typed null: pandas types a column it read empty from CSV (or set to NaN)
    double, which Parquet holds as nulls, and such a column says no more of its type than one typed
    null (it is read as nulls of the run's type, transforms.read.cast_columns). A row group without
    a null count counts as holding values; one of no rows (a writer's trailing empty one, which has no
    statistics) is passed over, since it holds none."""
    schema, metadata = shard.schema_arrow, shard.metadata
    groups = [group for group in map(metadata.row_group, range(metadata.num_row_groups)) if group.num_rows]
    if not metadata.num_rows or sum(_leaves(field.type) for field in schema) != metadata.num_columns:
        return schema  # no values, or a layout not counted here (a view or extension type's)
    leaf = 0  # the Parquet leaf column of each field, in the schema's order (a name may hold a dot)
    for index, field in enumerate(schema):
        leaves = _leaves(field.type)
        flat = leaves == 1 and not _parts(field.type) and metadata.schema.column(leaf).max_repetition_level == 0
        stats = [(group.column(leaf).statistics, group.num_rows) for group in groups] if flat else []
        if stats and all(s is not None and s.has_null_count and s.null_count == rows for s, rows in stats):
            schema = schema.set(index, field.with_type(pa.null()))
        leaf += leaves
    return schema


def _leaves(kind: pa.DataType) -> int:
    """The Parquet leaf columns a field of type `kind` is stored in (one per primitive at any depth)."""
    if pa.types.is_dictionary(kind):
        return 1
    parts = _parts(kind)
    return sum(map(_leaves, parts)) if parts else 1


def check_shard(schema: pa.Schema, path: str, columns: InputColumns) -> dict[str, pa.DataType]:
    """Every shard must have the columns, and id/carried columns of the first shard's type family.

    Returns the columns to cast as they are read, to the types every later step and the outputs
    carry: those whose type differs from the first shard's within its family (string,
    large_string, string_view, dictionaries of them; the same for binaries), those of type null
    (a zero-row pandas shard, a column all null: see `typed_by_values`), and a text column of a
    view type, or typed null (all null, whatever its type in the file, a view type's included, which
    Arrow's take and filter refuse: read as nulls, whose rows are rejected). The text column's type
    is not checked otherwise: rows whose text is not a string are rejected one by one, not the whole
    job.
    """
    _require(schema, path, columns.names)
    casts = {}
    for expected in columns.typed:
        found = schema.field(expected.name).type
        if found == expected.type:
            continue
        if not one_family(without_views(found), expected.type):
            raise InputError(f"{path}: column {expected.name!r} is {found}, but other shards have {expected.type}")
        try:  # as read: a view type as its large type (transforms.read), which Arrow casts to a dictionary
            pa.array([], without_views(found)).cast(expected.type)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as e:
            raise InputError(
                f"{path}: column {expected.name!r} is {found}, which Arrow cannot read as {expected.type}, "
                f"its type in the other shards ({e})"
            ) from e
        casts[expected.name] = expected.type
    text = schema.field(columns.text).type
    if without_views(text) != text or pa.types.is_null(text):
        casts[columns.text] = without_views(text)
    return casts


def quoted(names: Iterable[str]) -> str:
    """Column names for a message, each quoted: a Parquet name may hold commas and spaces, which would
    make a bare list ambiguous."""
    return ", ".join(map(repr, names))


def _require(schema: pa.Schema, path: str, names: list[str]) -> None:
    """Each column once: a name standing twice is not one column to read."""
    found = quoted(schema.names) or "none"
    if twice := [n for n in names if len(schema.get_all_field_indices(n)) > 1]:
        raise InputError(f"{path}: column {quoted(twice)} appears more than once; columns found: {found}")
    missing = [n for n in names if schema.get_field_index(n) < 0]
    if missing:
        raise InputError(f"{path}: column {quoted(missing)} not found; columns found: {found}")
