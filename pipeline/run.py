"""Command-line entry point: python -m pipeline.run --input GLOB --output DIR [options].

Run with --help for every option, the job's own and Beam's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import apache_beam as beam
import grpc
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import PipelineResult, PipelineRunner, PipelineState, create_runner
from apache_beam.transforms.environments import SubprocessSDKEnvironment

from encoder import ModelFolderError, cpu_flags
from encoder.devices import device_type
from pipeline.build import build_pipeline
from pipeline.external_workers import time_worker_starts
from pipeline.load import MAX_DELETED_SHARE, ids_held_before
from pipeline.logs import configure_logging, error_line
from pipeline.options import EmbedOptions, UsageError, parse_command_line
from pipeline.plan import LOCAL_RUNNERS, JobPlan, check_device, plan_job, threads_per_worker
from pipeline.progress import ProgressLine, WorkerLogs, process_started
from pipeline.worker import quiet_tracebacks
from schemas.inputs import InputError
from transforms.output_owner import OutputTakenOver
from transforms.paths import is_url
from transforms.read import one_line
from transforms.spill import spill_folder
from transforms.write import MANIFEST, remove_temp_files

_LOG = logging.getLogger("pipeline.run")
# Local runs default to Beam's in-process FnApiRunner: Beam 2.77's DirectRunner
# first tries to download the Prism runner, which needs the internet. The
# FnApiRunner honours --direct_running_mode and --direct_num_workers.
_LOCAL_RUNNER = "FnApiRunner"
# Runners whose workers share this machine's disk: the join's shuffles go through files there
# (transforms.spill; under TMPDIR) instead of the launcher's memory.
_SPILLING_RUNNERS = ("FnApiRunner", "BundleBasedDirectRunner")
_MAX_LOCAL_WORKERS = 8  # each worker process holds its own model and torch (about 600 MB)
# Inputs of at most this much text (uncompressed, by the footers) run in the launcher's process:
# its worker is ready 2-3 s before worker processes are, more than they gain on so little
# embedding. On 2 cores 800 rows (207 KiB of text) took 14.1-15.3 s in it, 17.2-17.7 s in processes;
# 2,000 rows (543 KiB) were even; kept below both, as processes gain more with more cores.
_IN_PROCESS_TEXT_BYTES = 128 * 2**10
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_JOB_FOLDERS = tuple(os.path.join(_ROOT, package, "") for package in ("pipeline", "transforms", "encoder", "schemas"))
# Local worker processes start with Ctrl-C ignored (an ignored signal stays ignored across exec, and
# Python then installs no KeyboardInterrupt handler): a terminal's Ctrl-C reaches the whole process
# group, and each worker printed its own KeyboardInterrupt traceback twice; the launcher, which gets it
# too, ends them (_end_worker_processes). Beam's worker (pipeline.worker: without its stderr tracebacks),
# with the interpreter's path quoted.
_WORKER_COMMAND = f"trap '' INT; exec {shlex.quote(sys.executable)} -m pipeline.worker"
# An input error raised on a worker reaches us wrapped in Beam's own messages.
_WORKER_ERROR = re.compile(
    r"(?:InputError|ModelFolderError|NonFiniteVectors|Float16Overflow|OutputTakenOver|WorkerNotStarted): (.+)"
)
# A worker running in this process raises its error again with Beam's note of the step appended.
_STEP_NOTE = re.compile(r" \[while running '[^\n]*'\]$", re.MULTILINE)
# Local worker processes' log records arrive through this logger; the embed module's own, the
# encoder's, progress reports' and Beam's DoFn runner's (a failure) stay in this process when
# workers run in it.
_WORKER_LOGGERS = (
    "apache_beam.runners.portability.local_job_service",
    "transforms.embed",
    "encoder.pooled_encoder",
    "transforms.progress_report",
    "apache_beam.runners.common",
    "apache_beam.runners.worker.sdk_worker",  # its failed bundles' tracebacks, when workers run in this process
)
# The signal that stopped the run (SIGINT: Ctrl-C; SIGTERM: an orchestrator's stop), once one has.
_STOPPED_BY: list[str] = []
# The signal that came once the run's outcome was settled (_stop_late), once one has.
_STOPPED_LATE: list[str] = []
# Exit statuses of local worker processes that died (negative: the signal that killed one).
_WORKER_EXITS: list[int] = []
# The ERRORs local worker processes logged (WorkerLogs): one of a failure the command reports in its own
# words (a write that failed, an input error) ends the run, and Beam then tears the other workers down: one
# aborted mid-bundle must not be reported instead (_lost_worker_cause).
_WORKER_FAILURES: list[str] = []
_WORKER_EXITED = re.compile(r"Worker subprocess exited with return code (-?\d+)")
_CHANNEL_LOST = "Channel closed prematurely"  # Beam's failure of a run whose worker process died
# A write step's system error (OSError's `[Errno N] ...`: a full disk, no permission), as Beam wraps it.
_WRITE_FAILED = re.compile(r"(\w+Error: \[Errno \d+\] [^\n]*?) \[while running '((?:Write|Manifest)[^']*)'\]")
_PATH_OPTIONS = ("output", "previous", "model", "calibration")  # paths workers read or write, or the launcher
# A worker's failure to load the job's DoFns: one of this project's packages is not installed there.
_PROJECT_MISSING = re.compile(r"No module named '(?:pipeline|transforms|encoder|schemas|samples)(?:\.[\w.]+)?'")
# What every failed or stopped run's `error:` line ends with.
_NOT_PUBLISHED = (
    "no manifest.json was written, so nothing was published; running the same command again replaces the partial files"
)
_RUNNING = threading.Event()  # set while Beam runs the pipeline in this process
_WORKER_LOST = threading.Event()  # set once a worker process's death has ended the run (_end_for_lost_worker)


class OutputUnwritable(RuntimeError):
    """A write to --output failed with a system error (a full disk, no permission): said in one line."""


def _stop(signum: int, _frame: object) -> None:
    """The first SIGINT or SIGTERM stops the run as Ctrl-C does (KeyboardInterrupt), so that it ends with
    exit 1 and one `error:` line instead of a traceback or a silent death; a second one ends it at once.
    The signal _end_for_lost_worker sends ends the run the same way, reported as the worker's death."""
    if _WORKER_LOST.is_set() and not _STOPPED_BY:
        raise KeyboardInterrupt("a worker process died")
    _STOPPED_BY.append(signal.Signals(signum).name)
    for stop in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(stop) is _stop:
            signal.signal(stop, signal.SIG_DFL)
    _end_worker_processes()
    raise KeyboardInterrupt(_STOPPED_BY[0])


