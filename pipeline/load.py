"""Load a finished run into a vector database, checking every file against the manifest first.

    python -m pipeline.load pgvector --dsn DSN --table NAME RUN_DIR
    python -m pipeline.load pinecone --output DIR RUN_DIR

PostgreSQL + pgvector: a directory without `manifest.json` is refused and nothing changes;
every file the manifest lists for loading is checked (bytes, sha256, rows) before the database
is touched. Everything happens in one transaction, so a load that fails or is killed midway
leaves the table as it was.

- When the table holds the run's --previous run (has its columns and key, and was last loaded
  with the same columns), the run's change set is applied; when it holds an earlier run of the
  chain (the loads of up to MAX_SKIPPED_LOADS nights were skipped), the change sets of those
  nights first, in order, each run found through its successor's manifest and checked. Its
  deletes and upserts are copied (COPY in binary format) into temporary tables, then deleted
  from and upserted into the table, touching only those rows (readers see the old rows until
  the commit); the HNSW index follows.
- Otherwise the run's snapshot replaces the table's content. The table is kept (its owner,
  privileges, policies, views, triggers and other indexes stay): emptied, altered where its
  columns or key differ from the run's, refilled, and the HNSW index built after the rows are
  in (as pgvector advises). Readers wait for the commit. A table whose index is gone, or of
  another distance, is loaded this way too.

The index measures the distance of the similarity the model was trained for (cosine for most).

The table is created on first use: the id column as primary key (with `chunk` for passages),
the carried columns, `content_hash` and `embedding vector(dim)` (`halfvec` or `bit` for compact
vectors: see README.md, "PostgreSQL + pgvector"), with its HNSW index. The run id, start time
and columns of the last load of each table (by its schema-qualified name) are kept in
`embedding_job_loads`; loading the same run again changes nothing (but rebuilds an index dropped
since), and a run that started before the table's is refused unless the load is a deliberate
rollback.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from encoder.quantize import CALIBRATED, Quantizer
from pipeline.json_text import json_values
from pipeline.logs import configure_logging, error_line
from pipeline.pinecone_files import write_import_files
from schemas.inputs import is_uuid
from schemas.outputs import CHUNK_COLUMN, CONTENT_HASH_COLUMN, EMBEDDING_COLUMN, PASSAGE_FIELDS, has_passages
from transforms.output_owner import unfinished_run
from transforms.paths import WILDCARD, not_a_folder
from transforms.read import PlannedFile
from transforms.write import CHANGES_DIR, MANIFEST

if TYPE_CHECKING:
    import psycopg
    from psycopg.sql import Composable

_LOG = logging.getLogger("pipeline.load")
LOADS_TABLE = "embedding_job_loads"
READ_BLOCK = 8 << 20
COPY_ROWS = 8192  # rows converted to Python values at a time
# Memory for building the HNSW index: pgvector builds far faster when the graph fits (its advice).
INDEX_BUILD_MEMORY = "1GB"
# A load that would delete more than this share of a table's ids is refused unless allowed: a fault
# upstream (shards written empty, a text column gone null) makes a run that deletes them all.
MAX_DELETED_SHARE = 0.5
# A table whose last loads were skipped, this many nights at most, gets their change sets before
# the run's, in order; one further behind is refilled from the run's snapshot.
MAX_SKIPPED_LOADS = 7
NAME_BYTES = 63  # of a PostgreSQL identifier (NAMEDATALEN - 1); a longer one is cut
# The index (`<name>_embedding_hnsw`), cut at NAME_BYTES, differs from the table's name up to 62.
TABLE_NAME_BYTES = 62
# A btree entry holds at most 2704 bytes; ids are kept under it with room for the chunk and headers
# (PostgreSQL may compress a longer one to fit, or may not: the limit is stated, not left to chance).
ID_BYTES = 2600
# PostgreSQL types whose values compare exactly across them (bigint 1 = numeric 1.00): ids of a table and
# a run whose id types are among them are matched by value, others as text.
EXACT_NUMBERS = {"smallint", "integer", "bigint", "numeric"}
# Floating-point types and the bound below which (in magnitude) they hold every integer exactly; beyond it
# neighbouring integers share a value. A float id is matched with exact-number ids by value where it is a
# whole number below the bound (int64 ids 1, 2 then float64 ones 1.0, 2.0), and with none elsewhere.
FLOAT_INTEGERS = {"real": 2**24, "double precision": 2**53}
# `\u0000` in JSON text, not an escaped backslash before `u0000`: a NUL character, which jsonb refuses.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# Where a binary COPY stopped, in PostgreSQL's context of a refusal: its line counts rows, 1 the first sent.
_COPY_LINE = re.compile(r"^COPY .*, line (\d+)(?:, column (.*))?$", re.MULTILINE)
# Columns of `embedding_job_loads` that versions before 2026-12-03 did not keep.
LOADS_ADDED = ("run_started_at timestamptz", "columns text[]", "relid oid")
# How PostgreSQL folds an unquoted name in UTF-8: ASCII capitals only.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Columns the loader writes whatever the run carries (with passages the chunk, in the key, too):
# NOT NULL, and dropped once a run lacks them.
LOADER_COLUMNS = (EMBEDDING_COLUMN, CONTENT_HASH_COLUMN, *(f.name for f in PASSAGE_FIELDS))


# The most dimensions pgvector 0.8's HNSW index takes, by column type.
HNSW_DIMENSIONS = {"vector": 2000, "halfvec": 4000, "bit": 64000}
# pgvector's distance for each similarity a model folder names (its operator classes end in
# `_<ops>_ops`), and the operator a query orders by to use the index.
DISTANCES = {"cosine": ("cosine", "<=>"), "dot": ("ip", "<#>"), "euclidean": ("l2", "<->"), "manhattan": ("l1", "<+>")}
# Pinecone's index metric for each similarity a model folder names; it has none for manhattan.
PINECONE_METRICS = {"cosine": "cosine", "dot": "dotproduct", "euclidean": "euclidean"}


class LoadError(Exception):
    """A run that cannot be loaded; the message says which file and what is wrong."""


LOADED_KINDS = ("embeddings", "upserts", "deletes")  # the files a loader reads; rejects are not loaded
CHANGE_KINDS = ("upserts", "deletes")  # those of a run whose load was skipped


@dataclass(frozen=True)
class Checked:
    """A file as it was when its bytes were checked against the manifest."""

    file: PlannedFile  # its size and time of last change then
    rows: int


@dataclass(frozen=True)
class Run:
    path: str
    manifest: dict
    files: dict[str, list[str]]  # full paths of the checked files of each kind in LOADED_KINDS
    checked: dict[str, Checked] = dataclasses.field(default_factory=dict)  # by full path

    def check_unchanged(self, path: str, rows: int | None = None) -> None:
        """Refuse a file changed since it was checked (`rows`: those read from it since): a load reads each
        file again, and a run writing the folder meanwhile (a rerun with --overwrite) replaced or removed
        it, so the table got rows no check had seen, recorded as the checked run's."""
        if (was := self.checked.get(path)) is not None:
            _refuse_if_changed(path, was, self.path, rows)

    @contextlib.contextmanager
    def reading(self, path: str) -> Iterator[None]:
        """Around a read of `path` again: a read that fails on a file changed since its check (gone, cut
        short: an OSError, pyarrow's or the storage client's own) fails as changed, which says why."""
        try:
            yield
        except LoadError:
            raise
        except Exception:
            self.check_unchanged(path)
            raise

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def started_at(self) -> str | None:
        """When the run started (ISO 8601, UTC); None in manifests of versions that kept no timings."""
        return (self.manifest.get("timings") or {}).get("started_at")

    @property
    def previous_run_id(self) -> str | None:
        """The run its change set applies to; None without one."""
        return (self.manifest.get("changes") or {}).get("previous_run_id")


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_run(run_dir: str) -> Run:
    """The run's manifest and files, each checked against the manifest's bytes, sha256 and rows."""
    return _checked_run(run_dir, read_manifest(run_dir), LOADED_KINDS)


