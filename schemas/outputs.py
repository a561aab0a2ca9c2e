"""Schemas of the embeddings and rejects files, and the metadata they carry.

Loaders rely on this contract: the id column keeps its input name and type;
with passages (--chunk_tokens), `chunk`, `char_start` and `char_end` follow it;
then the carried columns, `content_hash` (sha256 hex of the text as embedded,
prompt included) and `embedding`, fixed_size_list<float32>[dim] (with --vector_dtype,
float16, int8 or uint8 values, or the sign bits packed into uint8, dim / 8 of them, rounded up).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from encoder.quantize import Quantizer
from schemas.inputs import InputColumns, InputError, one_family, quoted

EMBEDDING_COLUMN = "embedding"
CONTENT_HASH_COLUMN = "content_hash"
METADATA_KEY = b"embedding_job"  # Parquet key-value metadata: JSON of the model block


CHUNK_COLUMN = "chunk"
# Where each passage lies in its document's text: Unicode code points, as Python slices.
PASSAGE_FIELDS = (
    pa.field(CHUNK_COLUMN, pa.int32(), nullable=False),
    pa.field("char_start", pa.int64(), nullable=False),
    pa.field("char_end", pa.int64(), nullable=False),
)


def has_passages(model_block: dict) -> bool:
    """Whether a run's rows are passages: its model block then records how texts were split. Only
    then is `chunk` the job's column and part of each row's key; without passages an input column
    of that name is carried like any other."""
    return "chunk_tokens" in model_block


def _key_and_carried(columns: InputColumns, passages: bool) -> list[pa.Field]:
    return [
        columns.id,
        *(PASSAGE_FIELDS if passages else ()),
        *columns.carry,
        pa.field(CONTENT_HASH_COLUMN, pa.string(), nullable=False),
    ]


def restated_columns(columns: InputColumns, passages: bool) -> list[str]:
    """The written columns that may change while the text, and so the vector, does not: a reused
    row whose values in these differ from the previous run's is an upsert all the same."""
    offsets = [f.name for f in PASSAGE_FIELDS[1:]] if passages else []
    return [*offsets, *(f.name for f in columns.carry if f.name != columns.text)]


def deletes_schema(columns: InputColumns, passages: bool) -> pa.Schema:
    """The change set's deletes: the ids gone since the previous run, and with passages the (id, chunk) keys."""
    return pa.schema([columns.id, *(PASSAGE_FIELDS[:1] if passages else ())])


def units_schema(columns: InputColumns, passages: bool) -> pa.Schema:
    """What is embedded, one row per passage (or per input row without passages): the embeddings
    files' columns but the vector, then the text to embed unless it is carried anyway."""
    fields = _key_and_carried(columns, passages)
    if columns.text not in {f.name for f in columns.carry}:
        fields.append(pa.field(columns.text, pa.string()))
    return pa.schema(fields)


# The Arrow type of the vector's values for each --vector_dtype; binary packs 8 dimensions a byte.
VALUE_TYPES = {
    "float32": pa.float32(),
    "float16": pa.float16(),
    "int8": pa.int8(),
    "uint8": pa.uint8(),
    "binary": pa.uint8(),
}


VECTOR_LAYOUTS = ("fixed", "list")  # fixed_size_list<value>[width], or list<value> for importers that refuse it


def vector_type(model_block: dict) -> pa.DataType:
    quantizer = Quantizer.from_block(model_block)
    if model_block.get("vector_layout", "fixed") == "list":
        return pa.list_(VALUE_TYPES[quantizer.dtype])
    return pa.list_(VALUE_TYPES[quantizer.dtype], quantizer.width(model_block["dim"]))


def vector_array(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """Vectors (rows x width, already of the values' type) as an Arrow array of `vector_type`."""
    flat = pa.array(values.reshape(-1), kind.value_type)
    if pa.types.is_fixed_size_list(kind):
        return pa.FixedSizeListArray.from_arrays(flat, kind.list_size)
    return pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int32) * values.shape[1]), flat)


def embeddings_schema(columns: InputColumns, model_block: dict, passages: bool) -> pa.Schema:
    fields = [
        *_key_and_carried(columns, passages),
        pa.field(EMBEDDING_COLUMN, vector_type(model_block), nullable=False),
    ]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(model_block).encode()})