def _stop_late(signum: int, _frame: object) -> None:
    """A stop once the pipeline has ended (its manifest written, or a remote job submitted) changes nothing:
    what is left is reading the manifest back and saying so. Raised there, the stop failed a published
    run (`no manifest.json was written`, exit 1, and a rerun refused its finished output), left a
    traceback, or hung the launcher on a lock the interrupted storage client held. A second one ends it
    at once."""
    _STOPPED_LATE.append(signal.Signals(signum).name)
    for stop in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(stop) is _stop_late:
            signal.signal(stop, signal.SIG_DFL)


def _settle_stops() -> None:
    """From here on a stop is _stop_late's (where _stop was catching them: the main thread)."""
    if threading.current_thread() is threading.main_thread():
        for stop in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(stop) is _stop:
                signal.signal(stop, _stop_late)


def _end_worker_processes() -> None:
    """Beam's local runner ends its worker processes by closing their channels: each then aborts, printing
    C++'s `terminate called without an active exception`, and Beam a traceback per process. Killed first
    they go quietly; what they wrote is temporary, removed as the stopped run gives the output up. Linux
    lists a process's children in /proc; elsewhere they end as Beam ends them. Beam starts each through a
    shell (which _WORKER_COMMAND replaces by the worker), so any process a worker started goes too."""
    for pid in _descendants("self"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _descendants(pid: str) -> list[int]:
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            for child in children.read_text().split():
                found += [int(child), *_descendants(child)]
    return found


def _worker_thread_failed(args: threading.ExceptHookArgs) -> None:
    """A thread that lost its worker process (Beam's `Worker subprocess exited with return code N`) or its
    channel to one (gRPC's error) ends without a traceback: an exit is recorded and, unless the run was
    stopped, said in one line (a worker that died before it connected leaves Beam waiting for it); the
    run's own failure is reported by main."""
    exited = _WORKER_EXITED.search(str(args.exc_value))
    if exited:
        _WORKER_EXITS.append(int(exited.group(1)))
        if not (_STOPPED_BY or _WORKER_LOST.is_set()):
            if not _lost_worker_cause(lost=True):  # else it ended as a worker's failure ends the run: main says that
                _LOG.warning("a worker process %s", _worker_ended(_WORKER_EXITS[-1]))
            _end_for_lost_worker()
    elif not (_STOPPED_BY or isinstance(args.exc_value, grpc.RpcError)):
        _THREAD_EXCEPTHOOK(args)


_THREAD_EXCEPTHOOK = threading.excepthook


def _end_for_lost_worker() -> None:
    """Beam's local runner neither replaces a worker process that died nor fails the run at once: one that
    died before it connected left the run waiting for ever, and one killed mid-bundle let the others embed
    their whole share before the run failed. The run cannot succeed, so it ends now: the other workers are
    killed and the main thread is sent the signal its stop handler takes, which ends the run as a stop does
    (main reports the death). Where neither SIGTERM nor SIGINT is handled here (both ignored), Beam's own
    failure, if it comes, reports it."""
    if not _RUNNING.is_set():  # a death after the pipeline ended: the run's outcome is already known
        return
    _WORKER_LOST.set()
    _end_worker_processes()
    for stop in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(stop) is _stop:
            signal.pthread_kill(threading.main_thread().ident, stop)
            return


def _beam_teardown_left_out(record: logging.LogRecord) -> bool:
    """Beam's records of a lost channel to a worker process (ERRORs with gRPC's tracebacks, logged as a
    worker dies or is killed at a stop) and of the teardown after a stop or a worker's death are left out:
    the run's `error:` line says what happened."""
    if not record.name.startswith("apache_beam"):
        return True
    lost_channel = record.exc_info is not None and isinstance(record.exc_info[1], grpc.RpcError)
    return not (_STOPPED_BY or _WORKER_EXITS or lost_channel)


def _worker_ended(code: int) -> str:
    """How a worker process ended, from its exit status (negative: the signal that killed it)."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:  # a real-time signal has no name
        name = f"signal {-code}"
    return f"was killed by {name}" + (
        " (as the kernel's out-of-memory killer does when memory runs out)" if code == -signal.SIGKILL else ""
    )


def _catch_stops() -> None:
    """On the main thread only (where Python allows handlers); a signal ignored (nohup) stays ignored."""
    for stop in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(stop) is not signal.SIG_IGN:
            signal.signal(stop, _stop)
    threading.excepthook = _worker_thread_failed
    for handler in logging.getLogger().handlers:
        handler.addFilter(_beam_teardown_left_out)


def make_options(argv: list[str]) -> PipelineOptions:
    options = parse_command_line(argv)
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        standard.runner = _LOCAL_RUNNER
        embed = options.view_as(EmbedOptions)
        check_device(embed.device, embed.dtype, local=True)  # before the workers are chosen for it
    else:
        try:  # a misspelled runner is a malformed command line, found before any planning
            runner = create_runner(standard.runner)
        except ValueError as e:
            raise UsageError(f"--runner {standard.runner}: {e}") from e
        if _on_dataflow(runner):
            _check_dataflow_workers(options)
        _absolute_local_paths(options.view_as(EmbedOptions))
    return options


def _on_dataflow(runner: PipelineRunner) -> bool:
    """Whether Beam made Dataflow's runner of --runner, however spelled (`DataflowRunner`, `dataflow`, its
    class path)."""
    return type(runner).__name__ == "DataflowRunner"


def _check_dataflow_workers(options: PipelineOptions) -> None:
    """Dataflow's default workers hold Beam alone: without an image of their own or this project to
    install, each would fail on its first bundle, minutes after the job started. A flex template's
    launcher (its image sets FLEX_TEMPLATE_PYTHON_PY_FILE) is passed over: the launch's own environment
    may name the image."""
    worker, setup = options.view_as(WorkerOptions), options.view_as(SetupOptions)
    given = (
        worker.sdk_container_image,
        worker.worker_harness_container_image,
        worker.sdk_harness_container_image_overrides,
        setup.setup_file,
        setup.extra_packages,
        os.environ.get("FLEX_TEMPLATE_PYTHON_PY_FILE"),
    )
    if not any(given):
        raise UsageError(
            "--runner DataflowRunner: Dataflow's default workers have neither this project nor torch; pass "
            "--sdk_container_image (the worker image deploy/dataflow/launch.sh builds and passes), or "
            "--setup_file ./setup.py"
        )


def _absolute_local_paths(opts: EmbedOptions) -> None:
    """A remote runner's workers read a relative path from their own working folder: a worker pool started
    elsewhere wrote the outputs elsewhere, and the launcher took its own run for another's (`taken over`).
    Local paths are made absolute before anything is planned (input files are matched as absolute paths)."""
    for name in _PATH_OPTIONS:
        value = getattr(opts, name)
        if value and not is_url(value):
            setattr(opts, name, os.path.abspath(value))


def _workers_chosen(argv: list[str]) -> bool:
    return any(arg.startswith(("--direct_running_mode", "--direct_num_workers")) for arg in argv)


def _choose_local_workers(options: PipelineOptions, plan: JobPlan) -> JobPlan:
    """On CPU, one single-threaded worker process per core: measured 7% faster end to end on
    2 cores than one process with two threads (12,000 passages: 145 s against 157 s). Inputs of
    at most _IN_PROCESS_TEXT_BYTES of text run in this process instead, whose worker is ready sooner.
    With several GPUs, one process with two threads per GPU, which share one model copy per GPU.
    The plan's threads per worker follow the choice."""
    cores = min(os.cpu_count() or 1, _MAX_LOCAL_WORKERS)
    device = options.view_as(EmbedOptions).device
    direct = options.view_as(DirectOptions)
    gpus = _gpu_count(device) if device_type(device) == "cuda" else 0
    small = plan.text_bytes is not None and plan.text_bytes <= _IN_PROCESS_TEXT_BYTES
    if gpus > 1:
        direct.direct_running_mode = "multi_threading"
        direct.direct_num_workers = 2 * gpus
        _LOG.info("workers: %d threads in this process, 2 per GPU", 2 * gpus)
    elif cores > 1 and device in ("cpu", "auto") and not gpus and not small:
        direct.direct_running_mode = "multi_processing"
        direct.direct_num_workers = cores
        _LOG.info("workers: %d processes, one per core", cores)
    else:
        direct.direct_running_mode = "in_memory"
        direct.direct_num_workers = 1
        _LOG.info(
            "workers: one, in this process%s",
            f" ({_kib(plan.text_bytes)} of text; worker processes above {_kib(_IN_PROCESS_TEXT_BYTES)})"
            if small and cores > 1 and not gpus
            else "",
        )
    return replace(plan, handler=replace(plan.handler, threads=threads_per_worker(options)))


