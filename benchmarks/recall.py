"""Recall@10 of each --vector_dtype against float32, and the bytes each one costs per row.

The default model embeds `--rows` different knowledge-base passages (the corpus) and the first
sentences of `--queries` passages not among them (the queries): the synthetic knowledge base
repeats texts, and which copy of a tied vector a search returned decided recall. For each dtype
the corpus is stored as the job stores it (int8/uint8 over a calibration made as
`pipeline.calibrate` makes it, on its own texts) and searched: float16, int8 and uint8 by the
cosine between the float32 query and the dequantized vectors (as the loader's halfvec cosine
index ranks them), binary by Hamming distance between sign bits (as pgvector's bit index does).
Recall@10 is the share of float32's top 10 found in each dtype's top 10. Bytes per row: the
vector's own, and its zstd Parquet column's.

    python -m benchmarks.recall --rows 5000 --queries 200
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.measure import host
from encoder import PooledEncoder, read_model_folder
from encoder.quantize import VECTOR_DTYPES, Calibration, Quantizer
from pipeline.calibrate import calibration_texts
from samples.knowledge_base import make_rows
from schemas.outputs import EMBEDDING_COLUMN, VALUE_TYPES
from transforms.model_store import default_model_path
from transforms.write import column_encodings

K = 10


def top_k(scores: np.ndarray) -> np.ndarray:
    """Each query's K best corpus rows (scores: queries x corpus, higher is nearer)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :K]


def distinct_texts(count: int, seed: int, excluded: frozenset[str] = frozenset()) -> list[str]:
    """The first `count` different knowledge-base texts of `seed` not in `excluded`."""
    texts = dict.fromkeys(t for t in make_rows(2 * count + len(excluded), seed=seed).column("text").to_pylist())
    kept = [t for t in texts if t not in excluded][:count]
    if len(kept) < count:
        raise SystemExit(f"the knowledge base of seed {seed} gave {len(kept)} different texts, not {count}")
    return kept


def search(quantizer: Quantizer, stored: np.ndarray, queries: np.ndarray) -> np.ndarray:
    if quantizer.dtype == "binary":
        bits = quantizer.quantize(queries)
        hamming = np.stack([np.unpackbits(stored ^ query, axis=1).sum(axis=1) for query in bits])
        return top_k(-hamming.astype(np.float32))
    vectors = quantizer.dequantize(stored, queries.shape[1])
    return top_k(queries @ (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T)


def parquet_bytes(quantizer: Quantizer, stored: np.ndarray) -> int:
    """The vectors' column written as the job writes it (zstd, its encodings)."""
    values = pa.array(stored.reshape(-1), VALUE_TYPES[quantizer.dtype])
    table = pa.table({EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(values, stored.shape[1])})
    buffer = io.BytesIO()
    pq.write_table(
        table,
        buffer,
        compression="zstd",
        use_dictionary=False,
        column_encoding=column_encodings(table.schema, []) or None,
        use_compliant_nested_type=False,
    )
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--calibration_rows", type=int, default=2000)
    args = parser.parse_args()
    print(host())
    encoder = PooledEncoder(read_model_folder(default_model_path()), device="cpu")
    started = time.perf_counter()
    passages = distinct_texts(args.rows, seed=0)
    corpus = encoder.encode(passages).embeddings
    queries = encoder.encode(
        [t.split(". ")[0] for t in distinct_texts(args.queries, 1, frozenset(passages))]
    ).embeddings
    calibration = Calibration.of(encoder.encode(calibration_texts([], "text", args.calibration_rows)).embeddings)
    print(
        f"embedded {args.rows} passages, {args.queries} queries, {calibration.texts} calibration texts "
        f"in {time.perf_counter() - started:.0f} s"
    )
    reference = top_k(queries @ corpus.T)
    print(f"{'dtype':8} {'recall@10':>9} {'vector bytes':>12} {'Parquet bytes/row':>17}")
    for dtype in VECTOR_DTYPES:
        quantizer = Quantizer(dtype, calibration if dtype in ("int8", "uint8") else None)
        stored = quantizer.quantize(corpus)
        found = search(quantizer, stored, queries)
        recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(found, reference, strict=True)])
        print(f"{dtype:8} {recall:9.3f} {stored[0].nbytes:12d} {parquet_bytes(quantizer, stored) / args.rows:17.1f}")


if __name__ == "__main__":
    main()