def _checked_run(run_dir: str, manifest: dict, kinds: tuple[str, ...]) -> Run:
    checks = manifest["file_checks"]
    checked = {kind: [_checked(run_dir, name, checks) for name in manifest["files"].get(kind, [])] for kind in kinds}
    files = {kind: [path for path, _ in pairs] for kind, pairs in checked.items()}
    return Run(run_dir, manifest, files, dict(pair for pairs in checked.values() for pair in pairs))


def _refuse_if_changed(path: str, was: Checked, run_dir: str, rows: int | None = None) -> None:
    if not was.file.listed_as_planned(was.file.now()) or rows not in (None, was.rows):
        raise LoadError(
            f"{path}: changed since it was checked against {MANIFEST} (a run writing {run_dir} again?); "
            "nothing was loaded: load the run once it has finished"
        )


def read_manifest(run_dir: str) -> dict:
    """The manifest of a finished run of this job, refused naming what is wrong with `run_dir` otherwise."""
    manifest_path = FileSystems.join(run_dir, MANIFEST)
    if not FileSystems.exists(manifest_path):
        if wrong := not_a_folder(run_dir):
            raise LoadError(f"{run_dir}: {wrong}")
        going = unfinished_run(run_dir)
        raise LoadError(
            f"{run_dir}: no {MANIFEST}; the run did not finish{f' ({going})' if going else ''}, "
            "or this is not a run's output"
        )
    with _open(manifest_path) as f:
        try:
            manifest = json.load(f)
        except ValueError as e:
            raise LoadError(f"{manifest_path}: not a readable manifest ({e})") from e
    if not isinstance(manifest, dict):
        raise LoadError(f"{manifest_path}: not a manifest of this job (a JSON {type(manifest).__name__})")
    missing = [key for key in ("model", "files", "columns") if not isinstance(manifest.get(key), dict)]
    if missing:
        raise LoadError(f"{manifest_path}: not a manifest of this job (no {', '.join(missing)})")
    if not manifest.get("file_checks") or "run_id" not in manifest:
        raise LoadError(f"{manifest_path}: no file checks or run id (written by an older version of the job)")
    return manifest


def _checked(run_dir: str, name: str, checks: dict) -> tuple[str, Checked]:
    """The file's full path, once its bytes, sha256 and rows are what the manifest says, and the file as checked."""
    path = FileSystems.join(run_dir, name)
    expected = checks.get(name)
    if expected is None:
        raise LoadError(f"{path}: listed without checks in {MANIFEST}")
    file = PlannedFile.at(path)
    if file is None:
        raise LoadError(f"{path}: listed in {MANIFEST} but missing")
    digest, size = hashlib.sha256(), 0
    with _open(path) as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    if size != expected["bytes"] or digest.hexdigest() != expected["sha256"]:
        raise LoadError(
            f"{path}: {size} bytes with sha256 {digest.hexdigest()}, but {MANIFEST} says "
            f"{expected['bytes']} bytes with sha256 {expected['sha256']}"
        )
    with _open(path) as f:
        rows = pq.ParquetFile(f).metadata.num_rows
    if rows != expected["rows"]:
        raise LoadError(f"{path}: {rows} rows, but {MANIFEST} says {expected['rows']}")
    checked = Checked(file, rows)
    _refuse_if_changed(path, checked, run_dir)  # not while it was read
    return path, checked


def _is_any_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)


_PG_TYPES = [
    (is_uuid, "uuid"),
    (pa.types.is_boolean, "boolean"),
    (pa.types.is_int8, "smallint"),
    (pa.types.is_int16, "smallint"),
    (pa.types.is_int32, "integer"),
    (pa.types.is_uint8, "smallint"),
    (pa.types.is_uint16, "integer"),
    (pa.types.is_uint32, "bigint"),
    (pa.types.is_int64, "bigint"),
    (pa.types.is_uint64, "numeric"),
    (pa.types.is_float16, "real"),
    (pa.types.is_float32, "real"),
    (pa.types.is_float64, "double precision"),
    (pa.types.is_decimal, "numeric"),
    (pa.types.is_date, "date"),
    (pa.types.is_time, "time"),
    (pa.types.is_duration, "interval"),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "text"),
    (_is_any_binary, "bytea"),
]


def postgres_type(field: pa.Field) -> str:
    """The column type a carried Arrow field gets; nested values go in as JSON. Times keep
    PostgreSQL's microseconds (see _rows)."""
    kind = field.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_timestamp(kind):
        return "timestamptz" if kind.tz else "timestamp"
    for check, name in _PG_TYPES:
        if check(kind):
            return name
    return "jsonb"


