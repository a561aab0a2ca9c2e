"""The local progress line: per-process counts summed, share of the total, rate and time left."""

from __future__ import annotations

import io

from pipeline.progress import ProgressLine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counts_of_every_process_are_summed_into_share_rate_and_time_left():
    clock, stream = Clock(), io.StringIO()
    line = ProgressLine(1000, "rows", stream, clock)
    clock.now = 105.0
    line.report(11, 100)
    line.report(22, 150)
    line.report(11, 90)  # a late, older report of process 11 does not lower its count
    clock.now = 110.0
    line.report(22, 400)
    assert stream.getvalue().splitlines() == [
        "embedded 100 of 1000 rows (10%), 20.0 rows/s, about 45s left",
        "embedded 250 of 1000 rows (25%), 50.0 rows/s, about 15s left",
        "embedded 250 of 1000 rows (25%), 50.0 rows/s, about 15s left",
        "embedded 500 of 1000 rows (50%), 50.0 rows/s, about 10s left",
    ]


def test_done_shows_no_time_left_and_an_unknown_total_shows_the_count_alone():
    clock, stream = Clock(), io.StringIO()
    line = ProgressLine(300, "passages", stream, clock)
    clock.now = 104.0
    line.report(1, 300)
    assert stream.getvalue() == "embedded 300 of 300 passages (100%), 75.0 passages/s\n"
    unknown = ProgressLine(None, "rows", io.StringIO(), clock)  # started at 104
    clock.now = 112.0
    unknown.report(1, 40)
    unknown.report(2, 40)
    assert unknown.text() == "embedded 80 rows, 10.0 rows/s"
