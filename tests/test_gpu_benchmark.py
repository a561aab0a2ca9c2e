"""`python -m benchmarks.gpu` must run where Beam is not installed: a smoke run on CPU without it;
`python -m benchmarks.gpu_job`, which brings Beam along, a smoke run on CPU of the job through its command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-carry") / "tokenizer"
    export = [sys.executable, "-m", "benchmarks.gpu", "--export-tokenizer", str(folder)]
    subprocess.run(export, cwd=ROOT, check=True, timeout=120)
    return folder


def test_gpu_benchmark_runs_without_beam(tmp_path, tokenizer):
    blocker = tmp_path / "no-beam" / "apache_beam"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('apache_beam is not installed on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker.parent}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "benchmarks.gpu", "--tokenizer", str(tokenizer), "--device", "cpu"]
    result = subprocess.run(
        [*command, "--rows", "300", "--shapes", "tiny,tiny-qwen3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header, *lines = result.stdout.strip().splitlines()[-5:]
    assert header.split()[:3] == ["model", "job", "rows/s"]
    for name, row, breakdown in zip(["tiny", "tiny-qwen3"], lines[::2], lines[1::2], strict=True):
        fields = row.split()
        assert fields[0] == name
        assert float(fields[-2]) > 0.9999 and float(fields[-1]) > 0.9999  # float32 on CPU: the same vectors
        parts = re.fullmatch(
            r"first pass ([\d.]+) s: tokenizer alone ([\d.]+) s, model alone \(shapes seen\) ([\d.]+) s, "
            r"other (-?[\d.]+) s; second pass ([\d.]+) s; (\d+) batches of (\d+) shapes, budget 8192 tokens",
            breakdown.strip(),
        )
        assert parts, breakdown
        first, tokenizer, model, other = (float(parts[i]) for i in range(1, 5))
        assert abs(first - tokenizer - model - other) <= 0.015  # each printed to 0.01 s
        batches, shapes = int(parts[6]), int(parts[7])
        assert 0 < shapes <= batches


def test_gpu_job_benchmark_runs_the_job_and_the_encoder_alone(tokenizer):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "benchmarks.gpu_job", "--tokenizer", str(tokenizer), "--device", "cpu"]
    result = subprocess.run(
        [*command, "--rows", "300", "--shapes", "tiny"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    device, header, row = result.stdout.strip().splitlines()[-3:]
    assert device.startswith("device: ") and device.endswith("; float32")
    assert header.split() == [
        "model",
        "rows",
        "job",
        "rows/s",
        "start-up",
        "s",
        "after",
        "start-up",
        "encoder",
        "alone",
        "after/encoder",
    ]
    fields = row.split()
    assert fields[:2] == ["tiny", "300"]
    job, startup, after, alone = (float(f) for f in fields[2:6])
    assert 0 < job < after and startup > 0 and alone > 0
    ratio = float(fields[6].removesuffix("x"))  # of the unrounded rates: the printed ones are whole rows/s
    assert (after - 0.5) / (alone + 0.5) - 0.005 <= ratio <= (after + 0.5) / (alone - 0.5) + 0.005
