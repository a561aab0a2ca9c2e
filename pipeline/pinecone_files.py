"""A run's vectors as Pinecone bulk-import files, converted file by file in Arrow.

Pinecone imports Parquet files with `id` (string), `values` (list of float32) and `metadata`
(a JSON object per row). Each vector's Pinecone id is its id as text, with passages
`<id>#<chunk>`; its metadata holds every other column the job wrote (the id, passage
offsets, carried columns, content hash), nulls left out (Pinecone takes no null values).
Compact vectors are read back as float32 (int8 and uint8 as their levels' midpoints);
binary vectors have no Pinecone form and are refused. Pinecone imports into new namespaces
only, so these files hold a whole snapshot; a change set goes through its upsert and delete
APIs instead (from the run's `changes/` files).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from encoder.quantize import Quantizer
from schemas.inputs import is_json, is_uuid, type_family
from schemas.outputs import CHUNK_COLUMN, EMBEDDING_COLUMN, has_passages

READ_ROWS = 8192
PART_NAME = re.compile(r"part-\d{5,}\.parquet")  # the files this module writes
IMPORT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("values", pa.list_(pa.float32()), nullable=False),
        pa.field("metadata", pa.string()),
    ]
)
# JSON escapes for the characters a JSON string may not hold as they are.
_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")] + [
    (chr(code), f"\\u{code:04x}") for code in range(32) if chr(code) not in "\n\r\t"
]


def _quoted(texts: pa.Array) -> pa.Array:
    for raw, escaped in _ESCAPES:
        if pc.any(pc.match_substring(texts, raw)).as_py():
            texts = pc.replace_substring(texts, raw, escaped)
    return pc.binary_join_element_wise('"', texts, '"', "")


def json_values(column: pa.Array) -> pa.Array:
    """Each value as JSON text, null where the value is null (or a float that JSON cannot hold). Bytes
    are lowercase hex (PostgreSQL's `encode(b, 'hex')`); maps with string keys are JSON objects, other
    maps lists of `[key, value]` pairs; nested values take their members' forms, in Arrow throughout."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return json_values(column.dictionary_decode())
    if is_uuid(kind):
        return pc.binary_join_element_wise('"', uuid_text(column), '"', "")
    if is_json(kind):  # JSON already (DuckDB checks it; PostgreSQL's jsonb does too, naming the row)
        return column.storage.cast(pa.string())
    if type_family(kind) == "string":
        return _quoted(column.cast(pa.string()))
    if _is_bytes(kind):
        return pc.binary_join_element_wise('"', _hex(column), '"', "")
    if pa.types.is_boolean(kind):
        return pc.if_else(column, "true", "false")
    if pa.types.is_integer(kind) or pa.types.is_decimal(kind):
        return column.cast(pa.string())
    if pa.types.is_floating(kind):
        return pc.if_else(pc.is_finite(column), column.cast(pa.string()), pa.scalar(None, pa.string()))
    if pa.types.is_duration(kind):  # seconds, exactly ("1.500000"): Arrow's text is a count of an unnamed unit
        return _quoted(_seconds(column.cast(pa.int64()), {"s": 0, "ms": 3, "us": 6, "ns": 9}[kind.unit]))
    if pa.types.is_temporal(kind):
        return _quoted(column.cast(pa.string()))
    if pa.types.is_struct(kind):
        members = [
            pc.binary_join_element_wise(_json_key(field.name), _member(child), ":")
            for field, child in zip(kind, column.flatten(), strict=True)
        ]
        text = (
            pc.binary_join_element_wise("{", pc.binary_join_element_wise(*members, ","), "}", "") if members else "{}"
        )
        return pc.if_else(column.is_valid(), text, pa.scalar(None, pa.string()))
    if pa.types.is_fixed_size_list(kind):
        return json_values(column.cast(pa.list_(kind.value_field)))
    if pa.types.is_map(kind):
        if type_family(kind.key_type) == "string":
            return _joined(
                column, pc.binary_join_element_wise(json_values(column.keys), _member(column.items), ":"), "{}"
            )
        pairs = pc.binary_join_element_wise("[", json_values(column.keys), ",", _member(column.items), "]", "")
        return _joined(column, pairs, "[]")
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _joined(column, _member(column.values), "[]")
    # Anything else (extension, union and view-list types): Python's JSON, one value at a time.
    texts = [
        None if value is None else json.dumps(_finite(value), default=_text, allow_nan=False)
        for value in column.to_pylist()
    ]
    return pa.array(texts, pa.string())


def _finite(value):
    """A nested value with NaN and infinities as None: JSON has no form for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _seconds(counts: pa.Array, scale: int) -> pa.Array:
    """Counts of 10**-scale seconds as decimal text, digit by digit from integers (a decimal's own
    text turns to exponents below a microsecond: "0E-9")."""
    magnitude = pc.abs(counts)
    whole = pc.divide(magnitude, 10**scale)  # integers: the quotient, truncated
    text = whole.cast(pa.string())
    if scale:
        fraction = pc.subtract(magnitude, pc.multiply(whole, 10**scale)).cast(pa.string())
        text = pc.binary_join_element_wise(text, pc.utf8_lpad(fraction, scale, "0"), ".")
    return pc.if_else(pc.less(counts, 0), pc.binary_join_element_wise("-", text, ""), text)


def _member(column: pa.Array) -> pa.Array:
    """A nested member's JSON text, `null` for a null; decimals as text, exactly (a JSON reader's number is a float)."""
    texts = _quoted(column.cast(pa.string())) if pa.types.is_decimal(column.type) else json_values(column)
    return pc.fill_null(texts, "null")


def _joined(column: pa.Array, elements: pa.Array, brackets: str) -> pa.Array:
    """Each list's (or map's) element texts joined between `brackets`, null where the list is."""
    lists = (pa.LargeListArray if pa.types.is_large_list(column.type) else pa.ListArray).from_arrays(
        column.offsets, elements
    )
    text = pc.binary_join_element_wise(brackets[0], pc.binary_join(lists, ","), brackets[1], "")
    return pc.if_else(column.is_valid(), text, pa.scalar(None, pa.string()))


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_UUID_GROUPS = ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))  # hex digits of each dash-separated group


def _json_key(name: str) -> str:
    return _quoted(pa.array([name])).to_pylist()[0]


def _hex(column: pa.Array) -> pa.Array:
    """Each value's bytes as lowercase hex digits, in numpy (Arrow has no kernel for it)."""
    column = column.cast(pa.large_binary())
    offsets = np.frombuffer(column.buffers()[1], np.int64)[column.offset : column.offset + len(column) + 1]
    data = column.buffers()[2]
    data = (np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8))[offsets[0] : offsets[-1]]
    digits = np.empty(2 * len(data), np.uint8)
    digits[0::2], digits[1::2] = _HEX_DIGITS[data >> 4], _HEX_DIGITS[data & 15]
    texts = pa.LargeStringArray.from_buffers(
        len(column), pa.py_buffer((offsets - offsets[0]) * 2), pa.py_buffer(digits)
    )
    return pc.if_else(column.is_valid(), texts, pa.scalar(None, pa.large_string())).cast(pa.string())


