"""The portable path that Flink and Dataflow Runner v2 use: a job service hands the job's
DoFns to an external SDK worker pool over the Fn API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from samples.knowledge_base import write_shards
from tests.conftest import ROOT, free_port, read_manifest, run_cli, wait_for_port

COUNTS = ("rows_in", "rows_out", "rows_embedded", "rows_reused", "rows_rejected", "rows_truncated", "tokens")


def _rows(output: Path) -> dict:
    table = pq.read_table(sorted(output.glob("embeddings-*.parquet")))
    return {row.pop("id"): row for row in table.to_pylist()}


def test_portable_runner_with_an_external_worker_pool_gives_the_local_runners_output(tmp_path):
    write_shards(tmp_path / "kb", rows=120, shards=2)
    port = free_port()
    # The pool starts SDK workers with `python` from PATH: this environment's.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    pool = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
        cwd=ROOT,
        env=env,
    )
    try:
        wait_for_port(port, pool)
        portable = run_cli(
            "--runner=PortableRunner", "--job_endpoint=embed",
            "--environment_type=EXTERNAL", f"--environment_config=localhost:{port}",
            "--input", f"{tmp_path}/kb/*.parquet", "--output", str(tmp_path / "portable"),
            "--carry_columns", "title,kind",
            timeout=240,
        )  # fmt: skip
    finally:
        pool.terminate()
        pool.wait(timeout=30)
    assert portable.returncode == 0, portable.stderr
    local = run_cli(
        "--input", f"{tmp_path}/kb/*.parquet", "--output", str(tmp_path / "local"), "--carry_columns", "title,kind"
    )  # fmt: skip
    assert local.returncode == 0, local.stderr

    portable_counts, local_counts = ({k: read_manifest(tmp_path / d)[k] for k in COUNTS} for d in ("portable", "local"))
    assert portable_counts == local_counts
    assert portable_counts["rows_embedded"] == 120
    portable_rows, local_rows = _rows(tmp_path / "portable"), _rows(tmp_path / "local")
    assert portable_rows.keys() == local_rows.keys()
    for key, row in portable_rows.items():
        other = local_rows[key]
        # Batches are cut differently by each runner's bundles: vectors equal up to float32 rounding.
        np.testing.assert_allclose(row.pop("embedding"), other.pop("embedding"), rtol=0, atol=1e-6)
        assert row == other  # title, kind, content_hash
