"""Faults real clusters produce: a worker process dying mid-bundle and the whole job killed with
SIGKILL at random moments. Each run either completes or leaves no manifest; the same command
run again then produces the complete output an uninterrupted run produces."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from samples.knowledge_base import write_shards
from tests.conftest import ROOT, assert_same_output, read_manifest, record
from transforms.output_owner import OWNER_FILE
from transforms.spill import SPILL_PREFIX


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_shards(root / "kb", rows=1000, shards=3)
    (root / "tmp").mkdir()  # the runs' TMPDIR, where a local run spills its shuffled values
    return root


def _env(corpus) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(corpus / "tmp")}


def _spill_folders(corpus) -> list[str]:
    return sorted(p.name for p in (corpus / "tmp").glob(f"{SPILL_PREFIX}*"))


def _command(corpus, output) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.run",
        "--input", f"{corpus}/kb/*.parquet", "--output", str(output),
        "--progress_interval", "0.1", "--rows_per_batch", "100",  # progress per small chunk: a visible middle
    ]  # fmt: skip


def _same_output(output, reference) -> None:
    assert_same_output(output, reference)
    manifest = read_manifest(output)
    published = ["manifest.json", *(name for names in manifest["files"].values() for name in names)]
    assert sorted(p.name for p in output.iterdir()) == sorted(published)  # nothing left from the killed run


@pytest.fixture(scope="module")
def reference(corpus):
    output = corpus / "uninterrupted"
    started = time.monotonic()
    result = subprocess.run(
        _command(corpus, output), cwd=ROOT, env=_env(corpus), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return output, time.monotonic() - started


def _start(corpus, output, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        _command(corpus, output), cwd=ROOT, env=_env(corpus), stderr=stderr, text=True, start_new_session=True
    )


def _wait_for_progress(job: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    for line in job.stderr:  # ends when the job does
        if "embedded" in line and "rows/s" in line or time.monotonic() > deadline:
            return


def test_a_worker_process_killed_mid_bundle_fails_the_run_without_a_manifest(corpus, reference):
    output = corpus / "worker-killed"
    job = _start(corpus, output)
    _wait_for_progress(job)
    python_workers = _python_workers(job)
    assert len(python_workers) == 2
    os.kill(python_workers[0], signal.SIGKILL)
    _, stderr = job.communicate(timeout=240)
    assert job.returncode == 1
    # What happened, in one line: it was Beam's "Channel closed prematurely", after its gRPC tracebacks.
    assert stderr.splitlines()[-1] == (
        "error: a worker process was killed by SIGKILL (as the kernel's out-of-memory killer does when memory "
        "runs out); no manifest.json was written, so nothing was published; running the same command again "
        "replaces the partial files"
    )
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert "WARNING pipeline.run: a worker process was killed by SIGKILL (" in stderr  # as the death is seen
    assert not (output / "manifest.json").exists()

    rerun = subprocess.run(
        _command(corpus, output), cwd=ROOT, env=_env(corpus), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    _same_output(output, reference[0])
    record("fault", "SDK worker process SIGKILLed mid-bundle", "run fails, no manifest; rerun complete")


def test_a_worker_process_killed_before_it_connects_fails_the_run_at_once(corpus):
    """Beam's local runner waited for ever for a worker that died before it connected: a night that never
    ended. Killed as soon as it exists (its imports take seconds before it connects), the run ends."""
    output = corpus / "worker-killed-early"
    job = _start(corpus, output)
    deadline = time.monotonic() + 120
    while not (workers := _python_workers(job)) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(workers[0], signal.SIGKILL)
    try:
        _, stderr = job.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        raise
    assert job.returncode == 1
    warning, error = stderr.splitlines()[-2:]
    killed = "a worker process was killed by SIGKILL (as the kernel's out-of-memory killer does when memory runs out)"
    assert warning.endswith(f" WARNING pipeline.run: {killed}")
    assert error == (
        f"error: {killed}; no manifest.json was written, so nothing was published; running the same command again "
        "replaces the partial files"
    )
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert list(output.iterdir()) == []
    assert _python_workers(job) == []  # the other worker was ended too
    record("fault", "SDK worker SIGKILLed before connecting", "run fails at once, no manifest")


def _python_workers(job: subprocess.Popen) -> list[int]:
    """The job's worker processes (the shell that started each exec'd it)."""
    found = subprocess.run(["pgrep", "-f", "-s", str(job.pid), "pipeline.worker"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def _kill_at(corpus, output, moment: float) -> float:
    """Start the job and SIGKILL it `moment` seconds in; returns the moment. A run that finishes
    sooner (runs vary in speed on a shared machine) is started again, to be killed at half the time."""
    for _ in range(4):
        job = _start(corpus, output, stderr=subprocess.DEVNULL)
        try:
            job.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=60)
            assert job.returncode == -signal.SIGKILL
            return moment
        assert job.returncode == 0
        shutil.rmtree(output)
        moment /= 2
    pytest.fail(f"the job finished within {moment:.1f}s four times: never killed")


def test_the_whole_job_killed_at_random_moments_then_rerun_gives_the_same_output(corpus, reference):
    reference_output, seconds = reference
    rng = random.Random(20261122)  # one random moment in each of the early, middle and late part of a run
    moments = [rng.uniform(start, start + 0.25) * seconds for start in (0.05, 0.3, 0.55)]
    for n, moment in enumerate(moments):
        output = corpus / f"killed-{n}"
        moment = _kill_at(corpus, output, moment)
        if (output / "manifest.json").exists():  # killed after publishing, while shutting down: complete
            outcome = "killed after publishing: output complete"
        else:
            killed_spill = _spill_folders(corpus)
            rerun = subprocess.run(
                _command(corpus, output), cwd=ROOT, env=_env(corpus), capture_output=True, text=True, timeout=300
            )
            assert rerun.returncode == 0, rerun.stderr
            assert _spill_folders(corpus) == []  # the killed run's folder, if it had made one, went too
            if killed_spill:
                assert "left by killed local runs" in rerun.stderr
            outcome = "no manifest; rerun identical"
        _same_output(output, reference_output)
        case = f"whole job SIGKILLed at {moment:.1f}s of {seconds:.1f}s"
        record("fault", case, outcome, sorted((corpus / "kb").glob("*.parquet")), output)


def _owner_run_id(output) -> str | None:
    try:
        return json.loads((output / OWNER_FILE).read_text())["run_id"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _wait_for_owner(output, other_than: str | None = None) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run_id = _owner_run_id(output)
        if run_id and run_id != other_than:
            return run_id
        time.sleep(0.05)
    pytest.fail(f"no run took {output} over within 120 s")


def test_a_second_run_on_the_same_output_takes_it_over_and_the_first_stops_naming_it(corpus, reference):
    """An orchestrator retrying a task it lost track of starts the same job again while the first
    still runs: the later run publishes the complete output, the earlier stops without touching it."""
    output = corpus / "two-runs"
    first = _start(corpus, output)
    first_id = _wait_for_owner(output)
    second = subprocess.Popen(
        _command(corpus, output), cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    second_id = _wait_for_owner(output, other_than=first_id)
    time.sleep(1)  # the second run has cleared the folder; what the first renamed into place since is unlisted
    stray = output / "embeddings-00007-of-00009.parquet"
    shutil.copy(sorted((reference[0]).glob("embeddings-*.parquet"))[0], stray)
    _, first_err = first.communicate(timeout=300)
    _, second_err = second.communicate(timeout=300)
    assert second.returncode == 0, second_err
    assert first.returncode == 1
    assert first_err.splitlines()[-1].startswith(f"error: {output} was taken over by run {second_id} (started ")
    assert first_err.splitlines()[-1].endswith(
        f"while run {first_id} wrote to it; this run stops without publishing and leaves that run's files alone"
    )
    assert read_manifest(output)["run_id"] == second_id
    assert not stray.exists()
    _same_output(output, reference[0])  # only the second run's files: no owner file, no temporary folder
    record(
        "fault",
        "a second run started on the same --output",
        "the first stops naming it; the second publishes",
        sorted((corpus / "kb").glob("*.parquet")),
        output,
    )
