"""Schemas of the embeddings and rejects files, and the metadata they carry.

Loaders rely on this contract: the id column keeps its input name and type,
carried columns follow it, then `content_hash` (sha256 hex of the text as
embedded, prompt included) and `embedding`, fixed_size_list<float32>[dim].
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from schemas.inputs import InputColumns, InputError

EMBEDDING_COLUMN = "embedding"
CONTENT_HASH_COLUMN = "content_hash"
METADATA_KEY = b"embedding_job"  # Parquet key-value metadata: JSON of the model block


def embeddings_schema(columns: InputColumns, dim: int, model_block: dict) -> pa.Schema:
    fields = [
        columns.id,
        *columns.carry,
        pa.field(CONTENT_HASH_COLUMN, pa.string(), nullable=False),
        pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), dim), nullable=False),
    ]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(model_block).encode()})


def content_hash(text: str) -> str:
    """Of the text exactly as the model gets it, prompt included."""
    return hashlib.sha256(text.encode()).hexdigest()


def check_previous_file(schema: pa.Schema, path: str, expected: pa.Schema, names: list[str]) -> None:
    """The columns `names` of a previous run's embeddings file must have the types this run writes."""
    for name in names:
        if schema.get_field_index(name) < 0:
            raise InputError(f"{path}: column {name!r} not found; is this an output of this job?")
        if schema.field(name).type != expected.field(name).type:
            raise InputError(
                f"{path}: column {name!r} is {schema.field(name).type}, but this run writes {expected.field(name).type}"
            )


def rejects_schema(columns: InputColumns) -> pa.Schema:
    return pa.schema(
        [
            columns.id,
            pa.field("source_file", pa.string(), nullable=False),
            pa.field("row_number", pa.int64(), nullable=False),  # 0-based row within source_file
            pa.field("reason", pa.string(), nullable=False),
        ]
    )


def read_model_block(schema: pa.Schema) -> dict:
    """The model block an embeddings file was written with."""
    return json.loads(schema.metadata[METADATA_KEY])