class PgvectorLoader:
    """Loads runs into one table of a PostgreSQL database that has (or may create) pgvector."""

    def __init__(
        self,
        dsn: str,
        table: str,
        index_memory: str = INDEX_BUILD_MEMORY,
        rollback: bool = False,
        max_deleted_share: float = MAX_DELETED_SHARE,
    ) -> None:
        import psycopg  # the loader's own dependency; the job does not need it
        import psycopg.adapt
        import psycopg.sql
        import psycopg.types.json

        *self._schema, self._relname = table.split(".")
        if len(self._schema) > 1 or not all(part and part == part.strip() for part in (*self._schema, self._relname)):
            raise LoadError(f"--table {table}: give a table, or a schema and a table (schema.table)")
        if '"' in table:
            raise LoadError(f"--table {table}: names are taken exactly as written, case included: no quotes")
        if self._schema and _system_schema(self._schema[0]) or self._relname == LOADS_TABLE:
            raise LoadError(
                f"--table {table}: a table of the loader's own or in a system schema (pg_temp's would be gone "
                "when the load ends)"
            )
        if len(self._relname.encode()) > TABLE_NAME_BYTES:
            raise LoadError(
                f"--table {table}: a name of {len(self._relname.encode())} bytes; at most {TABLE_NAME_BYTES}, so "
                f"that the loader's index {self._relname}_embedding_hnsw, cut at PostgreSQL's 63, keeps a name of "
                "its own"
            )
        self._psycopg = psycopg
        self._sql = psycopg.sql
        self._dsn = dsn
        self._table = table
        self._index_memory = index_memory
        self._rollback = rollback
        self._max_deleted_share = max_deleted_share
        self._index = f"{self._relname}_embedding_hnsw"  # created in the table's schema

    def load(self, run: Run) -> str:
        """Apply the run's change set, or replace the table's content with its snapshot; returns what was done.
        PostgreSQL's refusals become a LoadError naming the table: the transaction rolled back."""
        PgVectors.of(run)  # vectors the index cannot take are refused before connecting
        try:
            return self._load(run)
        except self._psycopg.Error as e:
            raise self._refused(e, e.diag.context) from e

    def _refused(self, e: psycopg.Error, context: str | None) -> LoadError:
        """PostgreSQL's refusal `e` naming the table (the transaction rolled back), with its detail and `context`
        (where it stopped)."""
        diag = e.diag  # its fields are None when no server answered
        told = [" ".join(part.split()) for part in (diag.message_detail, context) if part]
        message = " ".join((diag.message_primary or str(e)).split()) + "".join(f" ({part})" for part in told)
        return LoadError(f"{self._table}: PostgreSQL refused the load, the table is as it was: {message}")

    def _load(self, run: Run) -> str:
        sql = self._sql
        schema = _file_schema(run)
        long = [name for name in schema.names if len(name.encode()) > NAME_BYTES]
        if long:  # PostgreSQL would cut it, and the next load would not find the column it made
            raise LoadError(
                f"{run.path}: column {long[0]!r} has a name of {len(long[0].encode())} bytes; PostgreSQL keeps "
                f"at most {NAME_BYTES}: rename it in the input, or leave it out of --carry_columns"
            )
        with self._psycopg.connect(self._dsn) as connection:
            self._check_index_memory(connection)
            with connection.transaction():  # one loader at a time sets up: two first loads would race
                connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [LOADS_TABLE])
                loads = self._bookkeeping(connection)
            with connection.transaction():
                table = self._resolve(connection)
                connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [table])
                spellings = [table, self._table]  # older versions recorded the name as given
                if connection.execute(
                    "SELECT to_regclass(%s) = to_regclass(%s)",
                    [sql.Identifier(self._relname).as_string(connection), self._name.as_string(connection)],
                ).fetchone()[0]:
                    spellings.append(self._relname)
                row = connection.execute(
                    sql.SQL(
                        "SELECT table_name, run_id, run_started_at > %s::timestamptz, columns, relid FROM {} "
                        "WHERE table_name = ANY(%s) ORDER BY table_name = %s DESC LIMIT 1"
                    ).format(loads),
                    [run.started_at, spellings, table],
                ).fetchone()
                name = self._name.as_string(connection)
                relid = connection.execute("SELECT to_regclass(%s)::oid", [name]).fetchone()[0]
                # What was recorded of a table since dropped (and perhaps created again) says nothing of this one.
                loaded = row if row and relid is not None and row[4] in (None, relid) else None
                index = self._index_operator_class(connection)
                index_right = index == PgVectors.of(run).operator_class
                if loaded and loaded[1] == run.run_id and index_right:
                    return f"{self._table} already holds run {run.run_id}: nothing to do"
                if loaded and loaded[2] and not self._rollback:
                    raise LoadError(
                        f"{self._table} holds run {loaded[1]}, which started after run {run.run_id} "
                        f"({run.started_at}): loading it would take the table back; pass --rollback if that is meant"
                    )
                if loaded and not index_right:  # said once the load is not refused
                    _LOG.warning(
                        "loading the snapshot: the table's HNSW index %s",
                        f"is {index}, not {PgVectors.of(run).operator_class}" if index else "is gone",
                    )
                found = self._columns(connection)
                # The columns the loader wrote last time; versions before 2026-12-03 recorded none: then its own.
                written = (LOADER_COLUMNS if loaded[3] is None else loaded[3]) if loaded else ()
                shape = self._shape(connection, schema, run, found, written) if found else None
                # A change set sets the run's columns: any other the last run wrote would keep stale values.
                # (Versions before 2026-12-03 kept no columns: then the table must have only the run's.)
                last = loaded[3] if loaded and loaded[3] is not None else list(found)
                changes = (
                    changes_since(run, loaded[1], schema)
                    if loaded and shape == [] and sorted(last) == sorted(schema.names) and index_right
                    else None
                )
                if changes:
                    done = self._apply_changes(connection, schema, changes, found)
                else:
                    done = self._replace(connection, schema, run, shape, found)
                if row and row[0] != table:
                    connection.execute(sql.SQL("DELETE FROM {} WHERE table_name = %s").format(loads), [row[0]])
                connection.execute(
                    sql.SQL(
                        "INSERT INTO {} (table_name, run_id, run_started_at, columns, relid) "
                        "VALUES (%s, %s, %s, %s, to_regclass(%s)::oid) "
                        "ON CONFLICT (table_name) DO UPDATE SET run_id = excluded.run_id, "
                        "run_started_at = excluded.run_started_at, columns = excluded.columns, "
                        "relid = excluded.relid, loaded_at = now()"
                    ).format(loads),
                    [table, run.run_id, run.started_at, schema.names, name],
                )
        return f"{self._table}: {done}"

    def _held_ids(self, connection, run: Run, found: dict[str, str]) -> int:
        """The ids the table holds: its rows, or its distinct ids where it holds passages."""
        id_name = run.manifest["columns"]["id"]
        counted = "*"
        if CHUNK_COLUMN in found and id_name in found:
            counted = self._sql.SQL("DISTINCT {}").format(self._sql.Identifier(id_name))
        return connection.execute(self._sql.SQL("SELECT count({}) FROM {}").format(counted, self._name)).fetchone()[0]

    def _ids_gone(self, connection, schema: pa.Schema, run: Run, held_type: str) -> tuple[int, str]:
        """The ids the table holds (its id column of `held_type`) that the run's snapshot lacks, counted before
        it is emptied, and a caveat for the guard's refusal. The run's ids go into a temporary table, compared by
        value where both id types are one (numeric 1.5 is 1.50) or exact numbers (bigint 1 is numeric 1.00), or
        one is a float and the other an exact number (bigint 1 is double precision 1.0; see FLOAT_INTEGERS),
        else as text (a run may retype the id column: integer 1 is text '1'). The caveat names both types, and
        the float ids no exact number equals, or where compared as text (the same id may differ: a date and a
        timestamp of its day) how to convert the table's column."""
        sql, started = self._sql, time.monotonic()
        id_field = schema.field(run.manifest["columns"]["id"])
        ids, id_column = sql.Identifier("embedding_job_ids"), sql.Identifier(id_field.name)
        run_type = self._types(connection, pa.schema([id_field]), run)[id_field.name]
        connection.execute(
            sql.SQL("CREATE TEMP TABLE {} ({} {}) ON COMMIT DROP").format(ids, id_column, sql.SQL(run_type))
        )
        self._copy(connection, ids, pa.schema([id_field]), run, "embeddings")
        connection.execute(sql.SQL("ANALYZE {}").format(ids))
        held_kind = held_type.split("(")[0]
        floats = [kind for kind in (held_kind, run_type) if kind in FLOAT_INTEGERS]
        exact = [kind for kind in (held_kind, run_type) if kind in EXACT_NUMBERS]
        whole = floats[0] if len(floats) == len(exact) == 1 else None  # a float type compared with an exact one
        by_value = held_type == run_type or len(exact) == 2 or whole is not None

        def value(side: str, kind: str) -> Composable:
            """The id compared (of table `side`): a float beside exact numbers as the integer it holds exactly,
            null where it holds none."""
            column = sql.Identifier(side, id_field.name)
            if not by_value:
                return column + sql.SQL("::text")
            if kind != whole:
                return column
            return sql.SQL("CASE WHEN {0} = trunc({0}) AND abs({0}) < {1} THEN {0}::bigint END").format(
                column, FLOAT_INTEGERS[whole]
            )

        gone = connection.execute(
            sql.SQL(
                "SELECT count(DISTINCT t.{}) FROM {} AS t WHERE NOT EXISTS (SELECT FROM {} AS d WHERE {} = {})"
            ).format(id_column, self._name, ids, value("d", run_type), value("t", held_kind))
        ).fetchone()[0]
        _LOG.info("counted the %d ids the snapshot deletes in %.1fs", gone, time.monotonic() - started)
        types = f"the table's id column {id_field.name!r} is {held_type}, the run's {run_type}"
        if whole:
            table, whose, others = (self._name, "table's", "run's") if held_kind == whole else (ids, "run's", "table's")
            unmatched, least = connection.execute(
                sql.SQL("SELECT count(*), min(f.{}) FROM {} AS f WHERE {} IS NULL").format(
                    id_column, table, value("f", whole)
                )
            ).fetchone()
            bound = FLOAT_INTEGERS[whole]
            return gone, f". The ids were compared by value: {types}" + (
                f"; {unmatched} of the {whose} ids, the least {least!r}, match none of the {others}: a {whole} id "
                f"equals an integer one only where it is a whole number below 2^{bound.bit_length() - 1} ({bound}) "
                f"in magnitude, beyond which {whole} cannot tell neighbouring integers apart"
                if unmatched
                else ""
            )
        if by_value:
            return gone, ""
        alter = sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE ").format(self._name, id_column).as_string(connection)
        return gone, (
            f". The ids were compared as text: {types}; if they are the same ids, convert the column "
            f"({alter}{run_type}) and load the run again"
        )

    def _check_deletions(self, run: Run, deleted: int, held: int, caveat: str = "") -> None:
        """Refuse a run that deletes more than max_deleted_share of the `held` ids (documents: passages
        resized or cut do not count), adding `caveat` on how they were counted; raised inside the load's
        transaction, so nothing changes."""
        check_deletions(
            run, deleted, held, self._max_deleted_share, f"{self._table}: ", "the table's", "the table is as it was",
            "load", caveat,
        )  # fmt: skip

    def _bookkeeping(self, connection):
        """`embedding_job_loads` (found through search_path), created or given its newer columns only
        where it lacks them: a loader that does not own it needs SELECT, INSERT, UPDATE and DELETE."""
        sql = self._sql
        schema = _schema_of(connection, sql, None, LOADS_TABLE)
        if schema is None:
            raise LoadError(f"no schema in the search_path to keep {LOADS_TABLE} in")
        loads = sql.Identifier(schema, LOADS_TABLE)
        connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        present = {
            name
            for (name,) in connection.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0",
                [loads.as_string(connection)],
            )
        }
        added = [sql.SQL(column) for column in LOADS_ADDED if column.split()[0] not in present]
        if not present:
            columns = [sql.SQL("table_name text PRIMARY KEY, run_id text NOT NULL"), *added]
            columns.append(sql.SQL("loaded_at timestamptz NOT NULL DEFAULT now()"))
            connection.execute(sql.SQL("CREATE TABLE {} ({})").format(loads, sql.SQL(", ").join(columns)))
        elif added:  # once, by the table's owner
            additions = sql.SQL(", ").join(sql.SQL("ADD COLUMN ") + column for column in added)
            connection.execute(sql.SQL("ALTER TABLE {} ").format(loads) + additions)
        return loads

    def _resolve(self, connection) -> str:
        """Set `_name` to the table's schema-qualified name and return it as recorded (`schema.table`)."""
        schema = _schema_of(connection, self._sql, self._schema[0] if self._schema else None, self._relname)
        if schema is None:
            raise LoadError(f"--table {self._table}: no schema in the search_path to create it in")
        if _system_schema(schema):
            raise LoadError(f"--table {self._table}: found in or to be created in PostgreSQL's schema {schema}")
        self._name = self._sql.Identifier(schema, self._relname)
        self._qualified_index = self._sql.Identifier(schema, self._index)
        self._check_case(connection)
        return f"{schema}.{self._relname}"

    def _check_case(self, connection) -> None:
        """Refuse a --table of capitals naming no table where SQL's spelling of it (unquoted, folded to lower
        case) names one: the loader would create a second table beside the one SQL's queries read."""
        parts = [*self._schema, self._relname]
        folded = [part.translate(_ASCII_LOWER) for part in parts]
        if folded == parts:
            return
        exact, lower = (self._sql.Identifier(*names).as_string(connection) for names in (parts, folded))
        if connection.execute(
            "SELECT to_regclass(%s) IS NULL AND to_regclass(%s) IS NOT NULL", [exact, lower]
        ).fetchone()[0]:
            raise LoadError(
                f"--table {self._table}: no such table, but there is {'.'.join(folded)}, which is what SQL reads "
                f"{self._table} as (unquoted names fold to lower case); --table takes a name exactly as written: "
                f"pass --table {'.'.join(folded)}"
            )

    def _index_operator_class(self, connection) -> str | None:
        """The operator class of the table's HNSW index; None when it has none (dropped by hand).
        A change set keeps the index, so one of another distance, or none, means a full load."""
        row = connection.execute(
            "SELECT c.opcname FROM pg_index i JOIN pg_opclass c ON c.oid = i.indclass[0] "
            "WHERE i.indexrelid = to_regclass(%s)",
            [self._qualified_index.as_string(connection)],
        ).fetchone()
        return row[0] if row else None

    def _index_options(self, connection) -> list[tuple[str, str]]:
        """The storage parameters of the table's HNSW index (`m`, `ef_construction`) as someone tuned them,
        so that a snapshot, which rebuilds the index, builds it as it was rather than with pgvector's defaults."""
        row = connection.execute(
            "SELECT c.reloptions FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
            "WHERE c.oid = to_regclass(%s) AND a.amname = 'hnsw'",
            [self._qualified_index.as_string(connection)],
        ).fetchone()
        return [tuple(option.split("=", 1)) for option in (row[0] or [])] if row else []

    def _columns(self, connection) -> dict[str, str]:
        """The table's columns and their types, modifiers included; empty when there is no table."""
        return dict(
            connection.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                [self._name.as_string(connection)],
            ).fetchall()
        )

    def _shape(self, connection, schema: pa.Schema, run: Run, found: dict[str, str], written: Sequence[str]) -> list:
        """How the table must change to take the run's rows; none when it has the run's columns (and
        perhaps others) of the loader's types and the run's primary key. Missing columns are added, types
        changed; columns the loader wrote last (`written`) that the run lacks are dropped; a
        former key column that stays loses its NOT NULL; the key is replaced."""
        sql = self._sql
        primary = connection.execute(  # its name, its columns, and those COPY would leave null
            "SELECT c.conname, array_agg(a.attname::text ORDER BY k.n), coalesce(array_agg(a.attname::text) "
            "FILTER (WHERE NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''), '{}') "
            "FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY AS k(attnum, n), pg_attribute a "
            "WHERE c.conrelid = to_regclass(%s) AND c.contype = 'p' AND a.attrelid = c.conrelid "
            "AND a.attnum = k.attnum GROUP BY c.conname",
            [self._name.as_string(connection)],
        ).fetchone()
        key, (name, old_key, unfilled) = _key(run), primary or (None, [], [])
        wanted = self._types(connection, schema, run)
        required = {*key, *_own_columns(run)}  # NOT NULL: the key and the loader's own
        dropped = [column for column in found if column not in wanted and column in written]
        changes = []
        if old_key != key:
            if name:
                changes.append(sql.SQL("DROP CONSTRAINT {}").format(sql.Identifier(name)))
            changes += [
                sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(sql.Identifier(column))
                for column in unfilled
                if column not in required and column not in dropped
            ]
        changes += [sql.SQL("DROP COLUMN {}").format(sql.Identifier(column)) for column in dropped]
        for column, kind in wanted.items():
            if column not in found:
                null = " NOT NULL" if column in required else ""
                changes.append(sql.SQL("ADD COLUMN {} {}").format(sql.Identifier(column), sql.SQL(kind + null)))
            elif found[column] != kind:  # the table is empty by then
                changes.append(
                    sql.SQL("ALTER COLUMN {} TYPE {} USING NULL").format(sql.Identifier(column), sql.SQL(kind))
                )
        if old_key != key:
            changes.append(sql.SQL("ADD PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key))))
        return changes

    def _types(self, connection, schema: pa.Schema, run: Run) -> dict[str, str]:
        """Each of the run's columns and its PostgreSQL type as format_type spells it."""
        declared = _table_columns(run, schema)
        spelled = connection.execute(
            "SELECT format_type(t::regtype, NULL) FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
            [list(declared.values())],
        ).fetchall()
        return {
            name: kind if name == EMBEDDING_COLUMN else spelling
            for (name, kind), (spelling,) in zip(declared.items(), spelled, strict=True)
        }

    def _replace(self, connection, schema: pa.Schema, run: Run, shape: list | None, found: dict[str, str]) -> str:
        """The snapshot in place of the table's rows. A table that exists is kept (its owner, privileges,
        policies, views, triggers and other indexes stay), emptied, then altered where it must be; the
        HNSW index is built once the rows are in. It deletes the ids the table holds that the run lacks."""
        sql = self._sql
        started = time.monotonic()
        options: list[tuple[str, str]] = []
        if shape is None:
            how = "table created"
            connection.execute(self._create(connection, schema, run))
        else:
            options = self._index_options(connection)
            held = self._held_ids(connection, run, found)
            if held:  # a table without the run's id column loses all it holds
                id_name = run.manifest["columns"]["id"]
                gone, caveat = (
                    self._ids_gone(connection, schema, run, found[id_name]) if id_name in found else (held, "")
                )
                self._check_deletions(run, gone, held, caveat)
            how = "table refilled"
            connection.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(self._qualified_index))
            connection.execute(sql.SQL("TRUNCATE {}").format(self._name))
            if shape:
                alter = sql.SQL("ALTER TABLE {} ").format(self._name) + sql.SQL(", ").join(shape)
                connection.execute(alter)
                how += "; " + ", ".join(change.as_string(connection) for change in shape)
        rows = self._copy(connection, self._name, schema, run, "embeddings")
        _LOG.info("copied %d rows in %.1fs", rows, time.monotonic() - started)
        started = time.monotonic()
        connection.execute("SELECT set_config('maintenance_work_mem', %s, true)", [self._index_memory])
        vectors = PgVectors.of(run)
        create = sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} {})").format(
            sql.Identifier(self._index), self._name, sql.Identifier(EMBEDDING_COLUMN), sql.SQL(vectors.operator_class)
        )
        if options:
            create += sql.SQL(" WITH ({})").format(
                sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in options)
            )
        self._build_index(connection, create)
        _LOG.info(
            "built the HNSW index (%s%s: queries use it ordering by %s %s the query vector) in %.1fs",
            vectors.operator_class,
            "".join(f", {k}={v}" for k, v in options),
            EMBEDDING_COLUMN,
            vectors.distance[1],
            time.monotonic() - started,
        )
        return f"{rows} rows of run {run.run_id} loaded ({how})"

    def _check_index_memory(self, connection) -> None:
        """A --index_memory the server does not take (not a size, past its 2 TB) is refused before anything
        is done: it was refused only as the index was to be built, after the whole COPY."""
        try:
            with connection.transaction():  # set for this check's transaction only
                connection.execute("SELECT set_config('maintenance_work_mem', %s, true)", [self._index_memory])
        except self._psycopg.errors.InvalidParameterValue as e:
            said = "; ".join(part for part in (e.diag.message_primary, e.diag.message_hint) if part)
            raise LoadError(
                f"--index_memory {self._index_memory}: PostgreSQL does not take it as maintenance_work_mem ({said}); "
                "nothing was loaded"
            ) from e

    def _build_index(self, connection, create: Composable) -> None:
        """Builds the index, in parallel where PostgreSQL plans maintenance workers. Their shared memory, as
        large as --index_memory, is a file in the server's /dev/shm, which a container caps (Docker: 64 MB by
        default): where it cannot grow, the index is built again without them, slower, and a warning says so."""
        try:
            with connection.transaction():  # a savepoint: the rows copied stay
                connection.execute(create)
        except (self._psycopg.errors.DiskFull, self._psycopg.errors.OutOfMemory) as e:
            if "shared memory segment" not in str(e):
                raise
            _LOG.warning(
                "the server could not give the parallel HNSW build its shared memory (%s); building it without "
                "parallel workers, slower. Give the server's /dev/shm more than --index_memory %s (Docker: "
                "--shm-size), or lower --index_memory",
                str(e).strip(),
                self._index_memory,
            )
            connection.execute("SELECT set_config('max_parallel_maintenance_workers', '0', true)")
            connection.execute(create)

    def _apply_changes(self, connection, schema: pa.Schema, runs: list[Run], found: dict[str, str]) -> str:
        """The change sets of `runs`, in order, each through temporary tables: only those rows are touched.
        The ids they delete, checked once for all, are those of their deletes that the table held before and
        no row has once they are applied: a night refused alone may be undone by the next, and ids a skipped
        night added and the next deleted were never the table's."""
        sql = self._sql
        run = runs[-1]
        held = self._held_ids(connection, run, found) if any(r.manifest["changes"]["deletes"] for r in runs) else 0
        key = _key(run)
        upserts, deletes = sql.Identifier("embedding_job_upserts"), sql.Identifier("embedding_job_deletes")
        gone = sql.Identifier("embedding_job_gone")  # the deletes of every run, of ids the table held
        keys = sql.SQL(", ").join(map(sql.Identifier, key))
        columns = sql.SQL(", ").join(sql.Identifier(f.name) for f in schema)
        for temporary, names in ((upserts, columns), (deletes, keys), (gone, keys)):  # the table may have more
            connection.execute(
                sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                    temporary, names, self._name
                )
            )
        matches = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier("t", name), sql.Identifier("d", name)) for name in key
        )
        updates = sql.SQL(", ").join(
            sql.SQL("{} = excluded.{}").format(sql.Identifier(f.name), sql.Identifier(f.name))
            for f in schema
            if f.name not in key
        )
        id_column = sql.Identifier(run.manifest["columns"]["id"])
        held_id = sql.SQL("EXISTS (SELECT FROM {} AS t WHERE t.{} = d.{})").format(self._name, id_column, id_column)
        deleted_keys = pa.schema([schema.field(name) for name in key])
        for each in runs if held else ():  # before any is applied: what the table held then
            connection.execute(sql.SQL("TRUNCATE {}").format(deletes))
            self._copy(connection, deletes, deleted_keys, each, "deletes")
            connection.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} AS d WHERE {}").format(gone, deletes, held_id))
        done = []
        for each in runs:
            started = time.monotonic()
            connection.execute(sql.SQL("TRUNCATE {}, {}").format(upserts, deletes))
            self._copy(connection, upserts, schema, each, "upserts")
            self._copy(connection, deletes, deleted_keys, each, "deletes")
            _LOG.info("copied the change set of run %s in %.1fs", each.run_id, time.monotonic() - started)
            started = time.monotonic()
            try:  # the table's own constraints (its owner's) may refuse a row: name the night it came from
                deleted = connection.execute(
                    sql.SQL("DELETE FROM {} AS t USING {} AS d WHERE {}").format(self._name, deletes, matches)
                ).rowcount
                upserted = connection.execute(
                    sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) DO UPDATE SET {}").format(
                        self._name, columns, columns, upserts, keys, updates
                    )
                ).rowcount
            except self._psycopg.Error as e:
                where = FileSystems.join(each.path, CHANGES_DIR)
                raise self._refused(e, f"applying the change set of run {each.run_id}, in {where}") from e
            _LOG.info("applied the change set (index maintained) in %.1fs", time.monotonic() - started)
            done.append(f"change set of run {each.run_id} applied: {upserted} rows upserted, {deleted} deleted")
        if held:
            lost = connection.execute(
                sql.SQL("SELECT count(DISTINCT d.{}) FROM {} AS d WHERE NOT {}").format(id_column, gone, held_id)
            ).fetchone()[0]
            self._check_deletions(run, lost, held)
        return "; ".join(done)

    def _create(self, connection, schema: pa.Schema, run: Run):
        """CREATE TABLE for the run's columns: NOT NULL the key and the loader's own, carried ones nullable."""
        sql = self._sql
        key = _key(run)
        columns = [
            sql.SQL("{} {}").format(
                sql.Identifier(name), sql.SQL(kind + (" NOT NULL" if name in {*key, *_own_columns(run)} else ""))
            )
            for name, kind in self._types(connection, schema, run).items()
        ]
        columns.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key))))
        return sql.SQL("CREATE TABLE {} ({})").format(self._name, sql.SQL(", ").join(columns))

    def _copy(self, connection, name, schema: pa.Schema, run: Run, kind: str) -> int:
        """The run's files of `kind` into table `name` (columns `schema`, the only ones read), with COPY in binary
        format."""
        sql = self._sql
        vectors = PgVectors.of(run)
        vector_oid = connection.execute("SELECT %s::regtype::oid", [vectors.type_name]).fetchone()[0]
        _register_vector(self._psycopg, connection, vector_oid)
        types = [vector_oid if f.name == EMBEDDING_COLUMN else postgres_type(f) for f in schema]
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            name, sql.SQL(", ").join(sql.Identifier(f.name) for f in schema)
        )
        rows, id_name = 0, run.manifest["columns"]["id"]
        starts: list[int] = []  # the COPY line of each file's first row
        try:
            with connection.cursor() as cursor, cursor.copy(statement) as copy:
                copy.set_types(types)
                for path in run.files[kind]:
                    starts.append(rows + 1)
                    with run.reading(path), _open(path) as f:
                        for batch in pq.ParquetFile(f).iter_batches(batch_size=COPY_ROWS, columns=schema.names):
                            _check_id_bytes(batch, id_name, path)
                            _check_text(batch, id_name, path)
                            for row in _rows(batch, schema, vectors, self._psycopg, id_name, path):
                                copy.write_row(row)
                            rows += batch.num_rows
                    run.check_unchanged(path, rows - starts[-1] + 1)
        except self._psycopg.Error as e:
            raise self._refused(e, _copied_row(e, run.files[kind], starts, id_name)) from e
        return rows


