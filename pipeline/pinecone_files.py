"""A run's vectors as Pinecone bulk-import files, converted file by file in Arrow.

Pinecone imports Parquet files with `id` (string), `values` (list of float32) and `metadata`
(a JSON object per row). Each vector's Pinecone id is its id as text, with passages
`<id>#<chunk>`; its metadata holds every other column the job wrote (the id, passage
offsets, carried columns, content hash) in the forms Pinecone's metadata takes: strings,
numbers, booleans and lists of strings, nulls left out (Pinecone takes no null values); an integer or
decimal a 64-bit float does not hold exactly (Pinecone's numbers are such floats) goes as its text.
Compact vectors are read back as float32 (int8 and uint8 as their levels' midpoints);
binary vectors have no Pinecone form and are refused. Pinecone imports into new namespaces
only, so these files hold a whole snapshot; a change set goes through its upsert and delete
APIs instead (from the run's `changes/` files).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from encoder.quantize import Quantizer
from pipeline.json_text import hex_text, is_bytes, json_key, json_values, quoted, uuid_text
from schemas.inputs import is_json, is_uuid, type_family
from schemas.outputs import CHUNK_COLUMN, EMBEDDING_COLUMN, has_passages

READ_ROWS = 8192
# The files this module writes: each export's own names (its start, UTC, and a random tag), so that a new export
# never overwrites an earlier one's files before it has written all of its own; earlier versions wrote part-NNNNN.
PART_NAME = re.compile(r"part-(\d{8}T\d{6}Z-[0-9a-f]{4}-)?\d{5,}\.parquet")
# Records Pinecone refuses (its limits: docs.pinecone.io, "Database limits"; a vector of zeros is refused by name).
MAX_METADATA_BYTES = 40_960
MAX_ID_CHARACTERS = 512
SHOWN_IDS = 3  # ids named per reason a record is left out
# Pinecone's metadata numbers are 64-bit floats: integers past this (either sign) lose their last digits there.
FLOAT_EXACT_INTEGER = 2**53
FLOAT_EXACT_DIGITS = 15  # decimals of at most this many digits come back from a 64-bit float as written
IMPORT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("values", pa.list_(pa.float32()), nullable=False),
        pa.field("metadata", pa.string()),
    ]
)


@dataclass
class Export:
    """What an export wrote: vectors, earlier files removed, and the records left out (Pinecone would refuse
    them) by reason, each reason's count and first ids."""

    rows: int = 0
    removed: int = 0
    left_out: dict[str, tuple[int, list[str]]] = field(default_factory=dict)

    def leave_out(self, reason: str, ids: pa.Array) -> None:
        count, shown = self.left_out.get(reason, (0, []))
        self.left_out[reason] = (count + len(ids), shown + ids[: SHOWN_IDS - len(shown)].to_pylist())


def metadata_values(column: pa.Array) -> pa.Array:
    """A column's values as JSON text in the forms Pinecone's metadata takes, null where the key is left out.
    A list of strings leaves out its null items; other nested values (structs, maps, lists of other values,
    a JSON column's objects and arrays) go as their JSON text, in a string."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return metadata_values(column.dictionary_decode())
    if is_json(kind):
        return _json_metadata(column)
    listed = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if listed and type_family(kind.value_type) == "string":
        return json_values(_without_null_items(column))
    if pa.types.is_nested(kind):
        return quoted(json_values(column))
    if _may_outgrow_a_float(kind):  # a number a 64-bit float would change goes as its text
        return pc.if_else(_float_exact(column), json_values(column), quoted(column.cast(pa.string())))
    return json_values(column)


def _may_outgrow_a_float(kind: pa.DataType) -> bool:
    """64-bit integers and decimals of more digits than a 64-bit float holds: Pinecone stores numbers as such."""
    if pa.types.is_decimal(kind):
        return kind.precision > FLOAT_EXACT_DIGITS
    return pa.types.is_integer(kind) and kind.bit_width == 64


def _float_exact(numbers: pa.Array) -> pa.Array:
    """Whether each number is held exactly by a 64-bit float, as Pinecone stores it: a snowflake id (about
    2^60) would come back with other last digits, and match no filter on its value."""
    kind = numbers.type
    if pa.types.is_decimal(kind):
        return pc.equal(pc.cast(pc.cast(numbers, pa.float64()), kind, safe=False), numbers)
    exact = pc.less_equal(numbers, pa.scalar(FLOAT_EXACT_INTEGER, kind))
    if pa.types.is_signed_integer(kind):
        exact = pc.and_(exact, pc.greater_equal(numbers, pa.scalar(-FLOAT_EXACT_INTEGER, kind)))
    return exact


def _without_null_items(lists: pa.Array) -> pa.Array:
    """The lists without their null items (Pinecone's lists hold strings only)."""
    items = pc.list_flatten(lists)
    kept = items.is_valid()
    parents = pc.list_parent_indices(lists).filter(kept).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(np.bincount(parents, minlength=len(lists)))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), items.filter(kept), mask=lists.is_null())


