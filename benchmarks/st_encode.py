"""Baseline (b): sentence-transformers `encode` on the corpus' texts, timing encode only.

    python -m benchmarks.st_encode CORPUS_GLOB OUT_PREFIX [--device cpu] [--dtype float32]

Prints one JSON line; writes OUT_PREFIX.npy (vectors) and OUT_PREFIX.ids.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from sentence_transformers import SentenceTransformer

from transforms.model_store import default_model_path

BATCH_SIZE = 32


def padded_tokens(model: SentenceTransformer, texts: list[str]) -> int:
    """Tokens sentence-transformers runs over: it sorts by characters and pads each batch of 32."""
    lengths = np.array(
        [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]]
    )
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return int(
        sum(
            lengths[order[i : i + BATCH_SIZE]].max() * len(order[i : i + BATCH_SIZE])
            for i in range(0, len(texts), BATCH_SIZE)
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    table = pq.read_table(sorted(glob.glob(args.corpus)), columns=["id", "text"])
    ids, texts = table["id"].to_pylist(), table["text"].to_pylist()
    model = SentenceTransformer(default_model_path(), device=args.device)
    model.to(getattr(torch, args.dtype))
    model.encode(texts[:BATCH_SIZE], batch_size=BATCH_SIZE)  # warm-up, as a fair baseline
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    np.save(f"{args.out}.npy", vectors.astype(np.float32))
    with open(f"{args.out}.ids.json", "w") as f:
        json.dump(ids, f)
    print(json.dumps({"rows": len(texts), "seconds": seconds, "padded_tokens": padded_tokens(model, texts)}))


if __name__ == "__main__":
    main()
