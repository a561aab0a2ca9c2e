"""Shuffle values by reference on the local runner: each one written to a file, only its path shuffled.

Beam's local runner holds every value crossing a shuffle in the launcher's memory until the
stage that reads it runs: the whole input's texts, for a local run of any size. With a spill
folder (local runs only: its workers share this machine's disk), a value crosses the shuffle as
a `Spilled` path and is read back, then deleted, by the one step that consumes it. Without one
(Dataflow, Flink), values cross the runner's own shuffle as they are.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, so no folder of a killed run is told from a live one's
    fcntl = None  # type: ignore[assignment]

_LOG = logging.getLogger(__name__)
SPILL_PREFIX = "embed-spill-"
_NEW_PREFIX = ".embed-spill-new-"  # a folder being made: not yet locked, so never another run's to remove


@dataclass(frozen=True)
class Spilled:
    path: str


def spill(value: Any, folder: str | None) -> Any:
    """`value`, or with a folder a reference to it written there."""
    if folder is None:
        return value
    path = os.path.join(folder, uuid.uuid4().hex)
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    return Spilled(path)


def unspill(value: Any) -> Any:
    """The value itself; a spilled one is read and its file deleted (it is consumed once)."""
    if not isinstance(value, Spilled):
        return value
    with open(value.path, "rb") as f:
        loaded = pickle.load(f)
    os.remove(value.path)
    return loaded


@contextmanager
def spill_folder() -> Iterator[str]:
    """A new folder under TMPDIR for one local run's spilled values, removed when the run ends.

    A run killed outright (SIGKILL, the kernel's out-of-memory killer) cannot remove its own, and a
    killed nightly run would leave a night's texts behind each time. So the folder is locked (flock,
    which the kernel releases when its process dies, however it dies) for as long as its run lives,
    and each run first removes the folders under TMPDIR that no live run holds. It is locked before
    it takes its name, so a run starting at the same moment never takes it for a dead run's."""
    root = tempfile.gettempdir()
    _remove_unheld(root)
    made = tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=root)
    folder = os.path.join(root, SPILL_PREFIX + os.path.basename(made)[len(_NEW_PREFIX) :])
    held = os.open(made, os.O_RDONLY) if fcntl is not None else None  # Windows opens no folder as a file
    try:
        if held is not None:
            fcntl.flock(held, fcntl.LOCK_EX)
        os.rename(made, folder)
        yield folder
    finally:
        shutil.rmtree(folder if os.path.isdir(folder) else made, ignore_errors=True)
        if held is not None:
            os.close(held)


def _remove_unheld(root: str) -> None:
    """Remove this user's spill folders under `root` that no live run holds, saying how much they held."""
    if fcntl is None:
        return
    removed, size = 0, 0
    for entry in os.scandir(root):
        if not entry.name.startswith(SPILL_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            held = os.open(entry.path, os.O_RDONLY)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held_size = sum(f.stat().st_size for f in os.scandir(entry.path) if f.is_file(follow_symlinks=False))
        except OSError:  # a live run's (BlockingIOError), or removed meanwhile by a run starting beside this one
            continue
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed, size = removed + 1, size + held_size
        finally:
            os.close(held)
    if removed:
        mib = size / 2**20
        _LOG.info("removed %d spill folder(s) under %s (%.1f MiB) left by killed local runs", removed, root, mib)
