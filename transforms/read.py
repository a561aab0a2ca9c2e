"""Read Parquet shards as Arrow record batches, one span of row groups per work item.

The files are those the plan matched (any Beam filesystem), each with its size
and modification time then. Each file's footer is checked, and its row groups
are spread over workers before any row is read, so a few large shards still
parallelise and only tiny descriptors are shuffled. Consecutive small row groups
are read together (SPAN_ROWS): each work item opens the file and parses its
footer, whose size grows with its row groups, so one item per row group cost the
square of their number (2,000 row groups of 50 rows: 13.6 s against 0.04 s).
A file replaced meanwhile (an upstream job writing late) fails the job: of
another size or time than the plan found when its row groups are listed, or than
then after a span is read. Row group N of another version of the file would
drop or repeat rows without a word.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

from schemas.inputs import InputError, one_family, typed_by_values, without_views
from transforms.object_times import utc_times


@dataclass(frozen=True)
class PlannedFile:
    """A file to read, with its size in bytes and modification time (UTC epoch seconds; None where its
    file system keeps none) at one moment: when the plan matched it, or when its row groups were
    listed. `other_modified` is the second time Beam's seconds can stand for, for an object store's
    object written near a change of the local zone's offset (a spring daylight-saving change), else
    None (transforms.object_times)."""

    path: str
    size: int
    modified: float | None
    other_modified: float | None = None

    @classmethod
    def found(cls, path: str, metadata: FileMetadata) -> PlannedFile:
        """`path` as Beam's `metadata` of it describes it, its time in UTC whatever the local zone."""
        times = utc_times(path, metadata.last_updated_in_seconds)
        return cls(path, metadata.size_in_bytes, times[0], times[1] if len(times) > 1 else None)

    @classmethod
    def at(cls, path: str) -> PlannedFile | None:
        """The file at `path` as its file system reports it now (asked of it, not matched: `[` or `?` in a
        name is no wildcard); None when it is gone."""
        try:
            metadata = FileSystems.get_filesystem(path).metadata(path)
        except OSError:  # Beam's file systems raise BeamIOError, an OSError, for a file that is not there
            return None
        return cls.found(path, metadata)

    def now(self) -> PlannedFile | None:
        """The file as its file system reports it now; None when it is gone."""
        return PlannedFile.at(self.path)

    def listed_as_planned(self, listed: PlannedFile | None) -> bool:
        """Whether `listed`, read in a worker, is the version the launcher planned: the same size and the
        same UTC time, whatever zone each runs in. Where one read an object store's time near a change of
        its zone's offset, it fits two times a shift apart and either counts: else launcher
        and workers in different zones could not agree there. A rewrite landing exactly that far off,
        at the same size, goes unseen."""
        if listed is None or listed.size != self.size:
            return False
        if listed.modified is None or self.modified is None:
            return listed.modified == self.modified
        return any(abs(theirs - ours) < 1e-3 for theirs in listed.times() for ours in self.times())

    def times(self) -> tuple[float, ...]:
        """The UTC times its modification time can be (one, or two: see `other_modified`)."""
        return tuple(t for t in (self.modified, self.other_modified) if t is not None)

    def replaced(self, seen: str, now: PlannedFile | None, when: str) -> InputError:
        return InputError(
            f"{self.path}: replaced by another process while the job read it ({self.described()} {seen}; "
            f"{now.described() if now else 'gone'} {when}); run the job again once that writer has finished"
        )

    def described(self) -> str:
        when = datetime.fromtimestamp(self.modified, UTC).isoformat() if self.modified is not None else "?"
        return f"{self.size} bytes, modified {when}"


# Consecutive row groups are read as one work item until it holds this many rows (a row group
# holding more is an item alone): a footer parsed per item, not per row group.
SPAN_ROWS = 1 << 16


@dataclass(frozen=True)
class RowGroups:
    """Consecutive row groups of one file, read as one work item."""

    file: PlannedFile  # as it was when its row groups were listed
    first: int  # index of the first row group
    stop: int  # index past the last
    first_row: int  # row number of its first row within the file
    casts: tuple[tuple[str, pa.DataType], ...] = ()  # (column, type) to cast to as read; see SchemaCheck

    @property
    def path(self) -> str:
        return self.file.path

    def described(self) -> str:
        return f"row group {self.first}" if self.stop == self.first + 1 else f"row groups {self.first}-{self.stop - 1}"