def written_columns(passages: bool) -> set[str]:
    """The columns the job writes of its own beside the id and the carried ones."""
    return {CONTENT_HASH_COLUMN, EMBEDDING_COLUMN, *(f.name for f in PASSAGE_FIELDS if passages)}


def check_column_names(columns: InputColumns, passages: bool) -> None:
    """An input column may not share its name with one the job writes: the files would hold it twice,
    which pandas and pyarrow refuse to read. The id is also written to the rejects, beside their own
    columns; renaming either there would have a reader looking one up by name get the other."""
    written = written_columns(passages)
    roles = {"--id_column": [columns.id.name], "--text_column": [columns.text]}
    roles["--carry_columns"] = [f.name for f in columns.carry]
    for role, names in roles.items():
        clash = [name for name in names if name in written]
        if clash:
            raise InputError(
                f"{role} {quoted(clash)}: the job writes a column of that name; "
                f"names it writes: {quoted(sorted(written))}"
            )
    rejects = rejects_schema(columns).names[1:]
    if columns.id.name in rejects:
        raise InputError(
            f"--id_column {columns.id.name!r}: the rejects files write a column of that name beside the id "
            f"({quoted(rejects)}); rename the id column in the input"
        )


def content_hashes(prompt: str, texts: pa.Array) -> pa.Array:
    """sha256 hex of each text exactly as the model gets it, prompt included.

    Read from the Arrow buffers: no text is copied into Python, however large.
    """
    width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    _, offsets, data = texts.buffers()
    ends = np.frombuffer(offsets, width)[texts.offset : texts.offset + len(texts) + 1].tolist()
    data = memoryview(data if data is not None else b"")
    seed = hashlib.sha256(prompt.encode())
    digests = []
    for start, end in zip(ends[:-1], ends[1:], strict=True):
        digest = seed.copy()
        digest.update(data[start:end])
        digests.append(digest.hexdigest())
    return pa.array(digests, pa.string())


def _same_values(found: pa.DataType, expected: pa.DataType) -> bool:
    """Vectors of either layout with the same values' type (the join casts one to the other)."""
    lists = (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) for kind in (found, expected))
    if not all(lists) or found.value_type != expected.value_type:
        return False
    sizes = [kind.list_size for kind in (found, expected) if pa.types.is_fixed_size_list(kind)]
    return len(set(sizes)) <= 1


def check_previous_file(schema: pa.Schema, path: str, expected: pa.Schema, names: list[str]) -> dict[str, pa.DataType]:
    """The columns `names` of a previous run's embeddings file must have the types this run writes,
    or types of their family (yesterday's shards were read as string, today's as large_string),
    which are returned to be cast as read; vectors: the same values, in either layout."""
    casts = {}
    for name in names:
        if schema.get_field_index(name) < 0:
            raise InputError(f"{path}: column {name!r} not found; is this an output of this job?")
        found, wanted = schema.field(name).type, expected.field(name).type
        if found == wanted or name == EMBEDDING_COLUMN and _same_values(found, wanted):
            continue
        if name == EMBEDDING_COLUMN or not one_family(found, wanted):
            raise InputError(f"{path}: column {name!r} is {found}, but this run writes {wanted}")
        casts[name] = wanted
    return casts


def rejects_schema(columns: InputColumns) -> pa.Schema:
    return pa.schema(
        [
            columns.id,
            pa.field("source_file", pa.string(), nullable=False),
            pa.field("row_number", pa.int64(), nullable=False),  # 0-based row within source_file
            pa.field("reason", pa.string(), nullable=False),
            # invalid_utf8's input column (id, text or carried): a carried column's bytes are not written out
            pa.field("column", pa.string()),
        ]
    )


def rejects_batch(
    schema: pa.Schema,
    ids: pa.Array,
    sources: pa.Array,
    rows: pa.Array,
    reasons: pa.Array,
    columns: pa.Array | None = None,
) -> pa.RecordBatch:
    """Rejected rows in `schema` (rejects_schema's), one helper for every step that rejects; `columns`
    names each row's column where its reason is about one of several (invalid_utf8), else null."""
    named = pa.nulls(len(ids), pa.string()) if columns is None else columns
    return pa.RecordBatch.from_arrays([ids, sources, rows, reasons, named], schema=schema)


def read_model_block(schema: pa.Schema) -> dict:
    """The model block an embeddings file was written with."""
    return json.loads(schema.metadata[METADATA_KEY])