def _copied_row(e: psycopg.Error, paths: list[str], starts: list[int], id_name: str) -> str | None:
    """PostgreSQL's context of refusal `e` with its COPY line (which counts the rows of all the files streamed,
    and means nothing to the person) as the file, its row, the id and, where PostgreSQL names it, the column."""
    context = e.diag.context
    stopped = _COPY_LINE.search(context or "")
    # The last file begun by then (one without rows begins where the next does); none without a row's line.
    at = bisect.bisect(starts, int(stopped[1])) - 1 if stopped else -1
    if at < 0:
        return context
    with _open(paths[at]) as f:
        ids = pq.ParquetFile(f).read(columns=[id_name]).column(id_name)
    row = int(stopped[1]) - starts[at]
    if not 0 <= row < len(ids):  # past the rows sent: PostgreSQL's own words
        return context
    column = stopped[2] or e.diag.column_name
    where = f"in {paths[at]}: row {row + 1}, id {_shown(ids, row)}{f', column {column!r}' if column else ''}"
    return context[: stopped.start()] + where + context[stopped.end() :]


def _system_schema(name: str) -> bool:
    """PostgreSQL reserves names starting pg_ for its own schemas (pg_catalog, pg_toast, pg_temp_N)."""
    return name.startswith("pg_")


