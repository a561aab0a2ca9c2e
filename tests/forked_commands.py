"""The job's commands (`python -m pipeline.run ...`, `python -m pipeline.load ...`) for the tests, each in a
process of its own forked from a server that has already imported the job's modules.

A new interpreter spends about 7 s of one core importing torch, transformers and Beam before a small
run starts (a 30-row run on a 2-core AVX2 host: 11.4 s in a new interpreter, 4.0 s forked), and most
tests start the job once or more. A forked command is still the command: its own process, exit status,
stdout and stderr (pipes it shares with the worker processes it starts, read to their end as
`subprocess.run` reads them), the repository as its working folder, the test's environment at the call,
the module run as `__main__` from its first line, numpy's and torch's random generators seeded anew;
the job's worker processes start as they always do. What it does not see is what a new interpreter
reads at start: PYTHONPATH, sitecustomize, variables read when a module is imported, a new seed for
str hashes (every forked command hashes as the server does). Tests of those start the command with
`subprocess`, as do those of faults, signals and start-up. `JOB_TESTS_NEW_INTERPRETERS=1` starts every
command in a new interpreter.

The server (`python -m tests.forked_commands SOCKET`) holds no thread of its own and has run no torch
operation when it forks: what it imported may have started OpenBLAS's and jemalloc's threads, which
both libraries make safe across a fork.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
_REQUEST_BYTES = 1 << 20  # a request is one line of JSON: the module, its arguments and the environment


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
        return Command.forked(self._socket, module, args)

    def _start_server(self) -> None:
        with contextlib.suppress(FileNotFoundError):  # a server that died left its socket
            os.unlink(self._socket)
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
        outputs: tuple[int, int] | None = None,
    ) -> None:
        self.args = args
        self._process, self._connection, self._outputs = process, connection, outputs
        self._received = b""
        self._ended = False  # waited for: its pid may be another process's by now
        self.pid = process.pid if process else self._reply(None)["pid"]

    @classmethod
    def new_interpreter(cls, module: str, args: tuple[str, ...]) -> Command:
        command = [sys.executable, "-m", module, *args]
        stdout = stderr = subprocess.PIPE
        return cls(command, subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=stderr, text=True))

    @classmethod
    def forked(cls, address: str, module: str, args: tuple[str, ...]) -> Command:
        (stdout, stdout_end), (stderr, stderr_end) = os.pipe(), os.pipe()
        connection = socket.socket(socket.AF_UNIX)
        try:
            connection.connect(address)
            request = json.dumps({"module": module, "args": list(args), "env": dict(os.environ)}).encode() + b"\n"
            sent = socket.send_fds(connection, [request], [stdout_end, stderr_end])
            connection.sendall(request[sent:])
        except BaseException:
            for fd in (stdout, stderr):
                os.close(fd)
            connection.close()
            raise
        finally:
            for fd in (stdout_end, stderr_end):
                os.close(fd)
        return cls([sys.executable, "-m", module, *args], connection=connection, outputs=(stdout, stderr))

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Its end, as `subprocess.run(..., capture_output=True, text=True, timeout=timeout)` gives it: its
        outputs read to their end, then its exit status; past the timeout, or interrupted, it is killed (and
        TimeoutExpired raised past the timeout)."""
        if self._process is not None:
            try:
                stdout, stderr = self._process.communicate(timeout=timeout)
            except BaseException:
                self._process.kill()
                self._process.wait()
                raise
            finally:
                self._ended = True
            return subprocess.CompletedProcess(self.args, self._process.returncode, stdout, stderr)
        deadline = time.monotonic() + timeout
        read = {fd: b"" for fd in self._outputs}
        try:
            self._read_to_end(read, deadline)
            code = self._reply(deadline)["exit"]
        except TimeoutError:
            self.kill()
            raise subprocess.TimeoutExpired(self.args, timeout, *map(_text, read.values())) from None
        except BaseException:
            self.kill()
            raise
        finally:
            self._ended = True
            self._connection.close()
            for fd in self._outputs:
                os.close(fd)
        return subprocess.CompletedProcess(self.args, code, *map(_text, read.values()))

    def kill(self) -> None:
        """End it at once (SIGKILL) unless it was waited for; its worker processes are left as `subprocess.run`
        leaves them."""
        if self._ended:
            return
        if self._process is not None:
            self._process.kill()
            return
        with contextlib.suppress(ProcessLookupError):  # ended already
            os.kill(self.pid, signal.SIGKILL)

    def _read_to_end(self, read: dict[int, bytes], deadline: float) -> None:
        """Both outputs until every process holding them (its worker processes too) has closed them."""
        with selectors.DefaultSelector() as selector:
            for fd in read:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                ready = selector.select(deadline - time.monotonic())
                if not ready and time.monotonic() >= deadline:
                    raise TimeoutError
                for key, _ in ready:
                    chunk = os.read(key.fd, 1 << 16)
                    if chunk:
                        read[key.fd] += chunk
                    else:
                        selector.unregister(key.fd)

    def _reply(self, deadline: float | None) -> dict:
        """The server's next line; TimeoutError past `deadline` (time.monotonic's clock)."""
        while b"\n" not in self._received:
            self._connection.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
            received = self._connection.recv(4096)
            if not received:
                raise RuntimeError(f"the forked commands' server ended before {self.args} did")
            self._received += received
        line, self._received = self._received.split(b"\n", 1)
        return json.loads(line)


def _text(data: bytes) -> str:
    """Bytes read as `subprocess.run(..., text=True)` decodes them, newlines translated."""
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


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
            try:
                request, outputs = _request(connection)
            except (OSError, ValueError):  # a test interrupted as it connected
                connection.close()
                continue
            pid = os.fork()
            if pid == 0:
                for held in (listener, connection, *waiting.values()):
                    held.close()
                os.close(wakeup_read)
                os.close(wakeup_write)
                _become(request, outputs)
            for fd in outputs:
                os.close(fd)
            waiting[pid] = connection
            with contextlib.suppress(OSError):
                connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _request(connection: socket.socket) -> tuple[dict, list[int]]:
    """A connection's request line and the two file descriptors that came with it (stdout, stderr)."""
    data, fds, _, _ = socket.recv_fds(connection, _REQUEST_BYTES, 2)
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"a request came with {len(fds)} file descriptors, not 2")
    try:
        while not data.endswith(b"\n"):
            chunk = connection.recv(_REQUEST_BYTES)
            if not chunk:
                raise ValueError("a request ended before its line did")
            data += chunk
        return json.loads(data), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _become(request: dict, outputs: list[int]) -> None:
    """In the forked process: the command's outputs, environment and module; never returns. Its end is the
    interpreter's, as a new process's would be: exit status, atexit handlers, threads waited for."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd, opened in enumerate((devnull, *outputs)):  # stdin, stdout, stderr
        os.dup2(opened, fd)
        os.close(opened)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    tempfile.tempdir = None  # found again from TMPDIR, as a new process finds it
    import numpy
    import torch

    numpy.random.seed()
    torch.seed()
    module = request["module"]
    sys.argv = [module, *request["args"]]
    sys.modules.pop(module, None)  # run from its first line, as `-m` runs it
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except Exception as error:  # its traceback from the module's own frame on, without this server's
        frames = error.__traceback__
        while frames and not frames.tb_frame.f_code.co_filename.endswith(module.replace(".", "/") + ".py"):
            frames = frames.tb_next
        sys.excepthook(type(error), error, frames or error.__traceback__)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    _serve(sys.argv[1])
