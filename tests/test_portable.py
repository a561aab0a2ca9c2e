"""The portable path that Flink and Dataflow Runner v2 use: a job service hands the job's
DoFns to an external SDK worker pool over the Fn API."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

from samples.knowledge_base import write_shards
from tests.conftest import JOB, ROOT, assert_same_output, free_port, read_manifest, run_cli, wait_for_port
from transforms.output_owner import OWNER_FILE

# The pool starts SDK workers with `python` from PATH: this environment's.
POOL_ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_portable_runner_with_an_external_worker_pool_gives_the_local_runners_output(tmp_path):
    """The pool runs in another folder than the command, whose --output is relative: the workers
    wrote it under the pool's folder, and the run failed as `taken over by another run`."""
    write_shards(tmp_path / "kb", rows=120, shards=2)
    port = free_port()
    (tmp_path / "elsewhere").mkdir()
    pool = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
        cwd=tmp_path / "elsewhere",
        env={**POOL_ENV, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_for_port(port, pool)
        portable = run_cli(
            "--runner=PortableRunner", "--job_endpoint=embed",
            "--environment_type=EXTERNAL", f"--environment_config=localhost:{port}",
            "--input", f"{tmp_path}/kb/*.parquet", "--output", os.path.relpath(tmp_path / "portable", ROOT),
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


@contextlib.contextmanager
def job_service_and_workers() -> Iterator[tuple[list[str], beam_job_api_pb2_grpc.JobServiceStub]]:
    """A job service and an SDK worker pool of their own processes, as a Flink cluster's are: a job outlives
    the command that submitted it. Yields the job's runner options and a client of the job service."""
    job_port, pool_port = free_port(), free_port()
    servers = [
        subprocess.Popen(command, cwd=ROOT, env=POOL_ENV)
        for command in (
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={job_port}"],
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"],
        )
    ]
    try:
        for port, server in zip((job_port, pool_port), servers, strict=True):
            wait_for_port(port, server)
        with grpc.insecure_channel(f"localhost:{job_port}") as channel:
            options = ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                       "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"]  # fmt: skip
            yield options, beam_job_api_pb2_grpc.JobServiceStub(channel)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


def job_states(jobs: beam_job_api_pb2_grpc.JobServiceStub) -> list[str]:
    return [
        beam_job_api_pb2.JobState.Enum.Name(job.state)
        for job in jobs.GetJobs(beam_job_api_pb2.GetJobsRequest()).job_info
    ]


def wait_for(condition, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.2)
    raise TimeoutError(f"not so after {seconds}s")


def test_a_remote_job_whose_command_is_stopped_is_cancelled_and_its_output_left_for_the_next_run(tmp_path):
    """Stopping the command that waits for a remote job (Ctrl-C, an orchestrator's timeout) left the job
    running, with its output removed from under it: it embedded on, then failed as taken over."""
    write_shards(tmp_path / "kb", rows=3000, shards=2)
    with job_service_and_workers() as (runner, jobs):
        output = tmp_path / "out"
        command = [*JOB, *runner, "--input", f"{tmp_path}/kb/*.parquet", "--output", str(output)]
        launcher = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: job_states(jobs) == ["RUNNING"], 120)
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=60)
        assert launcher.returncode == 1
        assert "asked the runner to cancel the job; its partial output is left for the next run to replace" in stderr
        assert stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM; no manifest.json was written")
        assert wait_for(lambda: job_states(jobs) == ["CANCELLED"], 60)
    assert (output / OWNER_FILE).exists() and not (output / "manifest.json").exists()


def test_a_remote_job_submitted_without_waiting_exits_0_and_publishes_when_it_ends(tmp_path):
    """--no_wait_until_finish, a Beam option passed through: the command read the manifest at once and
    exited 1 for a healthy job, which an orchestrator retrying on failure would have replaced."""
    write_shards(tmp_path / "kb", rows=200, shards=2)
    with job_service_and_workers() as (runner, jobs):
        output = tmp_path / "out"
        submitted = run_cli(*runner, "--no_wait_until_finish", "--input", f"{tmp_path}/kb/*.parquet",
                            "--output", str(output))  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        assert "the job was submitted and runs on; it writes manifest.json when it has finished" in submitted.stderr
        assert wait_for(lambda: job_states(jobs) == ["DONE"], 180)
    assert read_manifest(output)["rows_embedded"] == 200


@contextlib.contextmanager
def pool_that_cannot_start_a_worker(tmp_path: Path) -> Iterator[list[str]]:
    """A worker pool whose `python` exits at once, as one started where `python` lacks Beam: yields the
    runner options that use it."""
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "python").write_text("#!/bin/sh\nexit 1\n")
    (broken / "python").chmod(0o755)
    port = free_port()
    pool = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{broken}{os.pathsep}{os.environ['PATH']}"},
    )
    try:
        wait_for_port(port, pool)
        yield ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
               f"--environment_config=localhost:{port}"]  # fmt: skip
    finally:
        pool.terminate()
        pool.wait(timeout=30)


