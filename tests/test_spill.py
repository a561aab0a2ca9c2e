"""A local run's spill folder: removed when the run ends, and by the next run when it was killed outright."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile

from tests.conftest import ROOT, record
from transforms.spill import spill_folder

_HOLD = """
import time
from transforms.spill import spill_folder
with spill_folder() as folder:
    with open(folder + "/value", "wb") as f:
        f.write(bytes(3 * 2**20))
    print(folder, flush=True)
    time.sleep(300)
"""


def _holder(root) -> tuple[subprocess.Popen, str]:
    """A process holding a spill folder under `root` (as TMPDIR) with 3 MiB in it, and that folder's name."""
    env = {**os.environ, "TMPDIR": str(root)}
    process = subprocess.Popen([sys.executable, "-c", _HOLD], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    return process, os.path.basename(process.stdout.readline().strip())


def test_a_killed_runs_spill_folder_is_removed_by_the_next_run_and_a_live_runs_kept(tmp_path, monkeypatch, caplog):
    killed, killed_folder = _holder(tmp_path)
    live, live_folder = _holder(tmp_path)
    try:
        killed.kill()  # SIGKILL: no finally block runs, the folder stays
        killed.wait(timeout=60)
        (tmp_path / "embed-spill-not-a-folder").write_text("")
        assert sorted(os.listdir(tmp_path)) == sorted([killed_folder, live_folder, "embed-spill-not-a-folder"])

        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        with caplog.at_level(logging.INFO, logger="transforms.spill"), spill_folder() as mine:
            assert sorted(os.listdir(tmp_path)) == sorted(
                [live_folder, os.path.basename(mine), "embed-spill-not-a-folder"]
            )
        assert caplog.messages == [f"removed 1 spill folder(s) under {tmp_path} (3.0 MiB) left by killed local runs"]
        assert sorted(os.listdir(tmp_path)) == sorted([live_folder, "embed-spill-not-a-folder"])  # its own gone
        assert os.listdir(tmp_path / live_folder) == ["value"]
    finally:
        live.kill()
        live.wait(timeout=60)
    record("fault", "local run SIGKILLed, its spill folder left", "removed by the next run; a live run's kept")
