"""CPU linear kernels on this host: plain torch, oneDNN, and what `--cpu_kernels auto` picks, in one process.

One encoder per choice encodes the same knowledge-base texts in turn, best of `--repeats`;
printed: rows/s of each, their ratio to plain torch, and oneDNN's speedup on the model's
probe layer, to check the auto rule (oneDNN with AVX-512) against this host. The
target is that auto is never slower than plain torch on any host.

    python -m benchmarks.cpu_kernels --rows 256 --repeats 3 [--threads 1] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.measure import host
from encoder import PooledEncoder, onednn, read_model_folder
from samples.knowledge_base import make_rows
from transforms.model_store import default_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model precision")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(host(), f"torch threads {torch.get_num_threads()}")
    folder = read_model_folder(args.model or default_model_path())
    texts = make_rows(args.rows).column("text").to_pylist()
    encoders = {
        kernels: PooledEncoder(folder, device="cpu", dtype=args.dtype, cpu_kernels=kernels)
        for kernels in ("torch", "auto")
    }
    has_onednn = onednn.available(getattr(torch, args.dtype))
    if has_onednn:
        encoders["onednn"] = PooledEncoder(folder, device="cpu", dtype=args.dtype, cpu_kernels="onednn")
    speedup = onednn.measured_speedup(encoders["torch"].input_module) if has_onednn else None
    seconds: dict[str, float] = {}
    for encoder in encoders.values():
        encoder.encode(texts[:32])  # warm-up
    for _ in range(args.repeats):
        for kernels, encoder in encoders.items():
            started = time.perf_counter()
            encoder.encode(texts)
            seconds[kernels] = min(seconds.get(kernels, float("inf")), time.perf_counter() - started)
    print(f"{len(texts)} texts in {args.dtype}, best of {args.repeats}; auto chose {encoders['auto'].cpu_kernels}")
    print(f"oneDNN / plain torch on the probe layer, measured now: {speedup:.2f}x" if speedup else "no oneDNN")
    for kernels, s in seconds.items():
        print(f"  {kernels:<7} {len(texts) / s:8.1f} rows/s  {seconds['torch'] / s:.2f}x plain torch")


if __name__ == "__main__":
    main()
