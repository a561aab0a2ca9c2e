"""Run a transformer's linear layers through oneDNN on x86 CPUs where that is faster.

PyTorch's CPU `nn.Linear` calls MKL's sgemm, which on AMD CPUs takes a code
path half as fast as oneDNN's AVX-512 kernels (measured on a 2-core AMD EPYC,
Zen 5, one thread: 90 vs 200 GFLOP/s in float32). oneDNN also applies the
exact GELU of BERT-style feed-forward blocks inside the matrix product,
saving a pass over the largest activation (11% of the encoder's time).
The arithmetic stays float32; only the summation order differs.

On another host, an AMD EPYC with AVX2 only, oneDNN ran at 0.91-0.96x of plain
torch; on an AVX-512 EPYC at 1.16x, and on an AVX-512 Intel Xeon at 1.14x (MKL uses
AVX-512 there, but oneDNN still fuses GELU and pre-packs weights); ARM has no oneDNN
path here. So oneDNN is chosen for x86 CPUs with AVX-512, from the CPU's flags.
Not from a timing at load: on a busy host a timing flips between runs, and with it
the last bits of every vector, so that two runs of the same rows would not agree
bit for bit. `measured_speedup` times both on a model's own layer, for benchmarks.
"""

from __future__ import annotations

import platform
import time

import torch
from torch import nn

from encoder import cpu_flags

_PROBE_TOKENS = 1024
_PROBE_REPEATS = 5


def available(dtype: torch.dtype = torch.float32) -> bool:
    """oneDNN is in this torch build, the CPU is x86-64 (where it was measured), and for bfloat16
    the CPU has oneDNN's bfloat16 kernels (AVX-512 BW/VL/DQ): on an AVX2-only host the weight
    reorder fails, so bfloat16 runs on plain torch there."""
    supported = (
        platform.machine().lower() in {"x86_64", "amd64"}
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )
    if supported and dtype == torch.bfloat16:
        return bf16_kernels()
    return supported and dtype == torch.float32


def faster_here() -> bool:
    """Whether oneDNN's kernels beat plain torch's on this CPU, as measured (benchmarks.cpu_kernels):
    with AVX-512, on AMD (1.16x-2x) and on Intel (1.14x); not on an AVX2-only AMD EPYC (0.91-0.96x)."""
    _, flags = cpu_flags.cpu_features()
    return cpu_flags.AVX512_FLAGS <= flags


def bf16_kernels() -> bool:
    """Whether this CPU has the instructions oneDNN's bfloat16 matrix kernels need."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class OneDnnLinear(nn.Module):
    """An inference-only `nn.Linear` with its weight pre-packed for oneDNN, optionally followed by exact GELU."""

    def __init__(self, linear: nn.Linear, gelu: bool = False) -> None:
        super().__init__()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self._post_op, self._algorithm = ("gelu", "none") if gelu else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self._post_op, [], self._algorithm)


def _is_exact_gelu(module: nn.Module) -> bool:
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    # transformers' GELUActivation, the `hidden_act="gelu"` of BERT, MiniLM and MPNet
    return type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is nn.functional.gelu


def use_onednn(model: nn.Module) -> int:
    """Swap every `nn.Linear` of a float32 or bfloat16 CPU model for `OneDnnLinear`; returns how many.

    A feed-forward block shaped like transformers' BERT intermediate (`dense`
    then `intermediate_act_fn`) with exact GELU gets the GELU fused.
    """
    swapped = 0
    for module in list(model.modules()):
        if isinstance(getattr(module, "dense", None), nn.Linear) and _is_exact_gelu(
            getattr(module, "intermediate_act_fn", None)
        ):
            module.dense = OneDnnLinear(module.dense, gelu=True)
            module.intermediate_act_fn = nn.Identity()
            swapped += 1
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, OneDnnLinear(child))
                swapped += 1
    return swapped


def _probe_layer(model: nn.Module) -> tuple[nn.Linear, nn.Module | None] | None:
    """The layer that dominates the encoder's time: a BERT-style feed-forward input with its exact
    GELU when there is one (fused by oneDNN), else the largest linear layer."""
    largest = None
    for module in model.modules():
        dense, act = getattr(module, "dense", None), getattr(module, "intermediate_act_fn", None)
        if isinstance(dense, nn.Linear) and _is_exact_gelu(act):
            return dense, act
        if isinstance(module, nn.Linear) and (largest is None or module.weight.numel() > largest.weight.numel()):
            largest = module
    return (largest, None) if largest is not None else None


def _best_seconds(layer, x: torch.Tensor) -> float:
    best = float("inf")
    for _ in range(_PROBE_REPEATS):
        started = time.perf_counter()
        layer(x)
        best = min(best, time.perf_counter() - started)
    return best


@torch.inference_mode()
def measured_speedup(model: nn.Module) -> float | None:
    """Plain torch's time over oneDNN's on the model's probe layer; None when it has no linear layer."""
    probe = _probe_layer(model)
    if probe is None:
        return None
    linear, gelu = probe
    x = torch.randn(_PROBE_TOKENS, linear.in_features, dtype=linear.weight.dtype)
    fused = OneDnnLinear(linear, gelu=gelu is not None)
    plain = (lambda v: gelu(linear(v))) if gelu is not None else linear
    fused(x), plain(x)  # first calls pick and cache kernels
    return _best_seconds(plain, x) / _best_seconds(fused, x)