def _schema_of(connection, sql, schema: str | None, name: str) -> str | None:
    """The schema of relation `name` as PostgreSQL finds it (through search_path when `schema` is None),
    or where CREATE TABLE would put it when there is none yet."""
    given = sql.Identifier(*([schema] if schema else []), name).as_string(connection)
    return connection.execute(
        "SELECT coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(%s)), %s, current_schema())",
        [given, schema],
    ).fetchone()[0]


class _VectorBytes(bytes):
    """A vector already in its PostgreSQL type's binary form (`PgVectors.encode`)."""


def _register_vector(psycopg, connection, oid: int) -> None:
    """Vectors go to COPY as the bytes `_vector_column` made, under pgvector's type oid."""

    class VectorDumper(psycopg.adapt.Dumper):
        format = psycopg.pq.Format.BINARY

        def dump(self, obj: bytes) -> bytes:
            return obj

    VectorDumper.oid = oid
    connection.adapters.register_dumper(_VectorBytes, VectorDumper)


@dataclass(frozen=True)
class PgVectors:
    """How a run's vectors are held in PostgreSQL: float32 as pgvector's `vector`, float16 as
    `halfvec`, int8 and uint8 dequantized (their calibrated levels' midpoints) as `halfvec`,
    binary as `bit` (HNSW by Hamming distance); the others are indexed by the distance of the
    similarity the model was trained for (runs before 2026-12-03 recorded none: cosine)."""

    quantizer: Quantizer
    dim: int
    similarity: str = "cosine"

    @classmethod
    def of(cls, run: Run) -> PgVectors:
        """The run's vectors, refused when pgvector's HNSW index cannot take their dimension."""
        block = run.manifest["model"]
        vectors = cls(Quantizer.from_block(block), block["dim"], block.get("similarity", "cosine"))
        limit = HNSW_DIMENSIONS[vectors.type_name]
        if vectors.dim > limit:
            most = HNSW_DIMENSIONS
            raise LoadError(
                f"{run.path}: {vectors.dim}-dimensional {vectors.quantizer.dtype} vectors, stored as "
                f"{vectors.type_name}, of which pgvector's HNSW index takes up to {limit} dimensions; run the job "
                f"with --truncate_dim (at most {most['vector']} in float32, {most['halfvec']} with --vector_dtype "
                f"float16), or with --vector_dtype binary (up to {most['bit']})"
            )
        return vectors

    @property
    def type_name(self) -> str:
        return {"float32": "vector", "binary": "bit"}.get(self.quantizer.dtype, "halfvec")

    @property
    def column_type(self) -> str:
        return f"{self.type_name}({self.dim})"

    @property
    def operator_class(self) -> str:
        return f"{self.type_name}_{self.distance[0]}_ops"

    @property
    def distance(self) -> tuple[str, str]:
        """The index's distance and the operator a query orders by."""
        return ("hamming", "<~>") if self.type_name == "bit" else DISTANCES[self.similarity]

    def encode(self, column: pa.FixedSizeListArray) -> list[bytes]:
        """Each vector in its type's binary form: pgvector's (dim, 0, big-endian floats) or a bit
        string's (length in bits, then the bytes)."""
        values = column.flatten().to_numpy().reshape(len(column), -1)
        if self.type_name == "bit":
            header = struct.pack(">i", self.dim)
            return [header + row.tobytes() for row in values]
        if self.quantizer.dtype in CALIBRATED:
            values = self.quantizer.dequantize(values, self.dim)
        header = struct.pack(">HH", self.dim, 0)
        return [header + row.tobytes() for row in values.astype(">f4" if self.type_name == "vector" else ">f2")]


