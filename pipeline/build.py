"""Assemble the job's graph: read -> validate -> embed -> write, then the manifest."""

from __future__ import annotations

import apache_beam as beam

from pipeline.plan import JobPlan
from schemas.outputs import embeddings_schema, rejects_schema
from transforms.embed import EmbedRows
from transforms.read import ReadShards
from transforms.validate import REJECTED, STATS, ValidateRows
from transforms.write import WriteBatches, WriteManifest


def build_pipeline(pipeline: beam.Pipeline, plan: JobPlan) -> None:
    rejected_schema = rejects_schema(plan.columns)
    output_schema = embeddings_schema(plan.columns, plan.model_block["dim"], plan.model_block)
    rows = (
        pipeline
        | "Read" >> ReadShards(plan.patterns, plan.columns, plan.rows_per_batch)
        | "Validate" >> ValidateRows(plan.columns, rejected_schema)
    )
    embedded = rows.valid | "Embed" >> EmbedRows(
        plan.handler, plan.columns, output_schema, plan.rows_per_batch, plan.progress_interval
    )
    embedding_files = embedded.embeddings | "WriteEmbeddings" >> WriteBatches(plan.output, "embeddings", output_schema)
    rejected_files = rows[REJECTED] | "WriteRejected" >> WriteBatches(plan.output, "rejected", rejected_schema)
    (
        (rows[STATS], embedded[STATS])
        | "MergeStats" >> beam.Flatten()
        | "Manifest" >> WriteManifest(plan.output, plan.header, embedding_files, rejected_files)
    )
