"""Each worker process's counts of rows embedded and rows rejected, reported for the launcher's line.

A report is a log line, `TAG pid count`, with the process's count so far: the launcher keeps each
process's latest and sums them into one line (pipeline.progress); on a remote runner they are plain
log lines beside Beam's counters. One count per process, whatever its threads: the launcher keys
reports by process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils import shared

_LOG = logging.getLogger(__name__)
EMBEDDED_TAG = "progress-report"
REJECTED_TAG = "progress-rejected"


class ProgressReport:
    """Reports a count every `interval` seconds, from any thread. The first report goes out at once
    (for rows embedded, a count of 0 when the first rows reach a loaded model: the launcher takes it
    as the end of start-up)."""

    def __init__(self, interval: float, tag: str = EMBEDDED_TAG) -> None:
        self._interval = interval
        self._tag = tag
        self._lock = threading.Lock()
        self._count = 0
        self._last = -float("inf")
        self._reported: int | None = None  # the count last reported

    def add(self, count: int) -> None:
        with self._lock:
            self._count += count
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                self._report()

    def flush(self) -> None:
        """Report a count the interval held back (at the end of a bundle), so that the launcher's
        line ends on every row, not on the count of the last interval."""
        with self._lock:
            if self._reported is not None and self._reported != self._count:
                self._report()

    def _report(self) -> None:
        self._reported = self._count
        _LOG.info("%s %d %d", self._tag, os.getpid(), self._count)


class ReportRejected(beam.DoFn):
    """Passes rejected record batches on, counting their rows in the process's one rejected count:
    the launcher's line then expects those rows never to be embedded (a wrong `--id_column` rejects
    most rows as duplicates; the line would otherwise stop far short of its total)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._shared = shared.Shared()  # one count per process, across its threads' DoFn copies

    def setup(self) -> None:
        self._report: ProgressReport = self._shared.acquire(lambda: ProgressReport(self._interval, REJECTED_TAG))

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        self._report.add(batch.num_rows)
        yield batch

    def finish_bundle(self) -> None:
        self._report.flush()
