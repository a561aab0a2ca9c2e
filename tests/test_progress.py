"""The local progress line: per-process counts summed, share of the total, rate and time left, start-up."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

from pipeline.progress import ProgressLine, WorkerLogs, process_started

STAMPED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO progress: (.*)")


def _lines(stream: io.StringIO) -> list[str]:
    """The lines written off a terminal, each checked to be stamped as the log's lines are, without the stamp."""
    return [STAMPED.fullmatch(line).group(1) for line in stream.getvalue().splitlines()]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counts_of_every_process_are_summed_into_share_rate_and_time_left():
    clock, stream = Clock(), io.StringIO()
    line = ProgressLine(1000, "rows", stream, clock, started=90.0)
    assert line.startup is None
    clock.now = 105.0
    line.report(11, 0)  # the first encoder begins: start-up ends, the rate counts from here
    assert line.startup == 15.0
    clock.now = 110.0
    line.report(11, 100)
    line.report(22, 150)
    line.report(11, 90)  # a late, older report of process 11 does not lower its count
    clock.now = 115.0
    line.report(22, 400)
    assert _lines(stream) == [
        "embedded 0 of 1,000 rows (0%), 0.0 rows/s",
        "embedded 100 of 1,000 rows (10%), 20.0 rows/s, about 45s left",
        "embedded 250 of 1,000 rows (25%), 50.0 rows/s, about 15s left",  # the late report moved nothing: no line
        "embedded 500 of 1,000 rows (50%), 50.0 rows/s, about 10s left",
    ]
    assert line.startup == 15.0
    clock.now = 124.9
    line.report(11, 599)  # 999 of 1000, a row left: not 100%, not 0s (rounded: 100%, about 0s left)
    assert _lines(stream)[-1] == "embedded 999 of 1,000 rows (99%), 50.2 rows/s, about 1s left"


def test_off_a_terminal_a_line_is_written_at_most_once_per_interval_and_only_when_the_count_moved():
    clock, stream = Clock(), io.StringIO()
    line = ProgressLine(1000, "rows", stream, clock, started=100.0, interval=5.0)
    reports = [(100, 1, 0), (100, 2, 0), (101, 1, 50), (104, 2, 50), (105, 1, 150), (109, 2, 150), (115, 1, 150)]
    reports += [(121, 2, 150), (122, 1, 200)]  # at 121, an interval on, nothing has moved since the last line
    for now, process, count in reports:
        clock.now = float(now)
        line.report(process, count)
    assert _lines(stream) == [
        "embedded 0 of 1,000 rows (0%), 0.0 rows/s",
        "embedded 200 of 1,000 rows (20%), 40.0 rows/s, about 20s left",
        "embedded 300 of 1,000 rows (30%), 20.0 rows/s, about 35s left",
        "embedded 350 of 1,000 rows (35%), 15.9 rows/s, about 41s left",
    ]
    clock.now = 124.0
    line.report(2, 250)  # held back: within the interval
    line.finish()  # the run ends (or a log line follows): the held count is written
    line.finish()  # and only once
    assert _lines(stream)[4:] == ["embedded 450 of 1,000 rows (45%), 18.8 rows/s, about 30s left"]


def test_done_shows_no_time_left_and_an_unknown_total_shows_the_count_alone():
    clock, stream = Clock(), io.StringIO()
    line = ProgressLine(300, "passages", stream, clock)
    line.report(1, 0)
    clock.now = 104.0
    line.report(1, 300)
    assert _lines(stream)[-1] == "embedded 300 of 300 passages (100%), 75.0 passages/s"
    assert line.startup == 0.0
    unknown = ProgressLine(None, "rows", io.StringIO(), clock)
    clock.now = 112.0
    unknown.report(1, 40)
    assert unknown.text() == "embedded 40 rows, 0.0 rows/s"
    clock.now = 116.0
    unknown.report(2, 40)
    assert unknown.text() == "embedded 80 rows, 20.0 rows/s"
    assert unknown.startup == 8.0


def test_process_start_is_read_from_proc_past_a_command_name_with_spaces_and_parentheses(tmp_path):
    hz = os.sysconf("SC_CLK_TCK")
    fields = ["S", *["0"] * 18, str(40 * hz), "0", "0"]  # state is field 3, starttime field 22
    stat = tmp_path / "stat"
    stat.write_text(f"4242 (odd) name) {' '.join(fields)}\n")
    uptime = tmp_path / "uptime"
    uptime.write_text("100.00 150.00\n")
    before = time.monotonic()
    started = process_started(stat, uptime)
    assert before - 60 - 0.5 <= started <= time.monotonic() - 60  # began 100 - 40 = 60 s ago
    assert process_started(tmp_path / "missing", uptime) is None


