"""Which run owns an output directory, so that two runs on one `--output` never both publish.

An orchestrator that retries a task it lost track of (or a person running the same command
twice) starts a second run while the first still writes. Each run takes its output over when
it starts by writing `_owner.json` with its run id; the later run wins. A run that no longer
owns the directory stops before it opens another file, renames a file into place, merges files
or writes a manifest, and when it fails it leaves the directory (the owner's temporary folders
included) alone. The owner publishes, then removes `_owner.json`. There is no lock to clear by
hand: a killed run's `_owner.json` is replaced by the next run's. (The name starts with `_`,
which Spark, DuckDB and Hive skip when they read a folder.)
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

OWNER_FILE = "_owner.json"
_LOG = logging.getLogger(__name__)


class OutputTakenOver(RuntimeError):
    """Another run took this run's output directory over after it started."""


@dataclass(frozen=True)
class OutputOwner:
    """Run `run_id`'s hold on the directory `output`; small enough to travel to every worker."""

    output: str
    run_id: str

    @property
    def path(self) -> str:
        return FileSystems.join(self.output, OWNER_FILE)

    def current(self) -> dict | None:
        """What `_owner.json` says now, or None when there is none."""
        return current_owner(self.output)

    def take(self, started_at: str) -> None:
        """Make this run the owner, replacing any earlier run (the file written whole, then renamed)."""
        try:
            earlier = self.current()
        except Exception as e:  # unreadable (a file system's fault, or someone's hand): replaced all the same
            _LOG.warning("%s: replacing an unreadable %s (%s)", self.output, OWNER_FILE, e)
            earlier = None
        if earlier and earlier.get("run_id") != self.run_id:
            _LOG.warning(
                "%s: taken over from run %s (%s); that run, if it is still going, stops without publishing",
                self.output,
                earlier.get("run_id"),
                _described(earlier),
            )
        owner = {"run_id": self.run_id, "started_at": started_at, "host": socket.gethostname(), "pid": os.getpid()}
        temp = f"{self.path}.{self.run_id}.tmp"
        with FileSystems.create(temp) as f:
            f.write(json.dumps(owner).encode())
        FileSystems.rename([temp], [self.path])

    def holds(self) -> bool:
        return (self.current() or {}).get("run_id") == self.run_id

    def check(self) -> None:
        """Raise OutputTakenOver, naming the other run, unless this run still owns the directory."""
        current = self.current()
        if current and current.get("run_id") == self.run_id:
            return
        by = (
            f"taken over by run {current.get('run_id')} ({_described(current)})"
            if current
            else f"taken over by another run ({OWNER_FILE} is gone: that run has since published or failed)"
        )
        raise OutputTakenOver(
            f"{self.output} was {by} while run {self.run_id} wrote to it; this run stops without "
            "publishing and leaves that run's files alone"
        )

    def release(self) -> None:
        """Remove `_owner.json` if this run still owns the directory: after publishing, or after failing."""
        if self.holds():
            FileSystems.delete([self.path])


def current_owner(output: str) -> dict | None:
    """What `output`'s `_owner.json` says now, or None when there is none (one read while there is one)."""
    path = FileSystems.join(output, OWNER_FILE)
    try:
        with FileSystems.open(path) as f:
            return json.load(f)
    except Exception:  # the file systems differ in what they raise for a missing file
        if FileSystems.exists(path):
            raise
        return None


def unfinished_run(output: str) -> str | None:
    """For a message about `output` having no manifest: the run `_owner.json` names, if any."""
    try:
        current = current_owner(output)
    except Exception:  # unreadable: says nothing either way
        current = None
    if not current:
        return None
    return f"{OWNER_FILE} names run {current.get('run_id')}, {_described(current)}: still going, or killed"


def _described(owner: dict) -> str:
    return f"started {owner.get('started_at')} on {owner.get('host')}, process {owner.get('pid')}"
