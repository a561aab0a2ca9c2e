"""Run a command and measure its wall time and the peak memory of its whole process tree; name
the host it ran on.

Peak RSS is sampled from /proc every 50 ms over the command and all its
descendants (local Beam workers are child processes): summed, and per process.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from encoder.cpu_flags import first_core

_STARTUP = re.compile(r"start-up: ([0-9.]+)s")


def host() -> str:
    """CPU model, cores and its AVX2/AVX-512/AMX flags: every speed figure is quoted with them."""
    fields = first_core()
    if not fields:
        return f"host: {os.cpu_count()} cores, CPU flags unknown (no /proc/cpuinfo)"
    flags = sorted(f for f in fields.get("flags", "").split() if f == "avx2" or f.startswith(("avx512", "amx")))
    return (
        f"host: {fields.get('model name', 'unknown CPU')}, {os.cpu_count()} cores; flags: {' '.join(flags) or 'none'}"
    )


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss: int  # bytes, summed over the process tree at its largest
    stdout: str
    launcher_peak_rss: int = 0  # bytes, the command's own process at its largest
    worker_peak_rss: int = 0  # bytes, the largest peak of any one descendant process


def _tree_rss(root: int) -> dict[int, int]:
    """RSS in bytes of `root` and each of its descendants, by pid."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
        rss[int(entry.name)] = next(
            (int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
    tree, stack = {}, [root]
    while stack:
        pid = stack.pop()
        tree[pid] = rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return tree


def run_measured(command: list[str], env: dict | None = None) -> Measured:
    """Run `command` to the end; raise with its output if it fails."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    peak = 0
    peaks: dict[int, int] = {}

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            tree = _tree_rss(process.pid)
            peak = max(peak, sum(tree.values()))
            for pid, rss in tree.items():
                peaks[pid] = max(peaks.get(pid, 0), rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    seconds = time.monotonic() - started
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output[-4000:]}")
    workers = [rss for pid, rss in peaks.items() if pid != process.pid]
    return Measured(seconds, peak, output, peaks.get(process.pid, 0), max(workers, default=0))


def startup_seconds(output: str) -> float:
    """The start-up a local run of the job states in its log (the command to the first rows reaching a loaded model)."""
    found = _STARTUP.search(output)
    if found is None:
        raise RuntimeError(f"the job stated no start-up:\n{output[-2000:]}")
    return float(found.group(1))
