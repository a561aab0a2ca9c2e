"""Full against incremental nightly runs, side by side on the same corpus:

  day 1: a full run of the knowledge base (yesterday's output)
  day 2: the same knowledge base with 1% of its passages edited, embedded twice:
         in full, and incrementally with --previous pointing at day 1's output

It prints each run's wall time (start-up included), the ratio of day 2 full to
incremental, how many rows went through the model, and checks that every
unchanged row kept day 1's vector bit for bit.

    python -m benchmarks.incremental --rows 50000 [--changed 0.01] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.measure import Measured, run_measured
from samples.knowledge_base import write_shards

SHARDS = 8


def _run(corpus: Path, output: Path, *extra: str) -> tuple[Measured, dict]:
    command = [sys.executable, "-m", "pipeline.run", "--input", f"{corpus}/*.parquet", "--output", str(output)]
    measured = run_measured([*command, "--overwrite", *extra])
    return measured, json.loads((output / "manifest.json").read_text())


def edit_corpus(day1: Path, day2: Path, every: int) -> int:
    """Copy the shards, editing the text of every `every`-th row; returns how many rows were edited."""
    day2.mkdir(parents=True, exist_ok=True)
    edited = 0
    for shard in sorted(day1.glob("*.parquet")):
        table = pq.read_table(shard)
        picked = pa.array([i % every == 0 for i in range(table.num_rows)])
        texts = pc.if_else(picked, pc.binary_join_element_wise("Edited: ", table["text"], ""), table["text"])
        pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", texts), day2 / shard.name)
        edited += pc.sum(picked).as_py()
    return edited


def _vectors(output: Path) -> dict[str, bytes]:
    table = pq.read_table(sorted(output.glob("embeddings-*.parquet")), columns=["id", "embedding"])
    dim = table.schema.field("embedding").type.list_size
    flat = table["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
    return {i: row.tobytes() for i, row in zip(table["id"].to_pylist(), flat, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50000, help="corpus size (default: 50000)")
    parser.add_argument("--changed", type=float, default=0.01, help="share of passages edited on day 2 (default: 0.01)")
    parser.add_argument("--workdir", type=Path, help="keep corpora and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="incremental-"))
    write_shards(work / "day1", args.rows, SHARDS)
    edited = edit_corpus(work / "day1", work / "day2", round(1 / args.changed))

    first, first_manifest = _run(work / "day1", work / "out-day1")
    full, full_manifest = _run(work / "day2", work / "out-day2-full")
    incremental, manifest = _run(work / "day2", work / "out-day2-incremental", "--previous", str(work / "out-day1"))

    before, after = _vectors(work / "out-day1"), _vectors(work / "out-day2-incremental")
    day2 = pq.read_table(sorted((work / "day2").glob("*.parquet")), columns=["id", "text"]).to_pydict()
    unchanged = [i for i, text in zip(day2["id"], day2["text"], strict=True) if not text.startswith("Edited: ")]
    identical = sum(after[i] == before[i] for i in unchanged)

    print(f"corpus: {args.rows} rows in {SHARDS} shards; day 2 edits {edited} of them; {work}")
    print(f"{'':<34} {'seconds':>8} {'rows through the model':>24}")
    for label, measured, body in (
        ("day 1, full run", first, first_manifest),
        ("day 2, full run", full, full_manifest),
        ("day 2, incremental (--previous)", incremental, manifest),
    ):
        print(f"{label:<34} {measured.seconds:8.1f} {body['rows_embedded']:24d}")
    print(f"full / incremental: {full.seconds / incremental.seconds:.1f}x")
    print(
        f"incremental manifest: rows_in {manifest['rows_in']}, rows_embedded {manifest['rows_embedded']}, "
        f"rows_reused {manifest['rows_reused']}, rows_deleted {manifest['rows_deleted']}, "
        f"rows_rejected {manifest['rows_rejected']}"
    )
    print(f"model saw exactly the edited rows: {manifest['rows_embedded'] == edited}")
    print(f"unchanged rows with day 1's vector bit for bit: {identical} of {len(unchanged)}")


if __name__ == "__main__":
    main()