def _local_runner(options: PipelineOptions) -> PipelineRunner | None:
    """FnApiRunner with worker processes started by _WORKER_COMMAND; None (the options' runner) otherwise.
    The running mode is cleared for the runner only: set, it would start its workers Beam's way."""
    direct = options.view_as(DirectOptions)
    if options.view_as(StandardOptions).runner != _LOCAL_RUNNER or direct.direct_running_mode != "multi_processing":
        return None
    if os.name != "posix":  # Beam's shell there is cmd.exe, which has no trap
        return None
    direct.direct_running_mode = None
    return FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(_WORKER_COMMAND))


def _kib(size: int) -> str:
    return f"{size / 2**10:.1f} KiB"


def _gpu_count(device: str) -> int:
    """GPUs one worker process would use; torch is imported only here, where a GPU is present."""
    from encoder.pooled_encoder import replica_devices

    return len(replica_devices(device))


def _log_device(options: PipelineOptions, static: bool = False) -> None:
    """Say where the model will run, before anything runs: --device auto never falls back silently.
    `static`: a static embedding model, which runs in float32 whatever --dtype says (no bfloat16 advice)."""
    device = options.view_as(EmbedOptions).device
    if options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        if device == "auto":
            _LOG.warning(
                "--device auto: each worker runs on CUDA when it has a working GPU, else on its CPU; "
                "pass --device cuda for GPU workers so that one without a working GPU fails instead"
            )
        return
    if device_type(device) == "cuda":
        import torch  # a GPU is here, so torch is imported to name it

        from encoder.pooled_encoder import resolve_device

        chosen = resolve_device(device)
        _LOG.info(
            "device: %s (%s, %d CUDA device(s) here)",
            chosen,
            torch.cuda.get_device_name(chosen),
            torch.cuda.device_count(),
        )
    else:
        _LOG.info("device: cpu%s", " (no CUDA device available)" if device == "auto" else "")
        if options.view_as(EmbedOptions).dtype == "auto" and not static and cpu_flags.amx_bf16():
            _LOG.info(
                "this CPU has AMX bfloat16 units: --dtype bfloat16 runs on them, 2.6-2.9x faster than "
                "float32 end to end on one such host with all-MiniLM-L6-v2, vectors within cosine 0.999 of "
                "float32 (README, Precision)"
            )


