"""The job's encoder against sentence-transformers, per model family, on the same texts, in one process.

For each family a random model the size of all-MiniLM-L6-v2 (samples.model_families,
size "base": hidden 384, 6 layers) is built; then the job's encoder (`PooledEncoder.encode`,
default token budget) and sentence-transformers' `encode` (batch size 32) embed the same
knowledge-base texts (the static model `--static_rows` of them) in turn, best of `--repeats`,
with the same torch threads. Printed per family: rows/s of each and their ratio, the least
cosine between their float32 vectors, and the least cosine of the job's bfloat16 vectors to
sentence-transformers' float32 ones.

    python -m benchmarks.families --rows 256 --repeats 2
    python -m benchmarks.families --families bert,qwen3,static
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from benchmarks.measure import host
from encoder import PooledEncoder, read_model_folder
from samples.knowledge_base import make_rows
from samples.model_families import STATIC, save_family

ARCHITECTURES = (
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "mpnet",
    "modernbert",
    "deberta-v2",
    "electra",
    "t5-encoder",
    "gemma3-text",
    "qwen3",
    "qwen2",
    "mistral",
    "llama",
    STATIC,
)


def _best(run, repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - started)
    return min(times), out


def _least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def _compare(name: str, path: Path, texts: list[str], repeats: int) -> str:
    folder = read_model_folder(path)
    ours = PooledEncoder(folder, device="cpu")
    theirs = SentenceTransformer(str(path), device="cpu")
    ours.encode(texts[:32])  # warm-up: first-call kernel selection on both sides
    theirs.encode(texts[:32])
    job_s, job = _best(lambda: ours.encode(texts).embeddings, repeats)
    st_s, st = _best(lambda: theirs.encode(texts, batch_size=32, normalize_embeddings=folder.normalize), repeats)
    bf16 = PooledEncoder(folder, device="cpu", dtype="bfloat16").encode(texts).embeddings
    return (
        f"{name:<14} {len(texts) / job_s:11.1f} {len(texts) / st_s:10.1f} {st_s / job_s:6.2f}x "
        f"{_least_cosine(job, st):9.6f} {_least_cosine(bf16, st):9.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--static_rows", type=int, default=20000, help="rows for the static model, which is fast")
    parser.add_argument("--families", default=",".join(ARCHITECTURES))
    args = parser.parse_args()
    print(host(), f"torch threads {torch.get_num_threads()}")
    texts = make_rows(args.rows).column("text").to_pylist()
    print(f"{len(texts)} knowledge-base texts, mean {np.mean([len(t) for t in texts]):.0f} characters")
    print(f"{'family':<14} {'job rows/s':>11} {'ST rows/s':>10} {'job/ST':>7} {'cos f32':>9} {'cos bf16':>9}")
    with tempfile.TemporaryDirectory() as root:
        for name in args.families.split(","):
            rows = make_rows(args.static_rows).column("text").to_pylist() if name == STATIC else texts
            print(_compare(name, save_family(name, Path(root) / name, size="base"), rows, args.repeats), flush=True)


if __name__ == "__main__":
    main()
