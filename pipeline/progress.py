"""What a person running the job locally sees: one progress line for the whole job, clean log lines.

Beam's local runner forwards every worker process's log records to the launcher as
protobuf text (`severity: INFO timestamp { seconds: ... } message: "..." ...`). Here
the launcher keeps the job's own messages as single lines, drops Beam's noise, and
sums the workers' progress reports (`transforms.progress_report`: `TAG pid count`) into
one line: rows embedded of the total known from the Parquet footers less the rows
rejected so far, rows/s since the first rows reached a loaded model, and an estimate
of the time left. That
first report (a count of 0) ends start-up: the time from the command to it is stated at
the end of the run. On a terminal the line is redrawn in place; otherwise (a log file, CI)
it is written as a line of its own once the count has moved, at most once per interval.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from transforms.progress_report import EMBEDDED_TAG, REJECTED_TAG

_FORWARDED = re.compile(r'message: "((?:[^"\\]|\\.)*)"')
_REPORT = re.compile(rf"({EMBEDDED_TAG}|{REJECTED_TAG}) (\d+) (\d+)")
_NOISE = ("No semi_persistent_directory found",)
_SECONDS = re.compile(r"\b\d+(?:\.\d+)?s\b")  # `in 1.8s`: what differs between workers' otherwise equal lines


def _unescape(text: str) -> str:
    """Protobuf text escapes quotes, newlines and every non-ASCII byte (as octal)."""
    return codecs.escape_decode(text.encode("utf-8"))[0].decode("utf-8", "replace")


def process_started(stat: Path = Path("/proc/self/stat"), uptime: Path = Path("/proc/uptime")) -> float | None:
    """When this process began, on time.monotonic's clock (imports included); None where Linux's
    /proc does not say."""
    try:
        start_ticks = int(stat.read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        up = float(uptime.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.monotonic() - (up - start_ticks / os.sysconf("SC_CLK_TCK"))


def _duration(seconds: int) -> str:
    """`45s`, `12m 5s`, `25h 24m`: a night's time left in seconds alone was `about 91462s left`."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def _log_time(now: float) -> str:
    """`now` as the log lines' time stamps write it (logging's asctime: local time, milliseconds)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


class ProgressLine:
    """Sums cumulative per-process counts into one line; `total` is None when it cannot be known.

    On a terminal the line is redrawn in place, cut to the terminal's width (a line that wraps is
    redrawn below itself at every report). Off a terminal (a log file) a line is written only when
    the count has moved, at most once per `interval` for the whole job (every worker reports that
    often), stamped as the log's lines are, so that a log shows when a run stalled.
    """

    def __init__(
        self,
        total: int | None,
        unit: str,
        stream: TextIO = sys.stderr,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
        interval: float = 0.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`started`: when the command began, on `clock` (default: now); `wall`: the time of day, for the
        log's stamps."""
        self._total = total
        self._unit = unit
        self._stream = stream
        self._live = stream.isatty()
        self._interval = interval
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}  # rows embedded, by process
        self._rejected: dict[int, int] = {}  # rows rejected, by process
        self._clock = clock
        self._wall = wall
        self._started = clock() if started is None else started
        self._first: float | None = None  # when the first report came: start-up was over
        self._drawn = False
        self._written: tuple[float, tuple[int, int]] | None = None  # off a terminal: when the last line was, its counts

    def report(self, process: int, count: int) -> None:
        with self._lock:
            if self._first is None:
                self._first = self._clock()
            self._counts[process] = max(count, self._counts.get(process, 0))
            self._draw(self.text())

    def report_rejected(self, process: int, count: int) -> None:
        """Rows rejected so far by `process`: they will not be embedded, so they leave the total."""
        with self._lock:
            self._rejected[process] = max(count, self._rejected.get(process, 0))
            if self._first is not None:  # before start-up ends, the first report draws them
                self._draw(self.text())

    @property
    def startup(self) -> float | None:
        """Seconds from the command to the first report; None before it."""
        return None if self._first is None else self._first - self._started

    def text(self) -> str:
        done, rejected = sum(self._counts.values()), sum(self._rejected.values())
        elapsed = 0.0 if self._first is None else self._clock() - self._first
        rate = done / elapsed if elapsed > 0 else 0.0
        also = f", {rejected:,} rows rejected" if rejected else ""
        if self._total:
            total = max(self._total - rejected, done)
            left = total - done
            # Rounded towards the rows left: never 100% or 0s while a row is left.
            eta = f", about {_duration(math.ceil(left / rate))} left" if rate > 0 and left else ""
            share = 100 * done // total if total else 100
            return f"embedded {done:,} of {total:,} {self._unit} ({share:.0f}%), {rate:,.1f} {self._unit}/s{eta}{also}"
        return f"embedded {done:,} {self._unit}, {rate:,.1f} {self._unit}/s{also}"

    def _draw(self, text: str, held: bool = False) -> None:
        """`held`: off a terminal, write the count an interval held back, whenever it has moved."""
        if self._live:
            try:
                columns = os.get_terminal_size(self._stream.fileno()).columns
            except (OSError, ValueError, AttributeError):
                columns = 0
            if columns > 1:  # 0: a terminal whose size is not set; the line as it is
                text = text[: columns - 1]
            self._stream.write(f"\r\033[K{text}")
            self._drawn = True
        else:
            now, counts = self._clock(), (sum(self._counts.values()), sum(self._rejected.values()))
            if self._written is None and held:
                return
            if self._written is not None and (
                counts == self._written[1] or (not held and now - self._written[0] < self._interval)
            ):
                return
            self._written = (now, counts)
            self._stream.write(f"{_log_time(self._wall())} INFO progress: {text}\n")
        self._stream.flush()

    def finish(self) -> None:
        """End the live line, so what follows starts on a line of its own; off a terminal, write the
        count last held back, so that a log never ends short of it."""
        with self._lock:
            if self._drawn:
                self._stream.write("\n")
                self._stream.flush()
                self._drawn = False
            elif not self._live:
                self._draw(self.text(), held=True)