# What --plan_only embeds to check the model end to end.
CHECK_TEXT = "A text the plan embeds to check that the model loads and runs."


def _model_check(plan: JobPlan) -> dict:
    """Load the model as the workers will, on this machine's CPU, and embed one text: a checkpoint
    lacking tensors or holding them at other sizes than its config's, or of a model type this
    transformers does not know, is refused here, not in every worker (a GPU image's build step
    plans a job so). float16, which runs on CUDA only, is checked in bfloat16."""
    dtype = "bfloat16" if plan.handler.dtype == "float16" else plan.handler.dtype
    started = time.monotonic()
    encoder = replace(plan.handler, dtype=dtype).load_model("cpu")
    vectors = encoder.encode([CHECK_TEXT]).embeddings
    return {"device": "cpu", "dtype": dtype, "dim": vectors.shape[1], "seconds": round(time.monotonic() - started, 1)}


def run(argv: list[str], started: float | None = None) -> dict | None:
    """Run the job to the end and return its manifest; None with --plan_only (the plan printed), for a
    flex template's launcher (--template_location: the job's graph written, for Dataflow to run), for a
    remote job submitted with --no_wait_until_finish, and for a run published whose manifest could not be
    read back (the storage out of reach just after: a failure said so denied a finished run, whose rerun is
    then refused).

    `started`: when the command began (on time.monotonic's clock), for the start-up it reports;
    default now."""
    started = time.monotonic() if started is None else started
    options = make_options(argv)
    plan = plan_job(options)
    if options.view_as(StandardOptions).runner == _LOCAL_RUNNER and not _workers_chosen(argv):
        plan = _choose_local_workers(options, plan)
    runner = options.view_as(StandardOptions).runner
    if options.view_as(EmbedOptions).plan_only:
        plan_view = {"plan_only": True, "runner": runner, **plan.header}  # input_files: each matched file
        plan_view["model_check"] = _model_check(plan)
        print(json.dumps(plan_view, indent=2))
        return None
    pipeline = None
    local = runner in _SPILLING_RUNNERS
    time_worker_starts(options.view_as(EmbedOptions).worker_start_timeout)
    try:  # from here on the output is this run's: a failure gives it up
        _LOG.info("embedding %s into %s with %s", ",".join(plan.patterns), plan.output, plan.model_block["name"])
        _log_device(options, "StaticEmbedding" in plan.model_block["modules"])
        line = ProgressLine(
            plan.progress_total,
            "passages" if plan.chunking else "rows",
            started=started,
            interval=plan.progress_interval,
        )
        worker_logs = WorkerLogs(line, _JOB_FOLDERS, _WORKER_ERROR, _WORKER_FAILURES)
        # The line ends before any of their records. The root logger's: a portable runner logs the job
        # service's messages through it, a failure's traceback among them.
        loggers = [*map(logging.getLogger, _WORKER_LOGGERS), _LOG, logging.getLogger()]
        for logger in loggers:
            logger.addFilter(worker_logs)
        try:
            with spill_folder() if local else contextlib.nullcontext() as spill_dir:
                with beam.Pipeline(runner=_local_runner(options), options=options) as pipeline:
                    build_pipeline(pipeline, plan, spill_dir)
                    _RUNNING.set()  # as the block ends, Beam runs the pipeline
                _RUNNING.clear()  # a worker's death from here on ends nothing (_end_for_lost_worker)
                _settle_stops()  # the manifest is written (or the remote job submitted)
        finally:
            _RUNNING.clear()
            if pipeline is not None:  # Beam removes its temporary folder only once it ran the pipeline
                shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)  # a stop while building left it
            line.finish()
            for logger in loggers:
                logger.removeFilter(worker_logs)
    except BaseException as failure:  # KeyboardInterrupt too: a stopped run gives the output up as a failed one
        if isinstance(failure, KeyboardInterrupt) and _published(plan):
            _LOG.warning("stopped by %s after the manifest was written: the output is complete", failure)
            with contextlib.suppress(Exception):  # the stop may have come as it let go; the output is whole
                plan.owner.release()
            return _read_manifest(plan.output)
        job = getattr(pipeline, "result", None) if runner not in LOCAL_RUNNERS else None  # submitted, if it was
        if isinstance(failure, KeyboardInterrupt) and job is not None and _cancelled(job):
            raise  # the job may still be writing: its output is left as it is
        try:
            plan.owner.check()  # however the failure showed, a run that took the directory over caused it
        except OutputTakenOver as taken:
            raise taken from failure
        except Exception as e:  # the owner file unreadable too: the run's own failure is the one to report
            _LOG.warning("could not read %s's owner file after the run failed (%s)", plan.output, one_line(e))
        else:
            try:
                remove_temp_files(plan.output)
                plan.owner.release()
            except Exception as e:  # what failed may be the output itself (made read-only, its mount gone)
                _LOG.warning("could not remove the failed run's files from %s (%s)", plan.output, one_line(e))
        cause = str(failure) if isinstance(failure, Exception) else _lost_worker_cause()
        if written := _WRITE_FAILED.search(cause):
            raise OutputUnwritable(
                f"--output {plan.output} could not be written ({written.group(1)}, in step {written.group(2)}); "
                "no manifest.json was written, so nothing was published; running the same command again, once "
                "it can write there, replaces the partial files"
            ) from failure
        raise
    template = options.view_as(GoogleCloudOptions).template_location
    if template and _on_dataflow(create_runner(runner)):
        # A flex template's launcher: Beam only wrote the job's graph, which Dataflow runs after this exits.
        _LOG.info("wrote the job's graph to %s; Dataflow runs the job from it and writes the manifest", template)
        return None
    if options.view_as(StandardOptions).no_wait_until_finish and runner not in LOCAL_RUNNERS:
        _LOG.info("the job was submitted and runs on; it writes %s when it has finished", MANIFEST)
        return None
    if line.startup is not None:
        _LOG.info("start-up: %.1fs from the command to the first rows reaching a loaded model", line.startup)
    try:
        return _read_manifest(plan.output)
    except Exception as e:  # the storage out of reach since the pipeline wrote it: the run is published all the same
        try:
            missing = not FileSystems.exists(FileSystems.join(plan.output, MANIFEST))
        except Exception:  # the storage still out of reach: the pipeline that ended wrote it
            missing = False
        if missing:  # none written: a runner that ran nothing (Dataflow's --dry_run)
            raise
        _LOG.warning(
            "the run is published (its %s written), but reading it back failed (%s): no summary to print",
            MANIFEST,
            one_line(e),
        )
        return None