@dataclass(frozen=True, eq=False)
class ShardBatch:
    """Rows read from one file, with where they came from (for rejects).

    Each row keeps its own row number, not an offset: validation drops rows, and the rows
    after a dropped one must still report their place in the file.
    """

    path: str
    row_numbers: np.ndarray  # int64, one per row of `batch`: its 0-based row within `path`
    batch: pa.RecordBatch


def open_parquet(path: str, int96_unit: str = "us") -> pq.ParquetFile:
    """Open a Parquet file on any Beam filesystem; a corrupt one is an InputError naming it.

    INT96 timestamps (Spark's and Hive's) are read as microseconds: Arrow's default, nanoseconds,
    wraps any beyond 1677-2262 (Spark's 0001-01-01, 9999-12-31) to another instant without a word
    (`int96_unit="ns"` reads them so, to see the nanoseconds microseconds drop: check_int96_nanoseconds).
    Callers take a file's types from its `schema_arrow`, which follows this; its footer's
    `metadata.schema.to_arrow_schema()` does not. Pages that carry a CRC (the job's own output's do)
    are verified as they are read."""
    try:
        return pq.ParquetFile(
            FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED),
            coerce_int96_timestamp_unit=int96_unit,
            page_checksum_verification=True,
        )
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({one_line(e)})") from e


def one_line(error: BaseException) -> str:
    """An error's text on one line: Arrow's end in a newline (a Thrift footer's "No more data to read.\n"),
    and the job's `error: ...` must be the last line of stderr."""
    return " ".join(str(error).split())


# Raises InputError when a file's schema (arrow schema, its columns holding only nulls typed null:
# schemas.inputs.typed_by_values; path) is not what the job needs; may return {column: type} for
# columns to cast as they are read, so that every shard's batches have one type.
SchemaCheck = Callable[[pa.Schema, str], Mapping[str, pa.DataType] | None]


def cast_columns(
    batch: pa.RecordBatch, casts: tuple[tuple[str, pa.DataType], ...], path: str, first_row: int
) -> pa.RecordBatch:
    """`batch` (the file's rows from `first_row` on) with the columns named in `casts` cast, in Arrow,
    where their type differs; a column of nulls becomes nulls of that type, whatever its own. A value
    the type cannot hold (or more distinct values than a dictionary's int8 indices), or one in a
    column of another type family (whose footer said it held only nulls), fails naming the column
    and the row."""
    for name, kind in casts:
        index = batch.schema.get_field_index(name)
        if batch.schema.field(index).type != kind:
            column = _cast(batch.column(index), kind, f"{path}: column {name!r}", first_row)
            batch = batch.set_column(index, batch.schema.field(index).with_type(kind), column)
    return batch


def _cast(column: pa.Array, kind: pa.DataType, where: str, first_row: int) -> pa.Array:
    if column.null_count == len(column):
        return pa.nulls(len(column), kind)
    if not one_family(without_views(column.type), kind):
        row = first_row + pc.index(column.is_valid(), True).as_py()
        raise InputError(
            f"{where} at row {row} holds a value of type {column.type}, though its footer said it held only "
            f"nulls, and other shards have {kind}"
        )
    if without_views(column.type) != column.type:  # Arrow casts no view type to a dictionary, its large type it does
        column = column.cast(without_views(column.type))
    try:
        return column.cast(kind)
    except pa.ArrowException as e:
        row = first_row + _first_uncastable(column, kind)
        raise InputError(
            f"{where} at row {row} cannot be read as {kind}, the type this run gives it (the first input shard's "
            f"that holds rows; integers as wide as the plan found every shard's and the --previous run's ids) ({e})"
        ) from e


def _first_uncastable(column: pa.Array, kind: pa.DataType) -> int:
    """The position of the first value of `column` (which fails to cast) whose prefix fails: found by
    halving, only once a batch has failed."""
    low, high = 0, len(column)  # column[:low] casts, column[:high] does not
    while high - low > 1:
        middle = (low + high) // 2
        try:
            column.slice(0, middle).cast(kind)
            low = middle
        except pa.ArrowException:
            high = middle
    return high - 1


LISTED = "when its row groups were listed"


def _unreadable(file: PlannedFile, error: InputError, when: str) -> InputError:
    """`error`, or the file's replacement when that is what made it unreadable."""
    now = file.now()
    return error if now == file else file.replaced(LISTED, now, when)


