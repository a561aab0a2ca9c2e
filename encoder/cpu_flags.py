"""What this CPU supports, as Linux reports it: read without torch, so that the launcher can
advise on precision without importing it."""

from __future__ import annotations

from pathlib import Path

AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl"}  # what oneDNN's AVX-512 float32 kernels use


CPUINFO = Path("/proc/cpuinfo")


def first_core(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """What Linux reports for the CPU's first core (vendor_id, model name, flags ...); empty elsewhere."""
    try:
        first = cpuinfo.read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in fields.items()}


def cpu_features(cpuinfo: Path = CPUINFO) -> tuple[str, set[str]]:
    """The CPU's vendor and flags; empty elsewhere."""
    fields = first_core(cpuinfo)
    return fields.get("vendor_id", ""), set(fields.get("flags", "").split())


def amx_bf16() -> bool:
    """Whether this CPU has AMX bfloat16 matrix units (Intel Xeon since Sapphire Rapids), which oneDNN
    runs bfloat16 products on: on a 2-core Xeon the job ran 2.6-2.9x faster end to end in bfloat16
    than in float32 (README, Precision). It only prompts a hint at start: float32 stays the CPU default."""
    return "amx_bf16" in cpu_features()[1]
