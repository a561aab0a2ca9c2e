"""The job's commands (`python -m pipeline.run ...`, `python -m pipeline.load ...`) for the tests, each in a
process of its own forked from a server that has already imported the job's modules.

A new interpreter spends about 7 s of one core importing torch, transformers and Beam before a small
run starts (a 30-row run on a 2-core AVX2 host: 11.4 s in a new interpreter, 4.0 s forked), and most
tests start the job once or more. A forked command is still the command: its own process, exit status,
stdout and stderr, the repository as its working folder, the test's environment at the call, the module
run as `__main__` from its first line; the job's worker processes start as they always do. What it does
not see is what a new interpreter reads at start: PYTHONPATH, sitecustomize, variables read when a
module is imported. Tests of those start the command with `subprocess`, as do those of faults, signals
and start-up. `JOB_TESTS_NEW_INTERPRETERS=1` starts every command in a new interpreter.

The server (`python -m tests.forked_commands SOCKET`) holds no thread of its own and has run no torch
operation when it forks: what it imported started only OpenBLAS's and jemalloc's threads, which both
libraries make safe across a fork.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from subprocess import PIPE

ROOT = Path(__file__).resolve().parent.parent
NEW_INTERPRETERS = os.environ.get("JOB_TESTS_NEW_INTERPRETERS") == "1"
# What a run of the job imports before its first batch (a small run's worker is in its own process),
# and the loaders; anything else is imported by the command that needs it.
PRELOADED = (
    "apache_beam",
    "apache_beam.runners.portability.fn_api_runner",
    "apache_beam.runners.worker.sdk_worker",
    "torch",
    "transformers",
    "transformers.models.bert.modeling_bert",
    "psycopg",
    "encoder.pooled_encoder",
    "pipeline.build",
    "pipeline.load",
    "pipeline.plan",
    "pipeline.progress",
    "pipeline.worker",
)


class Commands:
    """A test process's client of one server, started at its first command and ended with the process."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="forked-commands-")
        self._socket = os.path.join(self._folder.name, "server")
        self._server: subprocess.Popen | None = None

    def start(self, module: str, args: tuple[str, ...]) -> Command:
        """Start `python -m module args` and return at once."""
        if NEW_INTERPRETERS:
            return Command.new_interpreter(module, args)
        if self._server is None or self._server.poll() is not None:
            self._start_server()
        return Command.forked(self._socket, self._folder.name, module, args)

    def _start_server(self) -> None:
        # stdin is the server's lifeline: it exits when this process's end of the pipe closes.
        self._server = subprocess.Popen(
            [sys.executable, "-m", "tests.forked_commands", self._socket],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._server.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the forked commands' server did not start (exit {self._server.wait()})")


class Command:
    """One command started, as `subprocess.Popen` would hold it."""

    def __init__(
        self,
        args: list[str],
        process: subprocess.Popen | None = None,
        connection: socket.socket | None = None,
        outputs: tuple[Path, Path] | None = None,
    ) -> None:
        self.args = args
        self._process, self._connection, self._outputs = process, connection, outputs
        self._received = b""
        self.pid = process.pid if process else self._reply()["pid"]

    @classmethod
    def new_interpreter(cls, module: str, args: tuple[str, ...]) -> Command:
        command = [sys.executable, "-m", module, *args]
        return cls(command, subprocess.Popen(command, cwd=ROOT, stdout=PIPE, stderr=PIPE, text=True))

    @classmethod
    def forked(cls, address: str, folder: str, module: str, args: tuple[str, ...]) -> Command:
        outputs = tuple(Path(tempfile.mkstemp(dir=folder, suffix=f".{name}")[1]) for name in ("stdout", "stderr"))
        connection = socket.socket(socket.AF_UNIX)
        connection.connect(address)
        request = {"module": module, "args": list(args), "env": dict(os.environ), "outputs": list(map(str, outputs))}
        connection.sendall(json.dumps(request).encode() + b"\n")
        return cls([sys.executable, "-m", module, *args], connection=connection, outputs=outputs)

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Its end, as `subprocess.run(..., capture_output=True, text=True, timeout=timeout)` gives it: past the
        timeout it is killed and TimeoutExpired raised."""
        if self._process is not None:
            try:
                stdout, stderr = self._process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.communicate()
                raise
            return subprocess.CompletedProcess(self.args, self._process.returncode, stdout, stderr)
        try:
            code = self._reply(timeout)["exit"]
        except TimeoutError:
            os.kill(self.pid, signal.SIGKILL)
            self._reply()
            raise subprocess.TimeoutExpired(self.args, timeout, *self._read_outputs()) from None
        finally:
            self._connection.close()
        return subprocess.CompletedProcess(self.args, code, *self._read_outputs())

    def _reply(self, timeout: float | None = None) -> dict:
        """The server's next line; TimeoutError past `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._received:
            self._connection.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
            received = self._connection.recv(4096)
            if not received:
                raise RuntimeError(f"the forked commands' server ended before {self.args} did")
            self._received += received
        line, self._received = self._received.split(b"\n", 1)
        return json.loads(line)

    def _read_outputs(self) -> tuple[str, str]:
        texts = tuple(path.read_text() for path in self._outputs)
        for path in self._outputs:
            path.unlink()
        return texts


def _serve(address: str) -> None:
    """Fork a command for each connection; tell it the pid, then the exit status. Ends when stdin closes."""
    signal.signal(signal.SIGCHLD, lambda *_: None)
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address)
    listener.listen(16)
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}
    while True:
        readable, _, _ = select.select([listener, sys.stdin, wakeup_read], [], [])
        if sys.stdin in readable and not sys.stdin.readline():
            return
        if wakeup_read in readable:
            os.read(wakeup_read, 512)
        while waiting:  # every command that has ended
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            with waiting.pop(pid) as connection, contextlib.suppress(OSError):  # its test may have gone
                connection.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
        if listener in readable:
            connection, _ = listener.accept()
            request = json.loads(connection.makefile("r").readline())
            pid = os.fork()
            if pid == 0:
                for held in (listener, connection, *waiting.values()):
                    held.close()
                os.close(wakeup_read)
                os.close(wakeup_write)
                _become(request)
            waiting[pid] = connection
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _become(request: dict) -> None:
    """In the forked process: the command's environment, outputs and module; never returns. Its end is the
    interpreter's, as a new process's would be: exit status, atexit handlers, threads waited for."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    tempfile.tempdir = None  # found again from TMPDIR, as a new process finds it
    os.chdir(ROOT)
    streams = ((os.devnull, os.O_RDONLY), *((path, os.O_WRONLY) for path in request["outputs"]))
    for fd, (path, flags) in enumerate(streams):  # stdin, stdout, stderr
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [request["module"], *request["args"]]
    sys.modules.pop(request["module"], None)  # run from its first line, as `-m` runs it
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    sys.exit(0)


if __name__ == "__main__":
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    _serve(sys.argv[1])
