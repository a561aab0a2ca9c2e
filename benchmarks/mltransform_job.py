"""Baseline (c): Beam's MLTransform with SentenceTransformerEmbeddings, Parquet to Parquet.

    python -m benchmarks.mltransform_job CORPUS_GLOB OUTPUT_DIR

What a user would otherwise write with Beam's own embedding transforms, run
on the same local runner as this job.
"""

from __future__ import annotations

import argparse
import tempfile

import apache_beam as beam
import pyarrow as pa
from apache_beam.ml.transforms.base import MLTransform
from apache_beam.ml.transforms.embeddings.huggingface import SentenceTransformerEmbeddings
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.model_store import default_model_path

SCHEMA = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32()))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("output")
    args = parser.parse_args()
    embeddings = SentenceTransformerEmbeddings(model_name=default_model_path(), columns=["text"])
    with (
        tempfile.TemporaryDirectory() as artifacts,
        beam.Pipeline(options=PipelineOptions(flags=[], runner="FnApiRunner")) as pipeline,
    ):
        (
            pipeline
            | "Read" >> beam.io.ReadFromParquet(args.corpus, columns=["id", "text"])
            | "Embed" >> MLTransform(write_artifact_location=artifacts).with_transform(embeddings)
            | "Rows" >> beam.Map(lambda row: {"id": row["id"], "embedding": list(row["text"])})
            | "Write" >> beam.io.WriteToParquet(f"{args.output}/embeddings", SCHEMA, file_name_suffix=".parquet")
        )


if __name__ == "__main__":
    main()