def test_a_portable_run_whose_pool_cannot_start_a_worker_ends_at_the_first_stop(tmp_path):
    """A pool whose `python` cannot start a worker leaves the run waiting for one. Stopped, the launcher
    said so and then stayed alive, waiting for its embedded job service's threads, until a second SIGTERM."""
    write_shards(tmp_path / "kb", rows=20, shards=1)
    launcher = None
    with pool_that_cannot_start_a_worker(tmp_path) as runner:
        try:
            command = [*JOB, *runner, "--input", f"{tmp_path}/kb/*.parquet", "--output", str(tmp_path / "out")]
            launcher = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
            for line in launcher.stderr:  # planned: the job is submitted, and waits for a worker
                if " INFO pipeline.run: embedding " in line:
                    break
            time.sleep(5)
            launcher.send_signal(signal.SIGTERM)
            _, stderr = launcher.communicate(timeout=60)
        finally:
            if launcher is not None and launcher.poll() is None:
                launcher.kill()
    assert launcher.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM; no manifest.json was written")


def test_a_portable_run_whose_pool_starts_no_worker_fails_once_the_start_timeout_is_up(tmp_path):
    """It waited, silent, until stopped: a nightly run so held its slot until someone looked."""
    write_shards(tmp_path / "kb", rows=20, shards=1)
    with pool_that_cannot_start_a_worker(tmp_path) as runner:
        result = run_cli(*runner, "--input", f"{tmp_path}/kb/*.parquet", "--output", str(tmp_path / "out"),
                         "--worker_start_timeout", "3", timeout=120)  # fmt: skip
    pool = runner[-1].split("=", 1)[1]
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the worker pool at {pool} started no worker that connected within 3s (--worker_start_timeout): "
        "its log says why; a pool started where `python` lacks apache_beam or this project starts workers that "
        "exit at once"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def run_on_a_pool(tmp_path: Path, cwd: Path, env: dict[str, str]) -> tuple[int, subprocess.CompletedProcess]:
    """The job on tmp_path/kb through a worker pool started in `cwd` with `env`: the pool's port, and the run."""
    port = free_port()
    pool = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
        cwd=cwd,
        env=env,
    )
    try:
        wait_for_port(port, pool)
        return port, run_cli("--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                             f"--environment_config=localhost:{port}", "--input", f"{tmp_path}/kb/*.parquet",
                             "--output", str(tmp_path / "out"), timeout=120)  # fmt: skip
    finally:
        pool.terminate()
        pool.wait(timeout=30)


def test_a_portable_run_whose_pool_has_no_python_fails_naming_it(tmp_path):
    """The pool could not start `python` (a container or virtual environment with python3 only): Beam's
    RuntimeError ended the run with a traceback naming neither the pool nor the fix."""
    write_shards(tmp_path / "kb", rows=20, shards=1)
    (tmp_path / "empty-bin").mkdir()
    port, result = run_on_a_pool(tmp_path, ROOT, {**os.environ, "PATH": str(tmp_path / "empty-bin")})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the worker pool at localhost:{port} could not start a worker (FileNotFoundError: ")
    assert last.endswith("): it starts `python` from its PATH, which must have apache_beam and this project")
    assert "Traceback" not in result.stderr


def test_a_portable_run_whose_workers_lack_this_project_fails_saying_so(tmp_path):
    """A pool whose `python` has Beam but not this project starts workers that connect, then fail to load
    the job's steps: the run ended with Beam's traceback and its last line of the job service's error."""
    write_shards(tmp_path / "kb", rows=20, shards=1)
    # The pool's `python`: this environment's, less the project's editable install (`make` installs it).
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    forget = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; exec(sys.argv[1])"
    (bare / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "{forget}" "$2"\n')
    (bare / "python").chmod(0o755)
    (tmp_path / "elsewhere").mkdir()
    _, result = run_on_a_pool(
        tmp_path,
        tmp_path / "elsewhere",  # not the project's folder, and no PYTHONPATH to it
        {
            **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            "PATH": f"{bare}{os.pathsep}{os.environ['PATH']}",
        },
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: the job's workers cannot import this project \(ModuleNotFoundError: No module named "
        r"'(pipeline|transforms|encoder|schemas)[\w.]*'\): install it where they run \(`pip install \.` into a "
        r"worker pool's Python; on Dataflow and Flink the worker image deploy/gpu-worker/Dockerfile builds\); "
        r"no manifest\.json was written, so nothing was published; .*",
        last,
    ), last
    assert "Traceback (most recent call last):\n" not in result.stderr  # the job service's, one line each
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_portable_run_whose_pool_does_not_answer_fails_naming_it(tmp_path):
    """It failed with gRPC's traceback, which named neither the pool's option nor how to start one."""
    write_shards(tmp_path / "kb", rows=20, shards=1)
    port = free_port()  # nothing listens there
    result = run_cli("--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                     f"--environment_config=localhost:{port}", "--input", f"{tmp_path}/kb/*.parquet",
                     "--output", str(tmp_path / "out"), timeout=120)  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the worker pool at localhost:{port} (--environment_config) did not answer: ")
    assert last.endswith("; start it there (python -m apache_beam.runners.worker.worker_pool_main --service_port=PORT)")
    assert "Traceback" not in result.stderr
