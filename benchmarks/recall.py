"""Recall@10 of each --vector_dtype against float32, and the bytes each one costs per row.

The default model embeds `--rows` knowledge-base passages (the corpus) and `--queries` first
sentences of other passages (the queries). For each dtype the corpus is stored as the job
stores it (int8/uint8 over a calibration made as `pipeline.calibrate` makes it, on its own
texts) and searched: float16, int8 and uint8 by the float32 query's dot product with the
dequantized vectors (as pgvector's halfvec cosine does), binary by Hamming distance between
sign bits (as pgvector's bit index does). Recall@10 is the share of float32's top 10 found
in each dtype's top 10. Bytes per row: the vector's own, and its zstd Parquet column's.

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


def search(quantizer: Quantizer, stored: np.ndarray, queries: np.ndarray) -> np.ndarray:
    if quantizer.dtype == "binary":
        bits = quantizer.quantize(queries)
        hamming = np.stack([np.unpackbits(stored ^ query, axis=1).sum(axis=1) for query in bits])
        return top_k(-hamming.astype(np.float32))
    return top_k(queries @ quantizer.dequantize(stored, queries.shape[1]).T)


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
    corpus = encoder.encode(make_rows(args.rows, seed=0).column("text").to_pylist()).embeddings
    first_sentences = [text.split(". ")[0] for text in make_rows(args.queries, seed=1).column("text").to_pylist()]
    queries = encoder.encode(first_sentences).embeddings
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
