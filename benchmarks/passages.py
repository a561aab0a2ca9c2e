"""Passages (--chunk_tokens) against one vector per row, side by side in one run, through the job's command line:

  (a) real long documents (samples.long_documents) split with --chunk_tokens 256:
      passages/s, real tokens/s, padding, peak RSS, passages per document
  (b) short knowledge-base rows (samples.knowledge_base), about as many as (a) made passages,
      no chunking: rows/s and tokens/s; target (a)/(b) tokens/s >= 0.9
  (c) a shard of short rows plus one row holding a huge real text (--huge_mb, default 64 MiB),
      no chunking (truncated to the model's limit; a static model without one, as --model, takes
      it whole), against the same shard without that row: targets <= 2x the time and <= 1.5x
      the peak memory
  (d) one long document (--doc_mb, default 4 MiB) alone in a shard with --chunk_tokens 256,
      against 20 documents of (a)'s corpus: target <= 1.5x the peak memory

Every run is a fresh `python -m pipeline.run` process, timed from start to exit (start-up
included) with the peak RSS of its whole process tree (benchmarks.measure); rates divide the
manifest's counts (rows_out, tokens) by that wall time. The host's CPU and its AVX flags are
printed first: the encoder's oneDNN kernels use AVX-512 where there is one.

    python -m benchmarks.passages                       # all parts, default sizes
    python -m benchmarks.passages --parts a,b --docs 100
    python -m benchmarks.passages --docs 10 --huge_mb 4 --doc_mb 0.5 --huge_rows 200   # smoke run
    python -m benchmarks.passages --parts c --huge_mb 100 --model DIR                   # another model
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.measure import Measured, host, run_measured
from samples.knowledge_base import make_rows, write_shards
from samples.long_documents import long_documents, text_of_size, write_documents

SHARDS = 8
CHUNK_TOKENS = 256
PARTS = "abcd"


@dataclass(frozen=True)
class Run:
    label: str
    command: list[str]
    measured: Measured
    manifest: dict

    @property
    def seconds(self) -> float:
        return self.measured.seconds

    @property
    def mib(self) -> float:
        return self.measured.peak_rss / 2**20


def _job(label: str, corpus: Path, output: Path, extra: list[str]) -> Run:
    command = [sys.executable, "-m", "pipeline.run", "--input", f"{corpus}/*.parquet", "--output", str(output)]
    command += ["--overwrite", *extra]
    print(f"running {label} ...", file=sys.stderr, flush=True)
    measured = run_measured(command, env={"HF_HUB_OFFLINE": "1"})
    return Run(label, command, measured, json.loads((output / "manifest.json").read_text()))


def _shard_with(path: Path, table: pa.Table, extra: pa.Table | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables([table, extra]) if extra is not None else table, path)


def _row(run: Run) -> str:
    m = run.manifest
    spread = (m.get("passages") or {}).get("per_document") or {}
    per_doc = f"{spread['min']} / {spread['median']:g} / {spread['max']}" if spread else "-"
    return (
        f"{run.label:<40} {m['rows_in']:8d} {m['rows_out']:9d} {m['rows_out'] / run.seconds:8.1f} "
        f"{m['tokens'] / run.seconds:9.0f} {m['padded_tokens'] / max(m['tokens'], 1):8.3f} {run.mib:9.0f} "
        f"{run.seconds:8.1f}  {per_doc}"
    )


def _target(name: str, value: float, limit: float, at_least: bool) -> str:
    ok = value >= limit if at_least else value <= limit
    return f"{name:<48} {value:7.2f}x   target {'>=' if at_least else '<='} {limit:.2f}x   {'PASS' if ok else 'MISS'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="a,b,c,d", help="which parts to run, comma-separated (default: a,b,c,d)")
    parser.add_argument("--docs", type=int, default=200, help="long documents for (a) (default: 200)")
    parser.add_argument("--short_rows", type=int, help="short rows for (b) (default: as many as (a)'s passages)")
    parser.add_argument("--huge_mb", type=float, default=64, help="MiB of the huge text of (c) (default: 64)")
    parser.add_argument("--huge_rows", type=int, default=2000, help="short rows beside it in (c) (default: 2000)")
    parser.add_argument("--doc_mb", type=float, default=4, help="MiB of the one document of (d) (default: 4)")
    parser.add_argument("--small_docs", type=int, default=20, help="documents of the small run of (d) (default: 20)")
    parser.add_argument("--workdir", type=Path, help="keep corpora and outputs here (default: a temporary folder)")
    parser.add_argument("--model", help="model folder for every part (default: the job's default model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="model precision (default: float32)",
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - set(PARTS):
        parser.error(f"--parts takes a comma-separated subset of {','.join(PARTS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="passages-"))
    defaults = (args.device, args.dtype) == ("cpu", "float32")
    job_options = [] if defaults else ["--device", args.device, "--dtype", args.dtype]
    if args.model:
        job_options += ["--model", args.model]
    chunked = [*job_options, "--chunk_tokens", str(CHUNK_TOKENS)]
    print(host())
    corpus = long_documents()
    print(f"long documents: {len(corpus)} distinct, {sum(len(t) for _, t in corpus)} characters; {work}")

    runs: dict[str, Run] = {}
    failures: list[str] = []

    def attempt(key: str, label: str, corpus_dir: Path, extra: list[str]) -> None:
        try:
            runs[key] = _job(label, corpus_dir, work / f"out-{key}", extra)
        except RuntimeError as e:
            failures.append(f"{label}: {e}")

    if "a" in parts:
        write_documents(work / "a", args.docs, min(SHARDS, args.docs))
        attempt("a", f"(a) {args.docs} long documents, chunked", work / "a", chunked)
    if "b" in parts:
        rows = args.short_rows or (runs["a"].manifest["rows_out"] if "a" in runs else 2000)
        write_shards(work / "b", rows, SHARDS)
        attempt("b", f"(b) {rows} short rows, not chunked", work / "b", job_options)
    if "c" in parts:
        shard = make_rows(args.huge_rows)
        text = text_of_size(int(args.huge_mb * 2**20))
        one = pa.table({"id": ["kb-huge"], "kind": ["doc"], "title": ["long documents, repeated"], "text": [text]})
        _shard_with(work / "c-base" / "part-00000.parquet", shard)
        _shard_with(work / "c-huge" / "part-00000.parquet", shard, one.cast(shard.schema))
        del text, one
        attempt("c-base", f"(c) {args.huge_rows} short rows", work / "c-base", job_options)
        attempt("c-huge", f"(c) the same + one {args.huge_mb:g} MiB text", work / "c-huge", job_options)
    if "d" in parts:
        write_documents(work / "d-small", args.small_docs, 1)
        big = pa.table({"id": ["doc-big"], "title": ["long documents, repeated"]})
        big = big.append_column("text", pa.array([text_of_size(int(args.doc_mb * 2**20))]))
        _shard_with(work / "d-big" / "part-00000.parquet", big)
        del big
        attempt("d-small", f"(d) {args.small_docs} long documents, chunked", work / "d-small", chunked)
        attempt("d-big", f"(d) one {args.doc_mb:g} MiB document, chunked", work / "d-big", chunked)

    print()
    print(
        f"{'':<40} {'rows in':>8} {'rows out':>9} {'out/s':>8} {'tokens/s':>9} {'padding':>8} {'peak MiB':>9} "
        f"{'seconds':>8}  passages/doc min/median/max"
    )
    for run in runs.values():
        print(_row(run))
    print()
    if "a" in runs and "b" in runs:
        a, b = runs["a"], runs["b"]
        ratio = (a.manifest["tokens"] / a.seconds) / (b.manifest["tokens"] / b.seconds)
        print(_target("(a)/(b) real tokens/s", ratio, 0.9, at_least=True))
    if "c-base" in runs and "c-huge" in runs:
        without, with_huge = runs["c-base"], runs["c-huge"]
        label = f"the {args.huge_mb:g} MiB row"
        print(_target(f"(c) time, with / without {label}", with_huge.seconds / without.seconds, 2.0, False))
        print(_target(f"(c) peak memory, with / without {label}", with_huge.mib / without.mib, 1.5, False))
    if "d-small" in runs and "d-big" in runs:
        small, big = runs["d-small"], runs["d-big"]
        label = f"(d) peak memory, {args.doc_mb:g} MiB document / {args.small_docs} documents"
        print(_target(label, big.mib / small.mib, 1.5, False))
        passages, tokens = big.manifest["rows_out"], big.manifest["tokens"]
        print(
            f"(d) the {args.doc_mb:g} MiB document: {passages} passages, {tokens} real tokens "
            f"in {big.seconds:.1f} s ({passages / big.seconds:.1f} passages/s)"
        )
    print()
    print("commands:")
    for run in runs.values():
        print(f"  {run.label}: python {' '.join(run.command[1:])}")
    for failure in failures:
        print(f"\nFAILED {failure}", file=sys.stderr)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