def _stopped(record: logging.LogRecord) -> bool:
    """A worker in this process recording the stop (SIGINT or SIGTERM, raised where it was embedding)
    as its failure: the run's one `error:` line says it was stopped."""
    return record.exc_info is not None and isinstance(record.exc_info[1], KeyboardInterrupt)


# Lines of a Python traceback that name no exception; its frames, like Java's, are indented.
_TRACEBACK_LINES = (
    "Traceback (most recent call last):",
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


def _one_line(text: str) -> str:
    """A multi-line message (a traceback Beam's worker logs with its failure, a Flink job's Java stack trace)
    as its lines that are not stack frames, joined: its first, and each exception of a chain (Python's, Java's
    `Caused by:`), where what failed is named. The run's end reports the failure once, in full where it is
    not one of the job's own."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    kept = [line.strip() for line in lines if not line[0].isspace() and line.strip() not in _TRACEBACK_LINES]
    return " ... ".join(kept or lines[:1])


def _with_error_type(record: logging.LogRecord) -> str:
    """A record's message, and the exception it carries as its type and text: Beam's DoFn runner logs a
    worker's failure as the exception's text alone (an InputError's, with the step appended)."""
    message = record.getMessage()
    if record.exc_info is None or record.exc_info[1] is None:
        return message
    return f"{message}\n{''.join(traceback.format_exception_only(record.exc_info[1]))}"


class WorkerLogs(logging.Filter):
    """Turns forwarded worker records into the job's own single-line messages; feeds progress reports
    to `line` instead of the log. Installed on the local job service's logger, and on the embed
    module's and Beam's DoFn runner's, whose records stay in this process when workers run in it."""

    def __init__(
        self, line: ProgressLine, job_folders: tuple[str, ...], reported: re.Pattern[str], errors: list[str]
    ) -> None:
        """`reported`: the job's own errors, which the command reports itself in one line once the
        run fails; a worker's record of one (a traceback, repeated per retry) is left out. `errors`: the
        text of every ERROR a worker process forwards is added to it, for the command to say why the run
        failed where Beam's teardown of the other workers would tell it otherwise."""
        super().__init__()
        self._line = line
        self._job_folders = job_folders
        self._reported = reported
        self._errors = errors
        self._said: set[str] = set()  # workers' INFO lines shown, less their durations

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        forwarded = _FORWARDED.search(message)
        if forwarded:
            text = _unescape(forwarded.group(1))
            if any(noise in text for noise in _NOISE):
                return False
            if record.levelno >= logging.ERROR:
                self._errors.append(text)
            if record.levelno >= logging.ERROR and self._reported.search(text):
                return False
            if not self._report(text) and (
                record.levelno >= logging.WARNING
                or any(f in message for f in self._job_folders)
                and self._first_time(_one_line(text))
            ):
                record.name, record.msg, record.args = "worker", _one_line(text), ()
                self._line.finish()
                return True
            return False
        if (
            self._report(message)
            or record.levelno >= logging.ERROR
            and (self._reported.search(_with_error_type(record)) or _stopped(record))
        ):
            return False
        if record.name.startswith(("transforms.", "encoder.")):  # a worker in this process: named as forwarded
            if record.levelno < logging.WARNING and not self._first_time(message):
                return False
            record.name = "worker"
        if record.levelno >= logging.ERROR:  # Beam's records of a failed bundle carry its traceback
            record.msg, record.args = _one_line(_with_error_type(record)), ()
            record.exc_info = record.exc_text = None
        self._line.finish()
        return True

    def _first_time(self, text: str) -> bool:
        """Whether no worker has said this yet, durations aside: each worker process logs its kernels and
        its model's loading, and eight workers said each eight times."""
        said = _SECONDS.sub("", text)
        if said in self._said:
            return False
        self._said.add(said)
        return True

    def _report(self, text: str) -> bool:
        found = _REPORT.search(text)
        if found:
            report = self._line.report if found.group(1) == EMBEDDED_TAG else self._line.report_rejected
            report(int(found.group(2)), int(found.group(3)))
        return bool(found)
