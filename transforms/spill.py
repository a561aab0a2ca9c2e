"""Shuffle values by reference on the local runner: each one written to a file, only its path shuffled.

Beam's local runner holds every value crossing a shuffle in the launcher's memory until the
stage that reads it runs: the whole input's texts, for a local run of any size. With a spill
folder (local runs only: its workers share this machine's disk), a value crosses the shuffle as
a `Spilled` path and is read back, then deleted, by the one step that consumes it. Without one
(Dataflow, Flink), values cross the runner's own shuffle as they are.
"""

from __future__ import annotations

import os
import pickle
import uuid
from dataclasses import dataclass
from typing import Any


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