class _ListRowGroups(beam.DoFn):
    """A file's row groups in spans of SPAN_ROWS rows, each with the file's size and time as listed,
    which must be those the plan found (PlannedFile.listed_as_planned)."""

    def __init__(self, check: SchemaCheck) -> None:
        self._check = check

    def process(self, file: PlannedFile) -> Iterator[RowGroups]:
        path = file.path
        listed = file.now()
        if not file.listed_as_planned(listed):
            raise file.replaced("when the job was planned", listed, LISTED)
        try:
            parquet = open_parquet(path)
        except InputError as e:
            raise _unreadable(listed, e, "when its footer could not be read") from e
        metadata = parquet.metadata
        now = listed.now()
        if now != listed:  # replaced while the footer was read: which version it is is unknown
            raise listed.replaced(LISTED, now, "after its footer was read")
        if not metadata.num_rows:  # nothing to read, and its types are a guess (pandas types an empty column double)
            return
        casts = tuple((self._check(typed_by_values(parquet), path) or {}).items())
        first = first_row = rows = 0
        for index in range(metadata.num_row_groups):
            rows += metadata.row_group(index).num_rows
            if rows >= SPAN_ROWS or index == metadata.num_row_groups - 1:
                yield RowGroups(listed, first, index + 1, first_row, casts)
                first, first_row, rows = index + 1, first_row + rows, 0


def _int96_columns(parquet: pq.ParquetFile, names: list[str]) -> list[str]:
    """The columns among `names` holding INT96 timestamps at any depth (a struct's field, a list's items,
    a map's keys or items), each named once; a Parquet path's first part is its column, whatever dots
    the names hold."""
    schema, wanted = parquet.metadata.schema, set(names)
    return list(
        dict.fromkeys(
            path[0]
            for index, path in enumerate(parquet.reader.column_paths)
            if path[0] in wanted and schema.column(index).physical_type == "INT96"
        )
    )


def _timestamps(column: pa.Array, rows: np.ndarray | None = None) -> Iterator[tuple[pa.Array, np.ndarray | None]]:
    """Each array of timestamps in `column`, itself or at any depth (a struct's fields, a list's or
    map's values), with the row of `column` each of its values is in (None: the row is the position),
    so a nested value is named by its row. Values under a null struct or list are left out or null."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        yield column, rows
    elif pa.types.is_struct(kind):
        for field in column.flatten():
            yield from _timestamps(field, rows)
    elif pa.types.is_map(kind):  # laid out as a list of key-item structs; Arrow's list kernels take no map
        entries = pa.field("entries", pa.struct([kind.key_field, kind.item_field]), nullable=False)
        yield from _timestamps(column.view(pa.list_(entries)), rows)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        yield from _timestamps(column.flatten(), parents if rows is None else rows[parents])


def check_int96_nanoseconds(read: pa.RecordBatch, exact: pa.RecordBatch, path: str, first_row: int) -> None:
    """Fails naming the first row of `read` (INT96 columns read as microseconds) holding a value, at any
    depth, whose nanoseconds, in `exact` (the same rows read as nanoseconds, wrapped past 1677-2262), the
    microseconds dropped. Impala and Hive write nanoseconds: two ids a few nanoseconds apart were one, a
    carried time another. Only timestamps the two reads type apart are INT96; others of a struct holding
    one are read alike."""
    for name in exact.schema.names:
        found = []  # (row, position, leaf read as microseconds, nanoseconds lost) of each leaf's first
        for micro, nano in zip(_timestamps(read.column(name)), _timestamps(exact.column(name)), strict=True):
            (values, rows), (exact_values, _) = micro, nano
            if values.type == exact_values.type:
                continue
            micros = pc.fill_null(values.view(pa.int64()), 0).to_numpy(zero_copy_only=False)
            nanos = pc.fill_null(exact_values.view(pa.int64()), 0).to_numpy(zero_copy_only=False)
            with np.errstate(over="ignore"):  # wraps modulo 2**64 on both sides alike: what is left is exact
                lost = nanos - micros * 1000
            if lost.any():
                at = int(np.flatnonzero(lost)[0])
                found.append((at if rows is None else int(rows[at]), at, values, int(lost[at])))
        if found:
            row, at, values, lost_at = min(found, key=lambda leaf: leaf[0])
            raise InputError(
                f"{path}: column {name!r} at row {first_row + row} holds an INT96 timestamp with nanoseconds "
                f"({values[at].as_py():%Y-%m-%d %H:%M:%S.%f}{lost_at:03d}), which the job reads in "
                "microseconds, as Spark's dates past 2262 need; write the column as INT64 timestamps (pyarrow's "
                "default) to keep them"
            )


def _failing_column(group: RowGroups, names: list[str]) -> str:
    """`column 'x' in ` for the first of the columns `names` that alone cannot be read from the row
    groups (read again, one column at a time, only once reading them failed); empty where none alone
    fails, or every one does (the file itself is what fails: replaced, cut short)."""
    if len(names) < 2:
        return f"column {names[0]!r} in " if names else ""
    groups = list(range(group.first, group.stop))

    def unreadable(name: str) -> bool:
        try:
            open_parquet(group.path).read_row_groups(groups, columns=[name])
        except (pa.ArrowException, OSError, InputError):
            return True
        return False

    failing = [name for name in names if unreadable(name)]
    return f"column {failing[0]!r} in " if 0 < len(failing) < len(names) else ""


# pyarrow's reader of a fixed_size_list column holding a null list (the file is intact: read without its
# stored Arrow schema the column is a list of the same values).
_NULL_FIXED_SIZE_LIST = re.compile(r"Expected all lists to be of size=\d+ but index \d+ had size=0")


def _cause(error: Exception) -> str:
    """What a reader's error means, where it is known."""
    if _NULL_FIXED_SIZE_LIST.search(str(error)):
        return (
            f": pyarrow {pa.__version__} cannot read back a fixed_size_list column holding a null list; write the "
            "column as a variable-size list, or with its nulls as lists of nulls"
        )
    return ""