def test_a_new_process_knows_when_it_began():
    code = (
        "import time; time.sleep(1); from pipeline.progress import process_started; "
        "print(time.monotonic() - process_started())"
    )
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1 <= age < 60


def test_rows_rejected_leave_the_total_and_are_named():
    clock, stream = Clock(), io.StringIO()
    line = ProgressLine(100, "rows", stream, clock, started=100.0)
    line.report_rejected(7, 10)  # before start-up ends: kept for the first line, not drawn
    clock.now = 102.0
    line.report(11, 0)
    clock.now = 104.0
    line.report(11, 20)
    line.report_rejected(7, 30)
    line.report_rejected(7, 25)  # a late, older report does not lower the count
    clock.now = 106.0
    line.report(11, 70)
    assert _lines(stream) == [
        "embedded 0 of 90 rows (0%), 0.0 rows/s, 10 rows rejected",
        "embedded 20 of 90 rows (22%), 10.0 rows/s, about 7s left, 10 rows rejected",
        "embedded 20 of 70 rows (28%), 10.0 rows/s, about 5s left, 30 rows rejected",
        "embedded 70 of 70 rows (100%), 17.5 rows/s, 30 rows rejected",
    ]
    unknown = ProgressLine(None, "passages", io.StringIO(), clock)
    unknown.report(1, 5)
    unknown.report_rejected(2, 3)
    assert unknown.text() == "embedded 5 passages, 0.0 passages/s, 3 rows rejected"


def test_a_nights_counts_and_time_left_read_at_a_glance_and_a_log_line_says_when_it_was_written():
    """`embedded 900000 of 23765433 rows (3%), 250.0 rows/s, about 91462s left` was the line of a night."""
    clock, stream = Clock(), io.StringIO()
    line = ProgressLine(25_000_000, "rows", stream, clock, wall=lambda: 1_790_000_000.25)
    line.report(1, 0)
    clock.now = 3700.0
    line.report(1, 900_000)
    line.report_rejected(2, 1_234_567)
    assert line.text() == (
        "embedded 900,000 of 23,765,433 rows (3%), 250.0 rows/s, about 25h 24m left, 1,234,567 rows rejected"
    )
    clock.now = 3700.0 + 91_000
    line.report(1, 23_700_000)
    assert line.text().endswith("rows (99%), 250.5 rows/s, about 4m 22s left, 1,234,567 rows rejected")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_790_000_000.25))
    assert stream.getvalue().splitlines()[-1].startswith(f"{stamp},250 INFO progress: embedded 23,700,000 of ")


def _read_to_newline(fd: int, seconds: float = 10.0) -> bytes:
    """What a pseudo-terminal passes on up to the newline the line ends with: it passes on what it was
    written a little later, so a single read on a busy machine took half of it."""
    read, deadline = b"", time.monotonic() + seconds
    while not read.endswith(b"\n") and time.monotonic() < deadline:
        select.select([fd], [], [], 0.1)
        with contextlib.suppress(BlockingIOError):
            read += os.read(fd, 4096)
    return read


def _drawn_on_a_terminal(columns: int) -> str:
    """What the line writes to a terminal `columns` wide (0: one whose size was never set) over two reports."""
    main, secondary = os.openpty()
    os.set_blocking(main, False)
    try:
        if columns:
            fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        with open(secondary, "w", closefd=False) as terminal:
            clock = Clock()
            line = ProgressLine(1000, "rows", terminal, clock)
            line.report(1, 0)
            clock.now = 110.0
            line.report(1, 100)
            line.finish()
        return _read_to_newline(main).decode().replace("\r\n", "\n")
    finally:
        os.close(main)
        os.close(secondary)


def test_on_a_terminal_the_line_is_cut_to_its_width_so_a_redraw_replaces_it():
    """A line that wraps leaves a row behind at every redraw: `\\r\\033[K` clears only its last row. A
    terminal whose size was never set (0 columns) gets the whole line, not one a character short."""
    assert _drawn_on_a_terminal(40) == (
        "\r\033[Kembedded 0 of 1,000 rows (0%), 0.0 rows"  # 39 of the 40 columns
        "\r\033[Kembedded 100 of 1,000 rows (10%), 10.0 \n"
    )
    assert _drawn_on_a_terminal(0) == (
        "\r\033[Kembedded 0 of 1,000 rows (0%), 0.0 rows/s"
        "\r\033[Kembedded 100 of 1,000 rows (10%), 10.0 rows/s, about 1m 30s left\n"
    )


def _forwarded(level: int, text: str, location: str = "/job/transforms/embed.py:85") -> logging.LogRecord:
    """A worker process's record as the launcher's job service logs it: the Fn API's log entry as protobuf text."""
    entry = f'severity: {logging.getLevelName(level)}\ntimestamp {{\n  seconds: 1\n}}\nmessage: "{text}"\n'
    entry += f'log_location: "{location}"\nthread: "1"\n'
    return logging.LogRecord("apache_beam.runners.portability.local_job_service", level, "x.py", 1, entry, (), None)


