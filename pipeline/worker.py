"""The SDK worker process a local run starts: Beam's `sdk_worker_main`, less the traceback Beam's worker
prints to stderr for each failed bundle.

That print reached the terminal beside the worker's log record of the same failure, which the
launcher receives and reports: a job's own error (an id value the run's type cannot hold) showed as
a 60-line traceback above its one `error:` line, and an unexpected one (a full disk) once per
bundle, 558 lines in all. The log record is kept: the launcher reports each failure once.
"""

from __future__ import annotations

import builtins
import sys

from apache_beam.runners.worker import sdk_worker


def _print(*values: object, file=None, **options) -> None:
    """`print` for Beam's sdk_worker module: what it writes to stderr (only a failed bundle's traceback,
    which it also logs) is left out."""
    if file is not sys.stderr:
        builtins.print(*values, file=file, **options)


def quiet_tracebacks() -> None:
    """In this process, Beam's SDK workers (a worker process's, or those a local run runs in its own
    process) print no tracebacks: the module's global `print`, ahead of the builtin."""
    sdk_worker.print = _print


if __name__ == "__main__":
    from apache_beam.runners.worker import sdk_worker_main

    quiet_tracebacks()
    sdk_worker_main.main(sys.argv)