def _cancelled(result: PipelineResult) -> bool:
    """Whether a remote job whose launcher was stopped while it waited was still running: then it is asked to
    stop (it would run on without its launcher, Flink's and Dataflow's do), and its output is left as it is,
    for the next run over it to replace, rather than removed from under it."""
    try:
        if PipelineState.is_terminal(result.state):
            return False
        result.cancel()
        _LOG.warning("asked the runner to cancel the job; its partial output is left for the next run to replace")
    except Exception as e:  # the job service gone, no permission to cancel
        _LOG.warning("could not cancel the job (%s): it may still be running; stop it with the runner's tools", e)
    return True


def _read_manifest(output: str) -> dict:
    with FileSystems.open(FileSystems.join(output, MANIFEST)) as f:
        return json.load(f)


def _published(plan: JobPlan) -> bool:
    """Whether this run's own manifest is in place (a stop that came after it was written)."""
    try:
        return _read_manifest(plan.output).get("run_id") == plan.owner.run_id
    except Exception:
        return False


def _forget_earlier_runs() -> None:
    """What stopped or ended an earlier run in this process (a scheduler's task may call main again) says
    nothing of this one."""
    for said in (_STOPPED_BY, _STOPPED_LATE, _WORKER_EXITS, _WORKER_FAILURES):
        said.clear()
    _WORKER_LOST.clear()


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """`started`: as for `run`; the command line passes when this process began."""
    argv = sys.argv[1:] if argv is None else argv
    started = time.monotonic() if started is None else started
    _forget_earlier_runs()
    configure_logging()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger(_WORKER_LOGGERS[0]).setLevel(logging.INFO)  # kept to the job's own lines by WorkerLogs
    quiet_tracebacks()  # workers in this process (small inputs, --direct_running_mode multi_threading)
    if threading.current_thread() is threading.main_thread():
        _catch_stops()
    try:
        result = run(argv, started)
    except KeyboardInterrupt:
        if _WORKER_LOST.is_set() and not _STOPPED_BY:
            found = _WORKER_ERROR.search(_STEP_NOTE.sub("", _lost_worker_cause()))
            print(error_line(found.group(1) if found else _worker_lost()), file=sys.stderr)
        else:
            print(error_line(_stopped()), file=sys.stderr)
        return 1
    except UsageError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    except (InputError, ModelFolderError, OutputTakenOver, OutputUnwritable) as e:
        print(error_line(_STEP_NOTE.sub("", str(e))), file=sys.stderr)
        return 1
    except Exception as e:  # a worker failure: show the job's own message when there is one
        if _STOPPED_BY:  # the stop reached a worker running in this process, which Beam wrapped
            print(error_line(_stopped()), file=sys.stderr)
            return 1
        found = _WORKER_ERROR.search(_STEP_NOTE.sub("", str(e)))
        if found:
            print(error_line(found.group(1)), file=sys.stderr)
            return 1
        if _WORKER_EXITS and _CHANNEL_LOST in str(e):  # not a failure whose teardown aborted the workers
            print(error_line(_worker_lost()), file=sys.stderr)
            return 1
        if missing := _PROJECT_MISSING.search(str(e)):  # workers started without it: Dataflow's, a pool's
            print(
                error_line(
                    f"the job's workers cannot import this project (ModuleNotFoundError: {missing[0]}): install "
                    "it where they run (`pip install .` into a worker pool's Python; on Dataflow and Flink the "
                    f"worker image deploy/gpu-worker/Dockerfile builds); {_NOT_PUBLISHED}"
                ),
                file=sys.stderr,
            )
            return 1
        _LOG.error("the job failed", exc_info=True)
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        print(
            error_line(f"the job failed ({type(e).__name__}: {last}); {_NOT_PUBLISHED}"),
            file=sys.stderr,
        )
        return 1
    if _STOPPED_LATE:
        settled = "the manifest was written: the output is complete"
        if result is None:
            settled = "the job was submitted (or its graph or manifest written)"
        _LOG.warning("stopped by %s after %s", _STOPPED_LATE[0], settled)
    if result is None:
        return 0
    print(
        f"embedded {result['rows_embedded']} of {result['rows_in']} rows "
        f"({result['rows_reused']} reused, {result['rows_rejected']} rejected, {result['rows_truncated']} truncated, "
        f"{result['rows_deleted']} deleted) "
        + (
            f"as {result['rows_out']} passages ({result['passages']['embedded']} embedded, "
            f"{result['passages']['reused']} reused, {result['passages']['deleted']} deleted) "
            if "passages" in result
            else ""
        )
        + f"in {time.monotonic() - started:.1f}s into {result['output']}"  # the command's time, start-up included
    )
    if result["rows_rejected"] * 2 > result["rows_in"]:  # a wrong --id_column or --text_column, most likely
        reasons = sorted(result["rejected_by_reason"].items(), key=lambda item: -item[1])
        _LOG.warning(
            "%d of %d rows were rejected (%s): check --id_column %s and --text_column %s; the rejects files "
            "name each row and its reason",
            result["rows_rejected"],
            result["rows_in"],
            ", ".join(f"{reason} {count}" for reason, count in reasons),
            result["columns"]["id"],
            result["columns"]["text"],
        )
    previous = ids_held_before(result) if result["rows_deleted"] else None
    if previous and result["rows_deleted"] > MAX_DELETED_SHARE * previous[1]:  # shards missing or emptied upstream
        _LOG.warning(
            "this run deleted %d of the %d ids its --previous run %s held (%.0f%%): check --input; the loaders "
            "refuse to apply it unless --max_deleted_share allows that many",
            result["rows_deleted"],
            previous[1],
            previous[0],
            100 * result["rows_deleted"] / previous[1],
        )
    if zeros := result.get("zero_vectors"):
        _LOG.warning(
            "the model gave %d of the texts embedded a vector of zeros (no direction, as a static model gives "
            "tokens its table holds as zeros): they have no cosine to any query; leave them out of searches",
            zeros,
        )
    if clipped := (result.get("clipped") or {}).get("vectors"):
        _LOG.warning(
            "%d vectors embedded had values outside the --calibration ranges, clipped to their ends (%d values): "
            "calibrate on more texts, or on texts like these",
            clipped,
            result["clipped"]["values"],
        )
    return 0