def test_a_line_every_worker_logs_alike_is_shown_once_and_a_warning_every_time():
    """Each worker process logs its kernels and its model's loading: eight workers gave eight of each."""
    logs = WorkerLogs(
        ProgressLine(10, "rows", io.StringIO()), ("/job/transforms/",), re.compile("InputError: (.+)"), []
    )
    records = [
        _forwarded(logging.INFO, "CPU linear kernels: onednn (GenuineIntel CPU with AVX-512)"),
        _forwarded(logging.INFO, "loaded /m on cpu in 1.8s"),
        _forwarded(logging.INFO, "CPU linear kernels: onednn (GenuineIntel CPU with AVX-512)"),
        _forwarded(logging.INFO, "loaded /m on cpu in 2.1s"),  # another worker, slower
        _forwarded(logging.INFO, "loaded /m on cuda:1 in 2.0s"),  # another device: said too
        _forwarded(logging.WARNING, "a warning"),
        _forwarded(logging.WARNING, "a warning"),
    ]
    shown = [record.getMessage() for record in records if logs.filter(record)]
    assert shown == [
        "CPU linear kernels: onednn (GenuineIntel CPU with AVX-512)",
        "loaded /m on cpu in 1.8s",
        "loaded /m on cuda:1 in 2.0s",
        "a warning",
        "a warning",
    ]


def _protobuf_text(text: str) -> str:
    """`text` as protobuf's text format writes a string: quotes and newlines escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _root_error(text: str) -> logging.LogRecord:
    """A record a portable runner logs on the root logger: the job service's message, as Flink sends it."""
    return logging.LogRecord("root", logging.ERROR, "portable_runner.py", 1, "%s", (text,), None)


def test_an_error_with_a_stack_trace_keeps_its_message_and_each_cause_without_the_frames():
    """A Flink job's failure reaches the launcher as Java's stack trace: cut to its first and last line it
    read `...Job failed (JobID: 1f2e) ... ... 3 more`, the `Caused by:` lines naming what failed gone. A worker's
    error is kept whole for the command to report, where another worker's teardown would tell it otherwise."""
    errors: list[str] = []
    logs = WorkerLogs(
        ProgressLine(10, "rows", io.StringIO()), ("/job/transforms/",), re.compile("InputError: (.+)"), errors
    )
    java = _root_error(
        "org.apache.flink.client.program.ProgramInvocationException: Job failed (JobID: 1f2e)\n"
        "\tat org.apache.flink.client.program.rest.RestClusterClient.lambda$null$6(RestClusterClient.java:268)\n"
        "\tat java.base/java.util.concurrent.CompletableFuture.uniApply(CompletableFuture.java:642)\n"
        "Caused by: org.apache.flink.runtime.client.JobExecutionException: Job execution failed.\n"
        "\tat org.apache.flink.runtime.jobmaster.JobResult.toJobExecutionResult(JobResult.java:144)\n"
        "\t... 19 more\n"
        "Caused by: java.lang.RuntimeException: Error received from SDK harness for instruction 4: disk full\n"
        "\tat org.apache.beam.runners.fnexecution.control.FnApiControlClient.onNext(FnApiControlClient.java:180)\n"
        "\t... 3 more\n"
    )
    traceback = (
        "Error processing instruction 4. Original traceback is\n"
        "Traceback (most recent call last):\n"
        '  File "/job/transforms/write.py", line 10, in write\n'
        "    self._file.write(batch)\n"
        "    ^^^^^^^^^^^^^^^^^^^^^^^\n"
        "OSError: [Errno 28] No space left on device\n"
        "\n"
        "The above exception was the direct cause of the following exception:\n"
        "\n"
        "Traceback (most recent call last):\n"
        '  File "/beam/worker/sdk_worker.py", line 300, in _execute\n'
        "    response = task()\n"
        "RuntimeError: OSError: [Errno 28] No space left on device [while running 'Write']\n"
    )
    python = _forwarded(logging.ERROR, _protobuf_text(traceback))
    assert logs.filter(java) and logs.filter(python)
    assert errors == [traceback]
    assert java.getMessage() == (
        "org.apache.flink.client.program.ProgramInvocationException: Job failed (JobID: 1f2e) ... "
        "Caused by: org.apache.flink.runtime.client.JobExecutionException: Job execution failed. ... "
        "Caused by: java.lang.RuntimeException: Error received from SDK harness for instruction 4: disk full"
    )
    assert python.getMessage() == (
        "Error processing instruction 4. Original traceback is ... OSError: [Errno 28] No space left on device ... "
        "RuntimeError: OSError: [Errno 28] No space left on device [while running 'Write']"
    )