def _rows(batch: pa.RecordBatch, schema: pa.Schema, vectors: PgVectors, psycopg, id_name: str, path: str) -> Iterator:
    columns = []
    for field in schema:
        column, where = batch.column(field.name), f"{path}: column {field.name!r}"
        if field.name == EMBEDDING_COLUMN:
            columns.append([_VectorBytes(v) for v in vectors.encode(column)])
        elif postgres_type(field) == "jsonb":  # JSON text made in Arrow: NaN as null, times and decimals as text
            texts = _python_values(column, json_values, batch.column(id_name), where)
            _check_json(texts, batch.column(id_name), where)
            columns.append([None if v is None else psycopg.types.json.Jsonb(v, dumps=str) for v in texts])
        else:
            column = _in_microseconds(column, field.name == id_name, where)
            columns.append(_python_values(column, lambda values: values, batch.column(id_name), where))
    return zip(*columns, strict=True)


def _python_values(column: pa.Array, convert: Callable[[pa.Array], pa.Array], ids: pa.Array, where: str) -> list:
    """`convert(column)`'s values in Python. Python's dates and times end at year 9999 (PostgreSQL's do not):
    a value beyond is refused naming its id, not left to a traceback that names nothing."""
    try:
        return convert(column).to_pylist()
    except (OverflowError, ValueError) as e:
        for at in range(len(column)):
            try:
                convert(column.slice(at, 1)).to_pylist()
            except (OverflowError, ValueError):
                raise LoadError(
                    f"{where} of id {_shown(ids, at)} holds a value Python cannot convert ({e}), such as a date "
                    "or time beyond the years 1 to 9999; correct it upstream"
                ) from e
        raise


