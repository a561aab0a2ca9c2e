"""The job's machinery without the model's cost: a near-free model against the tokenizer alone, in one run.

A random 1-layer BERT with hidden size 32 and all-MiniLM-L6-v2's tokenizer
(samples.model_families, size "free") makes the model's work negligible, so the
job's rows/s is what reading, validating, hashing, joining, tokenising, padding
and writing cost. The reference is the same tokenizer alone, batched, on the
same texts, in this process. The job runs through its command line, timed from
start to exit with the peak memory of its whole process tree; at each size given.

    python -m benchmarks.machinery --rows 20000,200000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.measure import run_measured
from benchmarks.passages import host
from encoder import read_model_folder
from encoder.tokens import TextTokenizer
from samples.knowledge_base import write_shards
from samples.model_families import save_family

SHARDS = 8
TOKENIZER_BATCH = 4096


def _tokenizer_alone(model: Path, corpus: Path) -> float:
    """Rows/s of the model's tokenizer alone, batched, on the corpus' texts."""
    tokenizer = TextTokenizer(read_model_folder(model))
    texts = pq.read_table(sorted(corpus.glob("*.parquet")), columns=["text"]).column("text").combine_chunks()
    started = time.perf_counter()
    for start in range(0, len(texts), TOKENIZER_BATCH):
        tokenizer.encode(texts.slice(start, TOKENIZER_BATCH))
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="20000", help="comma-separated corpus sizes (default: 20000)")
    parser.add_argument("--workdir", type=Path, help="keep corpora and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    print(host())
    work = args.workdir or Path(tempfile.mkdtemp(prefix="machinery-"))
    model = save_family("bert", work / "model", size="free")
    print(f"{'rows':>9} {'job rows/s':>11} {'tokenizer rows/s':>17} {'job/tokenizer':>14} {'peak MiB':>9} {'s':>8}")
    for rows in (int(r) for r in args.rows.split(",")):
        corpus = work / f"corpus-{rows}"
        write_shards(corpus, rows, SHARDS)
        output = work / f"out-{rows}"
        command = [sys.executable, "-m", "pipeline.run", "--input", f"{corpus}/*.parquet", "--output", str(output)]
        measured = run_measured([*command, "--model", str(model), "--overwrite"])
        manifest = json.loads((output / "manifest.json").read_text())
        job = manifest["rows_in"] / measured.seconds
        alone = _tokenizer_alone(model, corpus)
        print(
            f"{rows:>9} {job:11.0f} {alone:17.0f} {job / alone:13.2f}x "
            f"{measured.peak_rss / 2**20:9.0f} {measured.seconds:8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
