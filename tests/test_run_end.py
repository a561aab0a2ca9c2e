"""The end of a run: the progress line's last count, and a run stopped by a signal."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.run as run_module
from samples.knowledge_base import write_shards
from schemas.inputs import InputError
from tests.conftest import ROOT, run_cli, write_parquet
from transforms.progress_report import EMBEDDED_TAG, ProgressReport


def test_a_bundles_end_reports_the_count_the_interval_held_back(caplog):
    progress = ProgressReport(interval=3600.0)
    with caplog.at_level(logging.INFO, logger="transforms.progress_report"):
        progress.flush()  # nothing embedded nor reported yet: nothing to say
        progress.add(0)  # the model is loaded: reported at once
        progress.add(40)  # within the interval: held back
        progress.add(2)
        progress.flush()  # the bundle ends: the launcher's line must end on 42, not 0
        progress.flush()  # nothing moved since: no second report
    counts = [int(r.getMessage().split()[-1]) for r in caplog.records if EMBEDDED_TAG in r.getMessage()]
    assert counts == [0, 42]


def _ctrl_c_restored() -> None:
    """The job's own SIGINT disposition: a test run in the background (`make test &`) has it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    "rows, in_process, by",
    [(600, False, "SIGTERM"), (300, True, "SIGTERM"), (600, False, "SIGINT")],
    ids=["worker-processes", "in-process", "ctrl-c-to-the-process-group"],
)
def test_a_run_stopped_mid_embedding_exits_1_with_one_error_line_and_publishes_nothing(tmp_path, rows, in_process, by):
    """300 rows (83 KiB of text) run in the launcher's process, 600 in worker processes. An orchestrator
    stops the launcher alone (SIGTERM); a terminal's Ctrl-C reaches every process of the group."""
    write_shards(tmp_path / "kb", rows=rows, shards=2)
    output = tmp_path / "out"
    command = [
        sys.executable, "-m", "pipeline.run", "--input", f"{tmp_path}/kb/*.parquet", "--output", str(output),
        "--progress_interval", "0.1", "--rows_per_batch", "50",
    ]  # fmt: skip
    job = subprocess.Popen(
        command, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_ctrl_c_restored
    )
    try:
        seen = []
        for line in job.stderr:
            seen.append(line)
            if "rows/s, about" in line:
                if by == "SIGTERM":
                    job.send_signal(signal.SIGTERM)
                else:
                    os.killpg(job.pid, signal.SIGINT)
                stopped = time.monotonic()
                break
        else:
            pytest.fail("no progress before the job ended:\n" + "".join(seen))
        rest = job.stderr.read()
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert time.monotonic() - stopped < 30
    assert job.returncode == 1, rest
    assert rest.splitlines()[-1] == (
        f"error: stopped by {by}; no manifest.json was written, so nothing was published; running the same "
        "command again replaces the partial files"
    )
    assert ("workers: one, in this process" in "".join(seen)) == in_process
    # Worker processes killed at the stop go quietly: they aborted ("terminate called without an active
    # exception"), each with Beam's traceback of a worker that exited, when Beam ended them. A worker in
    # the launcher's process logged the stop as its failure, with a traceback. Given Ctrl-C themselves,
    # worker processes printed a KeyboardInterrupt traceback each, and Beam's data plane its lost channel.
    assert "Traceback" not in rest and "terminate called" not in rest and "ERROR" not in rest, rest
    assert not (output / "manifest.json").exists()
    assert list(output.iterdir()) == []  # the temporary folders and the owner file went with the failure


# A stop that comes as the launcher reads the manifest back once the pipeline has ended.
STOP_AS_PUBLISHED = """
import os, signal, sys
import pipeline.run as run
read = run._read_manifest
def stopped_as_read(output):
    os.kill(os.getpid(), signal.SIGTERM)
    return read(output)
run._read_manifest = stopped_as_read
"""
# The job's command, with that stop.
STOPPED_AS_PUBLISHED = STOP_AS_PUBLISHED + "run._exit(run.main(started=run.process_started()))\n"