class _ReadRowGroups(beam.DoFn):
    def __init__(self, names: list[str], rows_per_batch: int, advice: str) -> None:
        self._names = names
        self._rows_per_batch = rows_per_batch
        self._advice = advice

    def process(self, group: RowGroups) -> Iterator[ShardBatch]:
        first_row = group.first_row
        try:
            parquet = open_parquet(group.path)
            groups = list(range(group.first, group.stop))
            batches = parquet.iter_batches(batch_size=self._rows_per_batch, row_groups=groups, columns=self._names)
            int96 = _int96_columns(parquet, self._names)
            exact = (
                open_parquet(group.path, int96_unit="ns").iter_batches(self._rows_per_batch, groups, int96)
                if int96
                else None
            )
            for batch in batches:
                if exact is not None:
                    check_int96_nanoseconds(batch, next(exact), group.path, first_row)
                try:
                    batch = cast_columns(batch, group.casts, group.path, first_row)
                except InputError as e:  # a value the run's type cannot hold: what to do depends on whose file
                    raise InputError(f"{e}{self._advice}") from e
                yield ShardBatch(group.path, np.arange(first_row, first_row + batch.num_rows, dtype=np.int64), batch)
                first_row += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            where = f"{_failing_column(group, self._names)}{group.described()}"
            error = InputError(f"{group.path}: {where} cannot be read ({one_line(e)}){_cause(e)}{self._advice}")
            raise _unreadable(group.file, error, f"when {group.described()} could not be read") from e
        now = group.file.now()
        if now != group.file:
            read = "was" if group.stop == group.first + 1 else "were"
            raise group.file.replaced(LISTED, now, f"after {group.described()} {read} read")


class ReadParquetFiles(beam.PTransform):
    """PlannedFiles (each path a file, taken as it is written: no pattern) to ShardBatches of the
    columns `names`; a file that cannot be read, that `check` refuses, or that changed since the
    plan fails the job, a row group that cannot be read (a page whose CRC fails) with `advice` added."""

    def __init__(
        self, files: list[PlannedFile], names: list[str], check: SchemaCheck, rows_per_batch: int, advice: str = ""
    ) -> None:
        super().__init__()
        self._files = files
        self._names = names
        self._check = check
        self._rows_per_batch = rows_per_batch
        self._advice = advice

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "ListRowGroups" >> beam.ParDo(_ListRowGroups(self._check))
            | "Spread" >> beam.Reshuffle()
            | "ReadRowGroups" >> beam.ParDo(_ReadRowGroups(self._names, self._rows_per_batch, self._advice))
        )
