"""Throughput, side by side in one run on the same Parquet corpus:

  (a) this job end to end as users run it (read Parquet -> embed -> write Parquet, default options)
  (b) sentence-transformers encode(texts, batch_size=32, normalize_embeddings=True), encode only
  (c) Beam's MLTransform + SentenceTransformerEmbeddings, Parquet to Parquet

and the job's memory: its peak RSS on the corpus against a tenth of it; then the model's FLOPs
on the corpus' real tokens per second of (a), end to end, and of (b), against this host's own
matrix-product rate in the same precision, measured in the same run, all its threads (benchmarks.flops).

    python -m benchmarks.throughput --rows 12000 [--workdir DIR] [--dtype bfloat16] [--device cuda --dtype float16]

Each run is a fresh process; (a) and (c) are timed from start to exit, start-up included.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from benchmarks.flops import folder_shape, matmul_rate, model_flops
from benchmarks.measure import Measured, host, run_measured
from encoder import read_model_folder
from encoder.pooled_encoder import DTYPES
from encoder.tokens import TextTokenizer
from samples.knowledge_base import write_shards
from transforms.model_store import default_model_path

SHARDS = 8


def _job(corpus: Path, output: Path, extra: list[str]) -> tuple[Measured, dict]:
    measured = run_measured(
        [sys.executable, "-m", "pipeline.run", "--input", f"{corpus}/*.parquet", "--output", str(output), *extra]
    )
    return measured, json.loads((output / "manifest.json").read_text())


def _min_cosine(job_output: Path, reference: Path) -> float:
    table = pq.read_table(sorted(job_output.glob("embeddings-*.parquet")))
    ours = dict(zip(table["id"].to_pylist(), table["embedding"].to_numpy(zero_copy_only=False), strict=True))
    ids = json.loads(Path(f"{reference}.ids.json").read_text())
    expected = np.load(f"{reference}.npy")
    got = np.stack([ours[i] for i in ids])
    return float((got * expected).sum(axis=1).min())


def _corpus_flops(corpus: Path, tokens: int) -> float:
    """The default model's FLOPs on the corpus' real tokens, as the job counts them."""
    folder = Path(default_model_path())
    texts = pq.read_table(sorted(corpus.glob("*.parquet")), columns=["text"])["text"]
    lengths = TextTokenizer(read_model_folder(folder)).encode(texts.combine_chunks()).lengths
    if int(lengths.sum()) != tokens:
        raise RuntimeError(f"counted {int(lengths.sum())} tokens, the job's manifest says {tokens}")
    return model_flops(np.asarray(lengths), folder_shape(folder))


def _row(name: str, rows: int, seconds: float, tokens: int, padded: int | None, rss: int | None) -> str:
    padding = f"{padded / tokens:8.3f}" if padded else "     n/a"
    memory = f"{rss / 2**20:9.0f}" if rss else "      n/a"
    return f"{name:<44} {rows / seconds:9.1f} {tokens / seconds:11.0f} {padding} {memory} {seconds:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=12000, help="corpus size (default: 12000)")
    parser.add_argument("--workdir", type=Path, help="keep corpus and outputs here (default: a temporary folder)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for (a) and (b) (default: cpu)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=list(DTYPES),
        help="model precision for (a) and (b), and of the reference matrix product (default: float32)",
    )
    parser.add_argument("--skip_mltransform", action="store_true", help="leave out (c), the slowest")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="throughput-"))
    corpus, small = work / "corpus", work / "corpus-tenth"
    write_shards(corpus, args.rows, SHARDS)
    write_shards(small, args.rows // 10, SHARDS)
    defaults = (args.device, args.dtype) == ("cpu", "float32")
    extra = ["--overwrite"] + ([] if defaults else ["--device", args.device, "--dtype", args.dtype])

    job, manifest = _job(corpus, work / "a", extra)
    tenth, _ = _job(small, work / "a-tenth", extra)
    tokens = manifest["tokens"]
    st = run_measured(
        [
            sys.executable,
            "-m",
            "benchmarks.st_encode",
            f"{corpus}/*.parquet",
            str(work / "b"),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
        ]
    )
    st_result = json.loads(st.stdout.strip().splitlines()[-1])
    ml = None
    if not args.skip_mltransform:
        ml = run_measured([sys.executable, "-m", "benchmarks.mltransform_job", f"{corpus}/*.parquet", str(work / "c")])

    rows = manifest["rows_in"]
    flops = _corpus_flops(corpus, tokens)
    device = torch.device(args.device)
    matmul = matmul_rate(device, DTYPES[args.dtype])
    workers = f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    print(host())
    print(f"corpus: {rows} rows in {SHARDS} shards, {tokens} real tokens ({tokens / rows:.1f} per row), {work}")
    print(f"{'':<44} {'rows/s':>9} {'tokens/s':>11} {'padding':>8} {'peak MiB':>9} {'seconds':>8}")
    print(_row("(a) this job, end to end", rows, job.seconds, tokens, manifest["padded_tokens"], job.peak_rss))
    print(
        _row(
            "(b) sentence-transformers encode only",
            rows,
            st_result["seconds"],
            tokens,
            st_result["padded_tokens"],
            None,
        )
    )
    if ml:
        print(_row("(c) MLTransform, end to end", rows, ml.seconds, tokens, None, ml.peak_rss))
    print(f"min cosine (a) vs (b): {_min_cosine(work / 'a', work / 'b'):.6f}")
    print(f"a/b rows/s: {st_result['seconds'] / job.seconds:.2f}x")
    if ml:
        print(f"a/c rows/s: {ml.seconds / job.seconds:.2f}x")
    print(
        f"memory: peak RSS {job.peak_rss / 2**20:.0f} MiB for {rows} rows, {tenth.peak_rss / 2**20:.0f} MiB "
        f"for {rows // 10}: {job.peak_rss / tenth.peak_rss:.2f}x for 10x the rows"
    )
    print(
        f"FLOP rate on real tokens: (a) end to end {flops / job.seconds / 1e9:.1f} GFLOP/s = "
        f"{flops / job.seconds / matmul:.0%} of this host's {args.dtype} matrix product ({matmul / 1e9:.1f} GFLOP/s, "
        f"{workers}); (b) encode only {flops / st_result['seconds'] / 1e9:.1f} GFLOP/s = "
        f"{flops / st_result['seconds'] / matmul:.0%}"
    )


if __name__ == "__main__":
    main()