def test_a_stop_once_the_manifest_is_written_leaves_the_run_published_and_exits_0(tmp_path):
    """It said `stopped by SIGTERM; no manifest.json was written`, exit 1, of a published output, which a
    rerun then refused as a finished run's; on Cloud Storage it could hang on the storage client's lock."""
    shard = write_parquet(tmp_path / "in.parquet", id=["a", "b"], text=["one", "two"])
    output = tmp_path / "out"
    command = [sys.executable, "-c", STOPPED_AS_PUBLISHED, "--input", str(shard), "--output", str(output)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "WARNING pipeline.run: stopped by SIGTERM after the manifest was written: the output is complete" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("embedded 2 of 2 rows ")
    assert sorted(path.name for path in output.iterdir() if not path.name.startswith("embeddings-")) == [
        "manifest.json",
        "rejected-00000-of-00001.parquet",
    ]


STOPPED_THEN_RUN_AGAIN = (
    STOP_AS_PUBLISHED
    + """
shard, output = sys.argv[1:]
assert run.main(["--input", shard, "--output", output + "-1"], started=run.process_started()) == 0
run._read_manifest = read
sys.stderr.write("SECOND RUN\\n")
run._exit(run.main(["--input", shard, "--output", output + "-2"], started=run.process_started()))
"""
)


def test_a_stop_is_told_of_the_run_it_stopped_not_of_the_next_run_in_the_process(tmp_path):
    """A process that runs the job twice (a scheduler's task calling main) said of its second, unstopped
    run that it had been stopped by the first's signal: the stop was kept for the process, not the run."""
    shard = write_parquet(tmp_path / "in.parquet", id=["a", "b"], text=["one", "two"])
    command = [sys.executable, "-c", STOPPED_THEN_RUN_AGAIN, str(shard), str(tmp_path / "out")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    first, second = result.stderr.split("SECOND RUN\n")
    assert "stopped by SIGTERM after the manifest was written" in first
    assert "stopped by" not in second
    assert result.stdout.count("embedded 2 of 2 rows ") == 2


STOPPED_THEN_FAILED = """
import os, signal, sys
import pipeline.run as run
build = run.build_pipeline
def stopped_as_built(*args):
    os.kill(os.getpid(), signal.SIGTERM)
    return build(*args)
run.build_pipeline = stopped_as_built
good, corrupt, output = sys.argv[1:]
assert run.main(["--input", good, "--output", output + "-1"], started=run.process_started()) == 1
run.build_pipeline = build
sys.stderr.write("SECOND RUN\\n")
workers = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]  # its failure comes wrapped
run._exit(run.main(["--input", corrupt, "--output", output + "-2", *workers], started=run.process_started()))
"""


def test_a_run_stopped_midway_leaves_the_next_runs_failure_told_as_it_is(tmp_path):
    """After a run in the process was stopped, the next one's own failure (a page failing its checksum,
    in a worker) was told as `stopped by SIGTERM`, and Beam's records of it left out as a stop's."""
    good = write_parquet(tmp_path / "good.parquet", id=["a", "b"], text=["one", "two"])
    corrupt = tmp_path / "corrupt.parquet"
    pq.write_table(pa.table({"id": ["c"], "text": ["a text long enough to find " * 40]}), corrupt,
                   compression="none", write_page_checksum=True)  # fmt: skip
    data = bytearray(corrupt.read_bytes())
    data[data.index(b"a text long enough") + 100] ^= 0x01
    corrupt.write_bytes(data)
    command = [sys.executable, "-c", STOPPED_THEN_FAILED, str(good), str(corrupt), str(tmp_path / "out")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    first, second = result.stderr.split("SECOND RUN\n")
    assert first.splitlines()[-1].startswith("error: stopped by SIGTERM; ")
    assert result.returncode == 1
    assert "stopped by" not in second
    assert second.splitlines()[-1].startswith(f"error: {corrupt}: "), second
    assert "CRC checksum verification failed" in second.splitlines()[-1]


def test_an_interrupt_is_one_error_line_and_exit_1(monkeypatch, capsys):
    def interrupted(argv, started):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run", interrupted)
    monkeypatch.setattr(run_module, "_STOPPED_BY", [])
    monkeypatch.setattr(run_module, "_catch_stops", lambda: None)  # pytest keeps its own handlers
    assert run_module.main(["--input", "x", "--output", "y"]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: stopped by SIGINT; no manifest.json")


def test_a_newline_in_a_named_file_cannot_end_the_error_line_early(monkeypatch, capsys):
    """A file may be named `x\nerror: all good.parquet`: printed as it is, the last line of stderr
    would be the file name's own `error: all good.parquet`."""

    def refused(argv, started):
        raise InputError("in/x\nerror: all good.parquet: not a readable Parquet file")

    monkeypatch.setattr(run_module, "run", refused)
    monkeypatch.setattr(run_module, "_catch_stops", lambda: None)
    assert run_module.main(["--input", "x", "--output", "y"]) == 1
    assert capsys.readouterr().err == "error: in/x\\nerror: all good.parquet: not a readable Parquet file\n"


def test_threads_of_one_process_add_to_one_count(tmp_path):
    """Several threads in one worker process (two per GPU on a machine with GPUs; here Beam's
    multi_threading mode) each embed their share: the line counts every row, not one thread's."""
    write_shards(tmp_path / "kb", rows=200, shards=4)
    result = run_cli(
        "--input", f"{tmp_path}/kb/*.parquet", "--output", str(tmp_path / "out"), "--rows_per_batch", "50",
        "--direct_running_mode", "multi_threading", "--direct_num_workers", "2", "--progress_interval", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if " rows/s" in line]
    assert lines[-1].split(" INFO progress: ")[1].startswith("embedded 200 of 200 rows (100%), ")


def test_rows_rejected_leave_the_lines_total(tmp_path):
    """A wrong --id_column (a category) rejects most rows as duplicates: the line still ends at 100%."""
    ids = [f"id{i}" for i in range(60)] + [f"id{i}" for i in range(40)]
    shard = write_parquet(tmp_path / "kb.parquet", id=ids, text=[f"text {i} on VPN tokens" for i in range(100)])
    result = run_cli("--input", str(shard), "--output", str(tmp_path / "out"), "--progress_interval", "0.2")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if " rows/s" in line]
    last = lines[-1].split(" INFO progress: ")[1]
    assert last.startswith("embedded 60 of 60 rows (100%), ") and last.endswith(", 40 rows rejected")


def test_a_published_run_ignores_stops_while_the_interpreter_shuts_down():
    """Python puts the default handlers back as it shuts down (half a second with torch loaded): a SIGTERM
    landing then, after the summary was printed, killed the command with 143, a failed night to a scheduler.
    An ignored signal stays ignored through the shutdown."""
    script = (
        "import atexit, signal, pipeline.run as run\n"
        "run._catch_stops()\n"
        "stops = (signal.SIGINT, signal.SIGTERM)\n"
        "atexit.register(lambda: print([signal.getsignal(s) is signal.SIG_IGN for s in stops]))\n"
        "run._exit(0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[True, True]\n"


STOPPED_WHILE_BUILDING = """
import os, signal, sys
import pipeline.run as run

def stopped(*args):
    os.kill(os.getpid(), signal.SIGTERM)

run.build_pipeline = stopped
run._exit(run.main(started=run.process_started()))
"""


def test_a_run_stopped_while_its_pipeline_is_built_leaves_no_temporary_folder(tmp_path):
    """Beam removes the folder it makes for a pipeline only once it ran it: each stop while the job built
    its pipeline left an empty beam-pipeline-temp folder in the temporary folder, which no run removes."""
    shard = write_parquet(tmp_path / "in.parquet", id=["a"], text=["one"])
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    command = [sys.executable, "-c", STOPPED_WHILE_BUILDING, "--input", str(shard), "--output", str(tmp_path / "out")]
    env = {**os.environ, "TMPDIR": str(temporary)}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM; no manifest.json was written")
    assert list(temporary.iterdir()) == []


UNREAD_MANIFEST = """
import os
import pipeline.run as run

def out_of_reach(output):  # the storage's client spent its retries (a bucket unreachable after the pipeline)
    if os.environ.get("NONE_WRITTEN"):  # as a runner that ran nothing (Dataflow's --dry_run) leaves it
        os.remove(os.path.join(output, "manifest.json"))
    raise OSError("storage out of reach")

run._read_manifest = out_of_reach
run._exit(run.main(started=run.process_started()))
"""


@pytest.mark.parametrize("written", [True, False])
def test_a_run_published_whose_manifest_cannot_be_read_back_exits_0_saying_so(tmp_path, written):
    """Storage out of reach just after the pipeline wrote the manifest (on gs://, for longer than the
    client's retries): the command said nothing was published and asked for a rerun, which was then refused
    as the directory held a finished run. Where no manifest is there, the run failed."""
    shard = write_parquet(tmp_path / "in.parquet", id=["a", "b"], text=["one", "two"])
    output = tmp_path / "out"
    command = [sys.executable, "-c", UNREAD_MANIFEST, "--input", str(shard), "--output", str(output)]
    env = {**os.environ, "NONE_WRITTEN": "" if written else "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    if not written:
        assert result.returncode == 1
        assert result.stderr.splitlines()[-1] == (
            "error: the job failed (OSError: storage out of reach); no manifest.json was written, so nothing was "
            "published; running the same command again replaces the partial files"
        )
        return
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1].endswith(
        " WARNING pipeline.run: the run is published (its manifest.json written), but reading it back failed "
        "(storage out of reach): no summary to print"
    )
    assert result.stdout == ""
    assert json.loads((output / "manifest.json").read_text())["rows_embedded"] == 2


OWNER_UNREADABLE = """
import pipeline.run as run
from transforms.output_owner import OutputOwner

check, build, built = OutputOwner.check, run.build_pipeline, []

def built_then(*args):
    built.append(True)
    return build(*args)

def out_of_reach(self):  # once the run started (its workers are processes of their own)
    if built:
        raise OSError("storage out of reach")  # the storage's client spent its retries
    return check(self)

OutputOwner.check, run.build_pipeline = out_of_reach, built_then
run._exit(run.main(started=run.process_started()))
"""


def test_an_owner_file_unreadable_after_a_failure_is_one_warning_line(tmp_path):
    """A failed run whose owner file cannot be read back (the bucket out of reach) logged the storage client's
    whole traceback, some 400 lines, before its own error line."""
    shard = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["c"], "text": ["a text long enough to find " * 40]}), shard,
                   compression="none", write_page_checksum=True)  # fmt: skip
    data = bytearray(shard.read_bytes())
    data[data.index(b"a text long enough") + 100] ^= 0x01  # a page failing its checksum, in the run
    shard.write_bytes(data)
    command = [sys.executable, "-c", OWNER_UNREADABLE, "--input", str(shard), "--output", str(tmp_path / "out"),
               "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    said = f"could not read {tmp_path / 'out'}'s owner file after the run failed (storage out of reach)"
    assert f" WARNING pipeline.run: {said}\n" in result.stderr
    assert "CRC checksum verification failed" in result.stderr.splitlines()[-1]
