"""The portable path that Flink and Dataflow Runner v2 use: a job service hands the job's
DoFns to an external SDK worker pool over the Fn API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from samples.knowledge_base import write_shards
from tests.conftest import ROOT, assert_same_output, free_port, read_manifest, run_cli, wait_for_port


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

    assert read_manifest(tmp_path / "portable")["rows_embedded"] == 120
    assert_same_output(tmp_path / "portable", tmp_path / "local")
