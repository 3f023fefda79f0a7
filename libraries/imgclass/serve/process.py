"""Running the REST service of step 6 as a child process, e.g. from ``deploy.ipynb``.

:func:`start_service` runs ``python -m imgclass serve`` (the code of ``scripts/6_deploy.py``) as a user would on
the command line (so the notebook exercises the real deployment), on a free
local port, waits until ``GET /health`` answers and returns a
:class:`LocalService`; :meth:`LocalService.stop` ends it cleanly (SIGTERM,
which uvicorn handles by finishing open requests; SIGKILL only if it does not
exit in time). A service still running when the Python process exits is
stopped then too. For an in-process server (tests, benchmarks) see
:func:`imgclass.serve.app.serve_in_background`.

The client side (sending an image to ``/score``) is :mod:`imgclass.serve.client`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Sequence

import requests

from imgclass.serve.client import ServiceError

#: The command that runs the service (the same code as scripts/6_deploy.py), after the interpreter.
SERVE_COMMAND = ("-m", "imgclass", "serve")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, max_chars: int = 3000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-max_chars:]


def _stop_process(process: subprocess.Popen, timeout: float) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    return int(process.returncode)


def _stop_at_exit(process: subprocess.Popen) -> None:
    try:
        _stop_process(process, timeout=5)
    except Exception:  # interpreter shutdown: best effort only
        pass


class LocalService:
    """A running service process: its ``url``, process and log file.

    Use it as a context manager, or call :meth:`stop` when done.
    """

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path, command: Sequence[str]):
        self.process = process
        self.url = url
        self.log_path = log_path
        self.command = list(command)
        # Stops the server when this object is garbage-collected or, at the latest, when Python exits.
        self._finalizer = weakref.finalize(self, _stop_at_exit, process)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """What the server printed so far (its start-up lines and request log)."""
        return _tail(self.log_path, max_chars=100_000)

    def stop(self, timeout: float = 10.0) -> int:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s); returns its exit code."""
        code = _stop_process(self.process, timeout)
        self._finalizer.detach()
        return code

    def __enter__(self) -> "LocalService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"stopped (exit code {self.process.returncode})"
        return f"LocalService({self.url}, pid {self.process.pid}, {state})"


def _wait_until_healthy(process: subprocess.Popen, url: str, timeout: float) -> bool:
    """True once ``/health`` answers 200; False if the process exited first; raises on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError


def start_service(root_dir: str | os.PathLike[str] | None = None, dataset: str | None = None,
                  host: str = "127.0.0.1", port: int | None = None, extra_args: Sequence[str] = (),
                  timeout: float = 120.0, python: str | None = None, log_path: str | os.PathLike[str] | None = None,
                  attempts: int = 3, parameters_file: str | os.PathLike[str] | None = None) -> LocalService:
    """Start the service (``python -m imgclass serve``) in a child process and wait until it answers ``/health``.

    Parameters
    ----------
    root_dir, dataset:
        ``--rootDir`` and ``--datasetName`` (None = the parameters file's values).
    host, port:
        Where it listens; ``port=None`` picks a free port (retried on the rare
        clash with another program taking it first).
    extra_args:
        Further ``--key=value`` overrides for the script (e.g. ``--deploy_topK=3``).
    timeout:
        Seconds to wait for the model to load and ``/health`` to answer.
    python:
        Interpreter (default: the current one, i.e. the notebook's kernel).
    log_path:
        File receiving the server's output (default: a temporary file).
    parameters_file:
        The parameters file (default: ``$IMGCLASS_PARAMETERS``, else the first ``PARAMETERS.py`` in the
        current folder or its parents).

    Returns
    -------
    LocalService
        With ``url`` like ``http://127.0.0.1:53127``.

    Raises
    ------
    ServiceError
        If the script exits or does not answer in time; the message includes
        the end of its output (e.g. "run scripts/4_trainSVM.py first").
    """
    args = [python or sys.executable, *SERVE_COMMAND]
    if parameters_file is not None:
        args.append(f"--parametersFile={Path(parameters_file).expanduser().resolve()}")
    if root_dir is not None:
        args.append(f"--rootDir={Path(root_dir).expanduser().resolve()}")
    if dataset is not None:
        args.append(f"--datasetName={dataset}")
    args += [f"--deploy_host={host}", *extra_args]
    for attempt in range(max(1, attempts)):
        chosen = port if port is not None else free_port(host)
        command = [*args, f"--deploy_port={chosen}"]
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="imgclass-service-", suffix=".log")
            os.close(fd)
            log_file = Path(name)
        else:
            log_file = Path(log_path)
        with open(log_file, "wb") as handle:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://{'[' + host + ']' if ':' in host else host}:{chosen}"
        try:
            healthy = _wait_until_healthy(process, url, timeout)
        except TimeoutError:
            _stop_process(process, timeout=5)
            raise ServiceError(f"the service did not answer {url}/health within {timeout:.0f} s; its output:\n"
                               f"{_tail(log_file)}") from None
        except BaseException:  # Ctrl-C / kernel interrupt while waiting: leave nothing behind
            _stop_process(process, timeout=5)
            raise
        if healthy:
            return LocalService(process, url, log_file, command)
        output = _tail(log_file)
        port_taken = "address already in use" in output.lower()
        if not port_taken or port is not None or attempt == attempts - 1:
            raise ServiceError(f"the service ({' '.join(SERVE_COMMAND)}) exited with code {process.returncode}; its output:\n{output}")
    raise AssertionError("unreachable")


__all__ = ["SERVE_COMMAND", "LocalService", "ServiceError", "free_port", "start_service"]
