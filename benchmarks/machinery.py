"""The job's machinery without the model's cost: a near-free model against the tokenizer alone, in one run.

A random 1-layer BERT with hidden size 32 and all-MiniLM-L6-v2's tokenizer
(samples.model_families, size "free") makes the model's work small, so the job's
rows/s is mostly what reading, validating, hashing, joining, tokenising, padding
and writing cost. Small is not nothing: its attention over up to 256 tokens costs
about as much as tokenising. So there are two references, in this process on the
same texts: the tokenizer alone, batched, and the encoder alone (that tokenizer,
then the near-free model, all cores, no Beam), which is what the job could reach
if reading, joining and writing cost nothing. The job runs through its command
line, timed from start to exit with the peak memory of its whole process tree, of
the launcher (which holds the local runner's shuffles) and of the largest worker;
at each size given, so that 100,000 against 1,000,000 rows shows how memory grows
with the input. The job's start-up (its own log line: the command to the first rows
reaching a loaded model) is printed beside it, with the job's rate over the time after it.

    python -m benchmarks.machinery --rows 20000,200000
    python -m benchmarks.machinery --rows 100000,1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer

from benchmarks.measure import host, run_measured, startup_seconds
from encoder import PooledEncoder, read_model_folder
from samples.knowledge_base import write_shards
from samples.model_families import save_family
from transforms.embed import CUDA_CHUNK_ROWS

SHARDS = 8
TOKENIZER_BATCH = 4096
ROWS_PER_BATCH = 4096  # the job's default --rows_per_batch


def _tokenizer_alone(model: Path, texts: pa.Array) -> dict[str, float]:
    """Rows/s of the model's tokenizer alone (the `tokenizers` library, truncating at the model's
    window, all cores), batched, on the texts already in Python: with offsets (the library's
    usual call) and without (`encode_batch_fast`, what the job uses)."""
    folder = read_model_folder(model)
    tokenizer = Tokenizer.from_file(str(folder.tokenizer_path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(folder.seq_length(None))
    strings = texts.to_pylist()
    rates = {}
    for name in ("encode_batch", "encode_batch_fast"):
        encode = getattr(tokenizer, name)
        started = time.perf_counter()
        for start in range(0, len(strings), TOKENIZER_BATCH):
            encode(strings[start : start + TOKENIZER_BATCH])
        rates[name] = len(strings) / (time.perf_counter() - started)
    return rates


def encoder_alone(model: Path, texts: pa.Array, device: str = "cpu", dtype: str = "float32", warm_up: int = 0) -> float:
    """Rows/s of the pooled encoder alone (tokenizer, then the model) on the texts already in Arrow,
    in chunks of the rows the job gathers (its default --rows_per_batch; on CUDA CUDA_CHUNK_ROWS), with
    torch's default threads (all cores); after encoding the first `warm_up` texts untimed (a GPU's
    kernels and handles are made on first use)."""
    encoder = PooledEncoder(read_model_folder(model), device, dtype)
    chunk = CUDA_CHUNK_ROWS if encoder.device.type == "cuda" else ROWS_PER_BATCH
    if warm_up:
        encoder.encode(texts[:warm_up])
    started = time.perf_counter()
    for start in range(0, len(texts), chunk):
        encoder.encode(texts[start : start + chunk])
    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="20000", help="comma-separated corpus sizes (default: 20000)")
    parser.add_argument("--workdir", type=Path, help="keep corpora and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    print(host())
    work = args.workdir or Path(tempfile.mkdtemp(prefix="machinery-"))
    model = save_family("bert", work / "model", size="free")
    print(
        f"{'rows':>9} {'job rows/s':>11} {'tokenizer rows/s':>17} {'job/tokenizer':>14} "
        f"{'fast tokenizer':>15} {'job/fast':>9} {'encoder':>8} {'job/encoder':>12} "
        f"{'peak MiB':>9} {'launcher':>9} {'worker':>7} {'s':>8} {'start-up s':>11} {'after start-up':>15} "
        f"{'after/tokenizer':>16}"
    )
    for rows in (int(r) for r in args.rows.split(",")):
        corpus = work / f"corpus-{rows}"
        write_shards(corpus, rows, SHARDS)
        output = work / f"out-{rows}"
        command = [sys.executable, "-m", "pipeline.run", "--input", f"{corpus}/*.parquet", "--output", str(output)]
        measured = run_measured([*command, "--model", str(model), "--overwrite"])
        manifest = json.loads((output / "manifest.json").read_text())
        job = manifest["rows_in"] / measured.seconds
        startup = startup_seconds(measured.stdout)
        after = manifest["rows_in"] / (measured.seconds - startup)
        texts = pq.read_table(sorted(corpus.glob("*.parquet")), columns=["text"]).column("text").combine_chunks()
        alone = _tokenizer_alone(model, texts)
        usual, fast = alone["encode_batch"], alone["encode_batch_fast"]
        encoder = encoder_alone(model, texts)
        print(
            f"{rows:>9} {job:11.0f} {usual:17.0f} {job / usual:13.2f}x {fast:15.0f} {job / fast:8.2f}x "
            f"{encoder:8.0f} {job / encoder:11.2f}x "
            f"{measured.peak_rss / 2**20:9.0f} {measured.launcher_peak_rss / 2**20:9.0f} "
            f"{measured.worker_peak_rss / 2**20:7.0f} {measured.seconds:8.1f} {startup:11.1f} {after:15.0f} "
            f"{after / usual:15.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
