"""Schemas of the embeddings and rejects files, and the metadata they carry.

Loaders rely on this contract: the id column keeps its input name and type,
carried columns follow it, and `embedding` is fixed_size_list<float32>[dim].
"""

from __future__ import annotations

import json

import pyarrow as pa

from schemas.inputs import InputColumns

EMBEDDING_COLUMN = "embedding"
METADATA_KEY = b"embedding_job"  # Parquet key-value metadata: JSON of the model block


def embeddings_schema(columns: InputColumns, dim: int, model_block: dict) -> pa.Schema:
    fields = [columns.id, *columns.carry, pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), dim), nullable=False)]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(model_block).encode()})


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
