"""The tests start the job's commands forked from a process that has imported its modules
(tests/forked_commands.py): such a command ends as the same command in a new interpreter does, in the
environment the test has at the call."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import COMMANDS, write_parquet
from tests.forked_commands import NEW_INTERPRETERS, Command


def _end(args: tuple[str, ...]) -> tuple[tuple, tuple]:
    """The ends of `python -m pipeline.run args`, forked and in a new interpreter."""
    forked = COMMANDS.start("pipeline.run", args).wait(120)
    new = Command.new_interpreter("pipeline.run", args).wait(120)
    return (forked.returncode, forked.stdout, forked.stderr), (new.returncode, new.stdout, new.stderr)


def test_a_forked_command_fails_as_in_a_new_interpreter(tmp_path):
    forked, new = _end(("--input", f"{tmp_path}/missing/*.parquet", "--output", str(tmp_path / "out")))
    assert forked == new == (1, "", f"error: no file matches --input pattern '{tmp_path}/missing/*.parquet'\n")


def test_a_forked_command_reads_the_environment_the_test_has_at_the_call(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    default = COMMANDS.start("pipeline.run", ("--help",)).wait(120)
    monkeypatch.setenv("COLUMNS", "61")  # argparse wraps the help to it
    forked, new = _end(("--help",))
    assert forked == new and forked[0] == 0
    assert len(forked[1].splitlines()) > len(default.stdout.splitlines()) > 400


def test_a_command_past_its_timeout_is_killed(tmp_path):
    write_parquet(tmp_path / "kb" / "a.parquet", id=["a"], text=["a text"])
    command = COMMANDS.start("pipeline.run", ("--input", f"{tmp_path}/kb/*.parquet", "--output", str(tmp_path / "o")))
    with pytest.raises(subprocess.TimeoutExpired):
        command.wait(0.5)
    for _ in range(100):  # bounded: 10 s for the server to reap it
        if not Path(f"/proc/{command.pid}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{command.pid}").exists() and not (tmp_path / "o" / "manifest.json").exists()


@pytest.mark.skipif(NEW_INTERPRETERS, reason="JOB_TESTS_NEW_INTERPRETERS=1: no server")
def test_a_server_that_died_is_started_again():
    assert COMMANDS.start("pipeline.run", ("--help",)).wait(120).returncode == 0
    COMMANDS._server.kill()  # as the kernel's out-of-memory killer would
    COMMANDS._server.wait()
    assert COMMANDS.start("pipeline.run", ("--help",)).wait(120).returncode == 0
