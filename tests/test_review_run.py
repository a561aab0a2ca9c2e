"""Review of running the job: the progress line's last count, and a run stopped by a signal."""

from __future__ import annotations

import logging

from transforms.embed import PROGRESS_TAG, _Progress


def test_a_bundles_end_reports_the_count_the_interval_held_back(caplog):
    progress = _Progress(interval=3600.0)
    with caplog.at_level(logging.INFO, logger="transforms.embed"):
        progress.flush()  # nothing embedded nor reported yet: nothing to say
        progress.add(0)  # the model is loaded: reported at once
        progress.add(40)  # within the interval: held back
        progress.add(2)
        progress.flush()  # the bundle ends: the launcher's line must end on 42, not 0
        progress.flush()  # nothing moved since: no second report
    counts = [int(r.getMessage().split()[-1]) for r in caplog.records if PROGRESS_TAG in r.getMessage()]
    assert counts == [0, 42]