def _lost_worker_cause(lost: bool = False) -> str:
    """What a worker logged of a failure the command reports in its own words (a write that failed, an input
    error), where a worker's death ended the run (or, `lost`, is ending it); "" else."""
    if _STOPPED_BY or not (lost or _WORKER_LOST.is_set()):
        return ""
    said = (text for text in _WORKER_FAILURES if _WRITE_FAILED.search(text) or _WORKER_ERROR.search(text))
    return next(said, "")


def _worker_lost() -> str:
    return f"a worker process {_worker_ended(_WORKER_EXITS[0])}; {_NOT_PUBLISHED}"


def _stopped() -> str:
    by = _STOPPED_BY[0] if _STOPPED_BY else "SIGINT"
    return f"stopped by {by}; {_NOT_PUBLISHED}"


def _exit(status: int) -> None:
    """Exit with `status`; a failed or stopped run at once, without the interpreter's shutdown. That would
    wait for Beam's threads (a portable run's embedded job service, waiting for a worker that never
    started, kept the stopped launcher alive until a second SIGTERM), and gRPC's threads of workers run
    in this process could abort it as it unloaded them (`terminate called without an active exception`,
    exit 134 after the run's error line)."""
    if status:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    # The run is published and said so: a stop changes nothing now. Python puts the default handlers back
    # as it shuts down (half a second with torch loaded), and a SIGTERM landing then killed the command with
    # 143, which a scheduler takes for a failed night. Ignored signals stay ignored.
    for stop in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: no handlers to keep
            signal.signal(stop, signal.SIG_IGN)
    sys.exit(status)


if __name__ == "__main__":
    _exit(main(started=process_started()))