def _json_metadata(column: pa.Array) -> pa.Array:
    """A JSON column's values (checked to parse): strings, numbers, booleans and lists of strings as they are,
    a list of strings without its nulls, objects and other arrays as their text in a string; JSON's null left out."""
    texts = []
    for text in column.storage.cast(pa.string()).to_pylist():
        value = None if text is None else json.loads(text)
        if value is None or isinstance(value, str | int | float | bool):
            texts.append(None if value is None else text)
        elif isinstance(value, list) and all(item is None or isinstance(item, str) for item in value):
            texts.append(json.dumps([item for item in value if item is not None], ensure_ascii=False))
        else:
            texts.append(json.dumps(text, ensure_ascii=False))
    return pa.array(texts, pa.string())


def metadata_json(table: pa.Table, names: list[str]) -> pa.Array:
    """A JSON object per row of the columns `names`, without the keys whose value is null."""
    members = [
        pc.binary_join_element_wise(json_key(name), metadata_values(table.column(name).combine_chunks()), ":")
        for name in names
    ]
    joined = (
        pc.binary_join_element_wise(*members, ",", null_handling="skip") if members else pa.array([""] * table.num_rows)
    )
    return pc.binary_join_element_wise("{", joined, "}", "")


def pinecone_ids(table: pa.Table, id_column: str, passages: bool) -> pa.Array:
    """The id as text, and with passages `id#chunk` (without passages a `chunk` column is carried metadata):
    bytes as lowercase hex and UUIDs in their dashed form, as the metadata writes them (bytes need not be
    UTF-8), other extension types as their storage's text."""
    ids = table.column(id_column).combine_chunks()
    ids = ids.dictionary_decode() if pa.types.is_dictionary(ids.type) else ids
    if is_uuid(ids.type):
        ids = uuid_text(ids)
    elif isinstance(ids.type, pa.BaseExtensionType):
        ids = ids.storage
    if is_bytes(ids.type):
        ids = hex_text(ids)
    ids = ids.cast(pa.string())
    if not passages:
        return ids
    return pc.binary_join_element_wise(ids, table.column(CHUNK_COLUMN).combine_chunks().cast(pa.string()), "#")


def import_table(
    table: pa.Table, id_column: str, quantizer: Quantizer, dim: int, passages: bool, export: Export | None = None
) -> pa.Table:
    """Rows of an embeddings file in Pinecone's import layout, less those Pinecone refuses, which `export`
    counts as left out: a vector of zeros (a static model's, for a text of no known token), an id empty,
    holding a NUL character or over MAX_ID_CHARACTERS (Pinecone's identifier limits), metadata over
    MAX_METADATA_BYTES (a long text carried)."""
    for name in table.column_names:
        if is_json(table.schema.field(name).type):
            _check_parses(table, name, id_column)
    stored = table.column(EMBEDDING_COLUMN).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = quantizer.dequantize(stored.reshape(table.num_rows, quantizer.width(dim)), dim).astype(np.float32)
    offsets = pa.array(np.arange(table.num_rows + 1, dtype=np.int32) * dim)
    values = pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))
    names = [name for name in table.column_names if name != EMBEDDING_COLUMN]
    ids, metadata = pinecone_ids(table, id_column, passages), metadata_json(table, names)
    imported = pa.Table.from_arrays([ids, values, metadata], schema=IMPORT_SCHEMA)
    refused = np.zeros(table.num_rows, bool)
    for reason, found in (
        ("a vector of zeros", ~vectors.any(axis=1)),
        ("an empty id", pc.equal(ids, "").to_numpy(zero_copy_only=False)),
        ("an id holding a NUL character", pc.match_substring(ids, "\x00").to_numpy(zero_copy_only=False)),
        (f"an id over {MAX_ID_CHARACTERS} characters", pc.utf8_length(ids).to_numpy() > MAX_ID_CHARACTERS),
        (f"metadata over {MAX_METADATA_BYTES:,} bytes", pc.binary_length(metadata).to_numpy() > MAX_METADATA_BYTES),
    ):
        found &= ~refused
        if found.any():
            refused |= found
            if export is not None:
                export.leave_out(reason, ids.filter(found))
    return imported.filter(~refused) if refused.any() else imported


