"""Which device and precision the job's options name, decided without importing torch where no
CUDA device can be present: the launcher plans a CPU run without loading torch (about a second of
every run's start-up)."""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def cuda_available() -> bool:
    """torch's answer, asked only where the CUDA driver library loads: torch needs it for CUDA."""
    if sys.platform == "linux":
        try:
            ctypes.CDLL("libcuda.so.1")
        except OSError:
            return False
    import torch  # a driver is here: only torch can tell whether it runs

    return torch.cuda.is_available()


def device_type(device: str) -> str:
    """The kind of device `--device` names: 'auto' means CUDA when present, else CPU."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise ValueError(f"--device={device} asked for, but no CUDA device is available")
    return device.split(":", 1)[0]


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto`: bfloat16 on CUDA (float32 with TF32 only when asked), float32 on CPU.

    `device` is the --device given; "auto" counts as CUDA only where this process sees a
    GPU, so a launcher without one plans float32 for it.
    """
    if dtype != "auto":
        return dtype
    if device.startswith("cuda") or (device == "auto" and cuda_available()):
        return "bfloat16"
    return "float32"
