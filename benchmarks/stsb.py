"""STS Benchmark from the job's own Parquet output: proof that tokenisation, pooling and
normalisation are right end to end.

    python -m benchmarks.stsb ../shared/data/stsb-test.tsv

Writes the unique sentences to Parquet, runs the job on them, and prints the Spearman
correlation (x100) between the cosine of each pair's vectors and the gold score.
all-MiniLM-L6-v2's published figure is 82.03.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.run import run


def read_pairs(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Gold score, sentence 1, sentence 2 (columns 5-7, 1-based); extra trailing columns ignored."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 7]
    return np.array([float(r[4]) for r in rows]), [r[5] for r in rows], [r[6] for r in rows]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks; tied values share the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts + 1) / 2)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv", type=Path, help="stsb-test.tsv (tab-separated, no header)")
    parser.add_argument("--model", help="model folder (default: the packaged all-MiniLM-L6-v2)")
    args = parser.parse_args()
    gold, first, second = read_pairs(args.tsv)
    sentences = sorted(set(first) | set(second))
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.table({"id": sentences, "text": sentences}), f"{tmp}/stsb.parquet")
        argv = ["--input", f"{tmp}/stsb.parquet", "--output", f"{tmp}/out"]
        manifest = run(argv + (["--model", args.model] if args.model else []))
        table = pq.read_table(sorted(Path(tmp, "out").glob("embeddings-*.parquet")))
    vectors = dict(zip(table["id"].to_pylist(), table["embedding"].to_numpy(zero_copy_only=False), strict=True))
    cosines = np.array([np.dot(vectors[a], vectors[b]) for a, b in zip(first, second, strict=True)])
    print(f"pairs: {len(gold)}, sentences embedded: {manifest['rows_embedded']} of {manifest['rows_in']}")
    print(f"Spearman x100 (cosine vs gold): {100 * spearman(cosines, gold):.2f}")


if __name__ == "__main__":
    main()
