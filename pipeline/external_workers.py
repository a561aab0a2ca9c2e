"""Workers from an external pool for a job service in the launcher's process (`--runner=PortableRunner
--job_endpoint=embed --environment_type=EXTERNAL`): a pool that cannot be reached, or whose worker does
not connect in time, fails the run with a message naming the pool.

Beam's embedded job service asks the pool to start a worker, then waits for it to connect with no
limit: a pool whose `python` lacks Beam or this project starts a process that exits at once, and
the run waited, silent, until it was stopped. An unreachable pool failed it with gRPC's traceback.
(Flink's and Dataflow's runners time their workers' start out themselves.)
"""

from __future__ import annotations

import contextlib
import threading
import time

import grpc
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner.worker_handlers import (
    BeamFnControlServicer,
    ExternalWorkerHandler,
    WorkerHandler,
)

_POLL_SECONDS = 0.5


class WorkerNotStarted(RuntimeError):
    """The pool was asked for a worker that did not connect, or could not be asked."""


class _TimedExternalWorkerHandler(ExternalWorkerHandler):
    """Beam's handler of a pool's worker, failing what waits on a worker that has not connected
    `start_timeout` seconds after the pool was asked for it."""

    start_timeout: float

    def start_worker(self) -> None:
        pool = self._external_payload.endpoint.url
        self._closed = threading.Event()
        self._closing = threading.Lock()  # the failure is set while not closed, and cleared as it closes
        try:
            super().start_worker()
        except grpc.RpcError as error:
            raise WorkerNotStarted(
                f"the worker pool at {pool} (--environment_config) did not answer: {error.details()}; "
                "start it there (python -m apache_beam.runners.worker.worker_pool_main --service_port=PORT)"
            ) from None
        except RuntimeError as error:  # the pool answered with its own failure (no `python` on its PATH)
            said = str(error).strip().splitlines()[-1]
            raise WorkerNotStarted(
                f"the worker pool at {pool} could not start a worker ({said}): it starts `python` from its PATH, "
                "which must have apache_beam and this project"
            ) from None
        threading.Thread(target=self._fail_unless_connected, args=(pool,), name="worker-start", daemon=True).start()

    def _fail_unless_connected(self, pool: str) -> None:
        """Once the time is up, fail what waits on the worker's answers (control) and outputs (data), for
        as long as it has not connected (the runner may send it instructions after the first abort) and
        the runner has not closed it. Beam has no public call for either: both are its 2.77 internals."""
        deadline = time.monotonic() + self.start_timeout
        failure = WorkerNotStarted(
            f"the worker pool at {pool} started no worker that connected within {self.start_timeout:g}s "
            "(--worker_start_timeout): its log says why; a pool started where `python` lacks apache_beam or "
            "this project starts workers that exit at once"
        )
        while not self._closed.wait(_POLL_SECONDS):
            if self.control_conn._state != BeamFnControlServicer.UNSTARTED_STATE:
                return
            if time.monotonic() >= deadline:
                with contextlib.suppress(RuntimeError):  # the runner adding an instruction as they are aborted
                    self.control_conn.abort(failure)
                with self._closing:
                    if not self._closed.is_set() and self.data_conn._exception is None:
                        self.data_conn._exception = failure

    def close(self) -> None:
        """Close as Beam does, less the failure set above: the data channel raises it again as it closes,
        which Beam logs with its traceback, after the run has failed with it."""
        with self._closing:
            self._closed.set()
            if isinstance(self.data_conn._exception, WorkerNotStarted):
                self.data_conn._exception = None
        super().close()


def time_worker_starts(start_timeout: float) -> None:
    """Have the Beam runners of this process (an embedded job service's) fail a pool's worker that has
    not connected `start_timeout` seconds after it was asked for."""
    _TimedExternalWorkerHandler.start_timeout = start_timeout
    WorkerHandler.register_environment(common_urns.environments.EXTERNAL.urn, beam_runner_api_pb2.ExternalPayload)(
        _TimedExternalWorkerHandler
    )