def _shown(ids: pa.Array, at: int) -> str:
    """The id at `at` as Python writes it, or as Arrow does where Python cannot hold it (a time past 9999)."""
    try:
        return repr(ids[at].as_py())
    except (OverflowError, ValueError):
        return ids.slice(at, 1).cast(pa.string())[0].as_py()


def _in_microseconds(column: pa.Array, exact: bool, where: str) -> pa.Array:
    """Nanosecond times (pandas' timestamps) in PostgreSQL's microseconds: carried values are cut to
    them; ids must not be, since two would become one key."""
    kind = column.type
    if getattr(kind, "unit", None) != "ns":
        return column
    if pa.types.is_timestamp(kind):
        target = pa.timestamp("us", kind.tz)
    else:
        target = pa.time64("us") if pa.types.is_time(kind) else pa.duration("us")
    try:
        return column.cast(target, safe=exact)
    except pa.ArrowInvalid as e:
        raise LoadError(f"{where}: an id with nanoseconds, which PostgreSQL's microseconds cannot keep ({e})") from e


def _check_text(batch: pa.RecordBatch, id_name: str, path: str) -> None:
    """Refuse a NUL character in a text column, naming the column and id: PostgreSQL's text cannot hold one."""
    for field in batch.schema:
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            continue
        column = batch.column(field.name)
        column = column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
        found = pc.match_substring(column, "\x00")
        if pc.any(found).as_py():
            at = pc.index(found, True).as_py()
            raise LoadError(
                f"{path}: column {field.name!r} of id {batch.column(id_name)[at].as_py()!r} holds a NUL character, "
                "which PostgreSQL's text cannot store; remove it upstream"
            )


def _check_json(texts: list[str | None], ids: pa.Array, where: str) -> None:
    """Refuse a NUL character in a value going to jsonb (JSON text writes it `\\u0000`), naming its id:
    PostgreSQL's jsonb cannot hold one, and its refusal speaks of an unsupported Unicode escape."""
    for at, text in enumerate(texts):
        if text is not None and "\\u0000" in text and _JSON_NUL.search(text):
            raise LoadError(
                f"{where} of id {_shown(ids, at)} holds a NUL character, which PostgreSQL's jsonb cannot store; "
                "remove it upstream"
            )


def _check_id_bytes(batch: pa.RecordBatch, id_name: str, path: str) -> None:
    """Refuse an id longer than ID_BYTES, naming it, before PostgreSQL refuses its key anonymously: strings
    and binaries of any width (the job writes binary_view ids as large_binary), dictionaries of them too."""
    ids = batch.column(id_name)
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if not any(check(ids.type) for check in (pa.types.is_string, pa.types.is_large_string, _is_any_binary)):
        return
    lengths = pc.binary_length(ids)
    longest = pc.max(lengths).as_py()
    if longest is not None and longest > ID_BYTES:
        value = ids[pc.index(lengths, longest).as_py()].as_py()
        raise LoadError(
            f"{path}: id {value[:40]!r}... in column {id_name} is {longest} bytes; a PostgreSQL primary key "
            f"takes ids of at most {ID_BYTES} bytes"
        )


def changes_since(run: Run, held_run_id: str, schema: pa.Schema) -> list[Run] | None:
    """The runs whose change sets take a table holding run `held_run_id` to `run`, oldest first: `run`
    alone when its change set is against that run, else also those of the nights whose loads were
    skipped, at most MAX_SKIPPED_LOADS, found through each manifest's `previous` path, their change
    files checked. None when they do not lead there (no change set, a run gone, moved, damaged or
    out of reach, other columns): then the snapshot is loaded."""
    skipped: list[Run] = []
    manifest = run.manifest
    while (changes := manifest.get("changes")) and changes["previous_run_id"] != held_run_id:
        path = (manifest.get("previous") or {}).get("path")
        if not path:
            return None
        if len(skipped) == MAX_SKIPPED_LOADS:
            _LOG.warning(
                "loading the snapshot: the table holds run %s, which the change sets of the %d runs before this one "
                "do not lead back to (loads skipped longer, or a run not among this one's earlier nights)",
                held_run_id,
                len(skipped),
            )
            return None
        try:  # any storage's error: a path out of the loader's reach is a reason for the snapshot, not a failure
            manifest = read_manifest(path)
            if manifest["run_id"] != changes["previous_run_id"]:
                _LOG.warning(
                    "loading the snapshot: %s now holds run %s, not %s",
                    path,
                    manifest["run_id"],
                    changes["previous_run_id"],
                )
                return None
            if not manifest.get("changes"):
                _LOG.info(
                    "loading the snapshot: the table holds run %s, and the change sets lead back only to run %s, "
                    "which has none (its load skipped, or the table's run not among this one's earlier nights)",
                    held_run_id,
                    manifest["run_id"],
                )
                return None
            skipped.insert(0, _checked_run(path, manifest, CHANGE_KINDS))
            same = _table_columns(skipped[0], _file_schema(skipped[0], "upserts")) == _table_columns(run, schema)
            same = same and _key(skipped[0]) == _key(run)
        except Exception as e:
            _LOG.warning(
                "loading the snapshot: the table holds run %s, and an earlier night of this run (its --previous, "
                "or theirs) cannot be read: %s",
                held_run_id,
                e,
            )
            return None
        if not same:
            _LOG.warning(
                "loading the snapshot: the table holds run %s, and run %s, an earlier night of this run (its "
                "--previous, or theirs), has other columns or column types than this one",
                held_run_id,
                manifest["run_id"],
            )
            return None
    if not changes:  # the run's own
        return None
    if skipped:
        _LOG.info(
            "the table holds run %s: first the change sets of %d skipped load%s",
            held_run_id,
            len(skipped),
            "" if len(skipped) == 1 else "s",
        )
    return [*skipped, run]


def _file_schema(run: Run, kind: str = "embeddings") -> pa.Schema:
    if not run.files[kind]:
        raise LoadError(f"{run.path}: the run has no {kind} files")
    with run.reading(run.files[kind][0]), _open(run.files[kind][0]) as f:
        return pq.ParquetFile(f).schema_arrow