def _check_parses(table: pa.Table, name: str, id_column: str) -> None:
    """Pinecone takes the metadata as written: a JSON column's value that does not parse as JSON (NaN
    and infinities included) is refused naming its id. (PostgreSQL's jsonb checks its own, naming the row.)"""

    def no_constants(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    for at, value in enumerate(table.column(name).combine_chunks().storage.to_pylist()):
        try:
            if value is not None:
                json.loads(value, parse_constant=no_constants)
        except ValueError as e:
            raise ValueError(
                f"column {name!r} of id {table.column(id_column)[at].as_py()!r}: {value[:40]!r} is not JSON ({e})"
            ) from None


def _batches(path: str) -> Iterator[pa.Table]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=READ_ROWS):
            yield pa.Table.from_batches([batch])


def _write(tables: Iterator[pa.Table], schema: pa.Schema, path: str) -> int:
    """The rows written to `path`, made only once a row comes (the reused rows' file of a night that reused
    none holds no rows, and Pinecone would get a file of no vectors); a file left part-written by a failure
    is removed (Pinecone would import it)."""
    rows = 0
    try:
        with contextlib.ExitStack() as stack:
            writer = None
            for table in tables:
                if not table.num_rows:
                    continue
                if writer is None:
                    f = stack.enter_context(FileSystems.create(path))
                    writer = stack.enter_context(pq.ParquetWriter(f, schema, compression="zstd"))
                writer.write_table(table)
                rows += table.num_rows
    except BaseException:
        with contextlib.suppress(Exception):
            FileSystems.delete([path])
        raise
    return rows


def write_import_files(
    files: list[str],
    output: str,
    id_column: str,
    model_block: dict,
    reading: Callable[[str], contextlib.AbstractContextManager],
    read_whole: Callable[[str], None],
) -> Export:
    """Each embeddings file holding a vector Pinecone takes as `output/part-<this export>-NNNNN.parquet` in the
    import layout. A folder an earlier export wrote is reused: once every file of this one is written, the
    earlier one's are removed, since Pinecone imports every file of the folder; an export that fails removes
    its own files and leaves the earlier one's as they were. Each file is read within `reading(path)`, and
    `read_whole(path)` called once it is read, to fail the export if it changed since it was checked."""
    quantizer, passages = Quantizer.from_block(model_block), has_passages(model_block)
    if quantizer.dtype == "binary":
        raise ValueError("binary vectors have no Pinecone form: run with another --vector_dtype")
    folder = output.rstrip("/") or output  # `ns//` lists nothing: its earlier export would stay beside this one
    everything = FileSystems.join(folder, "**")  # files in subfolders too: Pinecone imports those as well
    # Not the objects named as folders (`ns/`, as the Cloud Console makes one): they hold nothing to import.
    found = [m.path for m in FileSystems.match([everything])[0].metadata_list if not m.path.endswith("/")]
    inside = len(everything.removesuffix("**"))  # where a name below the folder starts, as the match spells it
    others = sorted(path for path in found if not PART_NAME.fullmatch(path[inside:]))
    if others:
        raise ValueError(
            f"--output {output}: holds {len(others)} file(s) no earlier export of this command wrote "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); Pinecone would import them too: "
            "pass an empty folder, or one only this command wrote"
        )
    export = Export()

    def import_tables(path: str) -> Iterator[pa.Table]:
        for table in _batches(path):
            try:
                yield import_table(table, id_column, quantizer, model_block["dim"], passages, export)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None

    name = f"part-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}"
    written = []
    try:
        for number, path in enumerate(files):
            part = FileSystems.join(folder, f"{name}-{number:05d}.parquet")
            with reading(path):
                rows = _write(import_tables(path), IMPORT_SCHEMA, part)
            if rows:
                written.append(part)
                export.rows += rows
            read_whole(path)
    except BaseException:
        with contextlib.suppress(Exception):
            FileSystems.delete(written)
        raise
    if found:
        FileSystems.delete(sorted(found))
    export.removed = len(found)
    return export
