"""FLOPs of a BERT-shaped encoder or a Qwen3-shaped decoder on real tokens, and the machine's own
matrix-product rate to hold them against (torch, numpy and the encoder only: the GPU benchmark runs
where Beam is not installed)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from encoder import onednn


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_seq_length: int
    family: str = "bert"  # or "qwen3": grouped keys and values, a gated feed-forward, causal attention
    kv_heads: int = 0  # qwen3: heads of keys and values (0: as many as the queries')
    head_dim: int = 0  # qwen3: each head's width (0: hidden // heads)

    @property
    def query_width(self) -> int:
        return self.heads * self._head_width

    @property
    def key_width(self) -> int:
        return (self.kv_heads or self.heads) * self._head_width

    @property
    def _head_width(self) -> int:
        return self.head_dim or self.hidden // self.heads


def folder_shape(folder: Path) -> Shape:
    """The shape of a sentence-transformers folder's BERT-style transformer (config.json)."""
    config = json.loads((folder / "config.json").read_text())
    window = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    return Shape(
        config["hidden_size"],
        config["num_hidden_layers"],
        config["num_attention_heads"],
        config["intermediate_size"],
        window,
    )


def model_flops(lengths: np.ndarray, shape: Shape) -> float:
    """Multiply-adds x 2 of the transformer on real tokens: projections and feed-forward, and attention
    (over every key, causal or not: what a kernel given a mask computes)."""
    projections = 2 * shape.hidden * (shape.query_width + shape.key_width)  # Q and output; K and V
    feed_forward = (3 if shape.family == "qwen3" else 2) * shape.hidden * shape.intermediate
    per_token = 2 * (projections + feed_forward)
    attention = 4 * shape.query_width * lengths.astype(np.float64)  # QK^T and AV, per token, per layer
    return float(shape.layers * (lengths * (per_token + attention)).sum())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matrix product on `device` with all its threads, best of three
    timings: the machine's own ceiling. On an x86 CPU, the faster of torch's own product (MKL)
    and oneDNN's: on AMD, MKL runs at half the speed oneDNN reaches (encoder.onednn)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    products = [lambda: a @ b]
    if device.type == "cpu" and onednn.available(dtype):
        linear = torch.nn.Linear(n, n, bias=False, dtype=dtype)
        linear.weight.data = b.t().contiguous()  # x @ weight.T == a @ b
        products.append(partial(onednn.OneDnnLinear(linear), a))
    return max(_rate(product, 2 * n**3, device) for product in products)


@torch.inference_mode()
def _rate(product: Callable[[], torch.Tensor], flops: float, device: torch.device) -> float:
    for _ in range(3):
        product()
    sync(device)
    repeats, best = (20 if device.type == "cuda" else 5), float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            product()
        sync(device)
        best = min(best, time.perf_counter() - started)
    return flops * repeats / best