def _table_columns(run: Run, schema: pa.Schema) -> dict[str, str]:
    """The run's columns and the PostgreSQL types they load as: Arrow types stored as one (`string` and
    `large_string`, a dictionary and its values, timestamps of any unit) are one, so a night whose writer
    switched between them still passes its change set on."""
    vectors = PgVectors.of(run).column_type
    return {f.name: vectors if f.name == EMBEDDING_COLUMN else postgres_type(f) for f in schema}


def _key(run: Run) -> list[str]:
    """The table's primary key: the id column, and with passages the chunk (without passages a
    `chunk` column is a carried one)."""
    return [run.manifest["columns"]["id"], *([CHUNK_COLUMN] if has_passages(run.manifest["model"]) else [])]


def _own_columns(run: Run) -> tuple[str, ...]:
    """The loader's columns that the run writes itself (without passages, columns named as the
    passage ones are carried, and may hold nulls)."""
    return LOADER_COLUMNS if has_passages(run.manifest["model"]) else (EMBEDDING_COLUMN, CONTENT_HASH_COLUMN)


def share(value: str) -> float:
    """A share from 0 to 1 (argparse names the type by this function in its refusal)."""
    number = float(value)
    if not 0 <= number <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"{value}: a share from 0 to 1")
    return number


def ids_held_before(manifest: dict) -> tuple[str, int] | None:
    """The run's --previous run and the ids it held, from that run's manifest alone (a manifest of an older
    version, without file checks, has the counts too); None without one, or, with a warning, where that
    manifest cannot be read. Every valid row of a run is an id of its snapshot: embedded, reused or cut
    into passages."""
    before = (manifest.get("previous") or {}).get("path")
    if not before:
        return None
    try:
        with _open(FileSystems.join(before, MANIFEST)) as f:
            theirs = json.load(f)
        return before, theirs["rows_in"] - theirs["rows_rejected"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        _LOG.warning("cannot count the ids the previous run %s held, so not its deletions: %r", before, e)
        return None


def check_deletions(
    run: Run, deleted: int, held: int, max_share: float, where: str, whose: str, kept: str, verb: str, caveat: str = ""
) -> None:
    """Refuse a run that deletes more than `max_share` of the `held` ids of `whose` (a fault upstream,
    such as shards written with empty texts, makes a run that finishes and deletes them all), naming
    what it read and rejected, and saying that `kept` is so."""
    if held and deleted > max_share * held:
        rejected = run.manifest.get("rejected_by_reason") or {}
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(rejected.items()))
        raise LoadError(
            f"{where}run {run.run_id} would delete {deleted} of {whose} {held} ids ({deleted / held:.0%}, more than "
            f"--max_deleted_share {max_share:g}); {kept}. The run read {run.manifest['rows_in']} rows and rejected "
            f"{run.manifest['rows_rejected']}{f' ({reasons})' if reasons else ''}: check its input, or {verb} it with "
            f"--max_deleted_share 1 if those deletions are meant{caveat}"
        )


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    targets = parser.add_subparsers(dest="target", required=True)
    pgvector = targets.add_parser("pgvector", help="PostgreSQL with the pgvector extension")
    pgvector.add_argument("--dsn", required=True, help="libpq connection string or URI")
    pgvector.add_argument("--table", required=True, help="table to load into (schema.table allowed)")
    pgvector.add_argument(
        "--index_memory",
        default=INDEX_BUILD_MEMORY,
        help=f"maintenance_work_mem while the HNSW index is built (default: {INDEX_BUILD_MEMORY})",
    )
    pgvector.add_argument(
        "--rollback",
        action="store_true",
        help="load a run that started before the one the table holds (otherwise refused: a late retry "
        "of an older night would take the table back)",
    )
    pgvector.add_argument(
        "--max_deleted_share",
        type=share,
        default=MAX_DELETED_SHARE,
        help="refuse a load that would delete more than this share of the ids the table holds, leaving it "
        "unchanged (a fault upstream makes a run that deletes them all); 1 allows any "
        f"(default: {MAX_DELETED_SHARE:g})",
    )
    pgvector.add_argument("run_dir", help="a finished run's output directory (local or gs://)")
    pinecone = targets.add_parser("pinecone", help="files for Pinecone's bulk import from object storage")
    pinecone.add_argument("--output", required=True, help="folder for the import files (one per new namespace)")
    pinecone.add_argument(
        "--max_deleted_share",
        type=share,
        default=MAX_DELETED_SHARE,
        help="refuse to export a run that deleted more than this share of the ids its --previous run held "
        "(a namespace imported from it would lack them), writing nothing; 1 allows any "
        f"(default: {MAX_DELETED_SHARE:g})",
    )
    pinecone.add_argument("run_dir", help="a finished run's output directory (local or gs://)")
    return parser


def export_pinecone(run: Run, output: str, max_deleted_share: float = MAX_DELETED_SHARE) -> str:
    """The run's snapshot as Pinecone import files; returns what was written and the index metric to
    import them into (the one the model was trained for). Each night's goes to a new namespace that
    readers switch to, so a run that deleted most of its previous run's ids is refused, as a table load
    would be."""
    if WILDCARD.search(output):
        # The folder's earlier export is found by matching `output/**`: a `?` in it matched another folder
        # (`ns?1` matched `ns 1`), whose export was then removed as this one's earlier files.
        raise LoadError(
            f"--output {output!r} holds a glob character (* ? or [): the export finds the folder's earlier "
            "files by a pattern, which would match other folders' too; choose a folder name without them"
        )
    similarity = run.manifest["model"].get("similarity", "cosine")
    if similarity not in PINECONE_METRICS:
        raise LoadError(
            f"{run.path}: the model compares vectors by {similarity} distance, which no Pinecone index metric "
            f"({', '.join(PINECONE_METRICS.values())}) computes"
        )
    if previous := ids_held_before(run.manifest):
        before, held = previous
        check_deletions(
            run, run.manifest.get("rows_deleted", 0), held, max_deleted_share, f"{output}: ",
            f"the previous run's ({before})", "nothing was exported", "export",
        )  # fmt: skip
    try:
        export = write_import_files(
            run.files["embeddings"], output, run.manifest["columns"]["id"], run.manifest["model"], run.reading,
            run.check_unchanged,
        )  # fmt: skip
    except OSError as e:  # Beam's BeamIOError too: a file where the folder should be, no permission
        raise LoadError(f"--output {output}: cannot write there ({e})") from e
    earlier = f" (replacing an earlier export; {export.removed} of its files removed)" if export.removed else ""
    left_out = "; ".join(
        f"{count} with {reason} ({', '.join(map(repr, ids))}{', ...' if count > len(ids) else ''})"
        for reason, (count, ids) in export.left_out.items()
    )
    metric = PINECONE_METRICS[similarity]
    return (
        f"{output}: {export.rows} vectors of run {run.run_id} to import into an index of metric {metric}{earlier}"
        + (f"; left out, as Pinecone refuses them: {left_out}" if left_out else "")
    )


def main(argv: list[str] | None = None) -> int:
    args = command_line().parse_args(argv)
    configure_logging()
    try:
        run = read_run(args.run_dir)
        if args.target == "pgvector":
            loader = PgvectorLoader(args.dsn, args.table, args.index_memory, args.rollback, args.max_deleted_share)
            print(loader.load(run))
        else:
            print(export_pinecone(run, args.output, args.max_deleted_share))
    except (LoadError, ValueError) as e:
        print(error_line(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