def uuid_text(column: pa.Array) -> pa.Array:
    """UUIDs in their 8-4-4-4-12 lowercase hex form, as PostgreSQL and Python write them."""
    digits = _hex(column.storage)
    parts = [pc.utf8_slice_codeunits(digits, start, stop) for start, stop in _UUID_GROUPS]
    return pc.binary_join_element_wise(*parts, "-")


def _is_bytes(kind: pa.DataType) -> bool:
    """Values written as lowercase hex: binaries of any width, fixed-size ones too."""
    return type_family(kind) == "binary" or pa.types.is_fixed_size_binary(kind)


def _text(value) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


def metadata_json(table: pa.Table, names: list[str]) -> pa.Array:
    """A JSON object per row of the columns `names`, without the keys whose value is null."""
    members = [
        pc.binary_join_element_wise(_json_key(name), json_values(table.column(name).combine_chunks()), ":")
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
    if _is_bytes(ids.type):
        ids = _hex(ids)
    ids = ids.cast(pa.string())
    if not passages:
        return ids
    return pc.binary_join_element_wise(ids, table.column(CHUNK_COLUMN).combine_chunks().cast(pa.string()), "#")


def import_table(table: pa.Table, id_column: str, quantizer: Quantizer, dim: int, passages: bool) -> pa.Table:
    """Rows of an embeddings file in Pinecone's import layout."""
    for name in table.column_names:
        if is_json(table.schema.field(name).type):
            _check_parses(table, name, id_column)
    stored = table.column(EMBEDDING_COLUMN).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = quantizer.dequantize(stored.reshape(table.num_rows, quantizer.width(dim)), dim).astype(np.float32)
    offsets = pa.array(np.arange(table.num_rows + 1, dtype=np.int32) * dim)
    values = pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))
    names = [name for name in table.column_names if name != EMBEDDING_COLUMN]
    return pa.Table.from_arrays(
        [pinecone_ids(table, id_column, passages), values, metadata_json(table, names)], schema=IMPORT_SCHEMA
    )


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


def _part(output: str, number: int) -> str:
    return FileSystems.join(output, f"part-{number:05d}.parquet")


def write_import_files(files: list[str], output: str, id_column: str, model_block: dict) -> tuple[int, int]:
    """Each embeddings file as `output/part-NNNNN.parquet` in the import layout. A folder an earlier
    export wrote is reused: its part files this one does not write are removed, since Pinecone imports
    every file of the folder. Returns the rows written and the earlier files removed."""
    quantizer, passages = Quantizer.from_block(model_block), has_passages(model_block)
    if quantizer.dtype == "binary":
        raise ValueError("binary vectors have no Pinecone form: run with another --vector_dtype")
    found = {
        m.path.rsplit("/", 1)[-1]: m.path for m in FileSystems.match([FileSystems.join(output, "*")])[0].metadata_list
    }
    others = sorted(path for name, path in found.items() if not PART_NAME.fullmatch(name))
    if others:
        raise ValueError(
            f"--output {output}: holds {len(others)} file(s) no earlier export of this command wrote "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); Pinecone would import them too: "
            "pass an empty folder, or one only this command wrote"
        )

    def import_tables(path: str) -> Iterator[pa.Table]:
        for table in _batches(path):
            try:
                yield import_table(table, id_column, quantizer, model_block["dim"], passages)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None

    rows, written = 0, set()
    for number, path in enumerate(files):
        part = _part(output, number)
        written_rows = _write(import_tables(path), IMPORT_SCHEMA, part)
        rows += written_rows
        if written_rows:
            written.add(part.rsplit("/", 1)[-1])
    earlier = sorted(path for name, path in found.items() if name not in written)
    if earlier:
        FileSystems.delete(earlier)
    return rows, len(earlier)
