"""Tracking workers that outlive their script: one at a time per dataset, in the order the steps ran.

A numbered script does not wait for its tracking worker
(:mod:`imgclass.tracking.worker`): it sends the step's record and exits,
and the worker logs it in the background (importing MLflow, opening the
store and, after step 4, saving and registering the model take seconds).
So several workers of one dataset can be alive at once, e.g. step 4's
still registering the model while step 5's has started. This module keeps
them in order and keeps what they say:

- **turns**: the script takes a numbered turn (:func:`take_turn`, under the
  short :attr:`~imgclass.layout.DatasetLayout.tracking_lock`) and hands its
  lock, ``proc/<ds>/tracking.<n>.lock``, held, to its worker; the worker
  holds it until it is done and waits for turn ``n - 1``'s lock before it
  touches the store (:func:`wait_for_turn`). A chain of locks rather than
  one lock: ``flock`` does not queue, and two workers waiting for one lock
  could take it in either order, while step 5 must end the run after step 4
  has logged and registered the model. A worker that dies releases its lock
  (the kernel does), so the next one never waits for a dead one;
- **the log** (:attr:`~imgclass.layout.DatasetLayout.tracking_log`): what a
  worker says after its script has gone (:func:`append_log`) is kept there;
  the next tracked step, promotion and :func:`wait_for_pending`'s callers
  print the lines they have not printed (:func:`show_undelivered`), once;
- **waiting**: :func:`wait_for_pending` waits until the dataset's last
  worker is done: what reads the registry right after a pipeline run
  (``scripts/8_promoteModel.py``, the notebook's run table, tests) calls it.

``fcntl.flock`` locks: POSIX systems only (Linux, macOS), as the toolkit's scripts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from imgclass.layout import DatasetLayout

#: How often a waiting worker or caller tries a held lock again (seconds).
POLL_SECONDS = 0.05
#: The log is emptied when everything in it has been printed and it has grown past this size (bytes).
LOG_TRIM_BYTES = 1_000_000
#: States written into a turn's lock file: by the script (``queued``; ``stopped`` when its worker could not
#: start, which the script reported), by the worker (``running`` with its process id when it starts;
#: ``finished``, or ``timed out``, which it reported, when it ends). A predecessor whose lock is free while
#: its state is still ``queued`` or ``running`` was killed or crashed: its successor warns once.
QUEUED, RUNNING, FINISHED, TIMED_OUT, STOPPED = "queued", "running", "finished", "timed out", "stopped"


@contextlib.contextmanager
def _locked(layout: DatasetLayout) -> Iterator[int]:
    """The dataset's tracking lock file, open and locked (exclusively) for a moment; yields its descriptor."""
    layout.proc_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.tracking_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _turn_numbers(layout: DatasetLayout) -> list[int]:
    if not layout.proc_dir.is_dir():
        return []
    numbers = (re.fullmatch(r"tracking\.(\d+)\.lock", path.name) for path in layout.proc_dir.iterdir())
    return sorted(int(match.group(1)) for match in numbers if match)


def _read_fd(fd: int) -> str:
    return os.pread(fd, 1 << 16, 0).decode("utf-8", "replace")


def _write_fd(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8"), 0)


def _try_lock(fd: int, mode: int, deadline: float) -> bool:
    """``flock(fd, mode)``, tried until ``deadline`` (``time.monotonic()``); True once held."""
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)


# --- turns -------------------------------------------------------------------------------------------------
@dataclass
class Turn:
    """A numbered turn of a dataset's tracking, its lock file open and locked: pass ``fd`` to the worker."""

    ticket: int
    fd: int

    def close(self) -> None:
        """Close this process's copy of the lock (the worker's copy keeps it held)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def take_turn(layout: DatasetLayout, step_label: str) -> Turn:
    """The next turn of ``layout``'s tracking, its lock held by this process (the script, at the step's start).

    Taken when the step starts, so turns follow the order in which the steps
    started; the worker the script starts inherits the held lock. Raises
    OSError when ``proc/<ds>/`` cannot be written.
    """
    with _locked(layout):
        numbers = _turn_numbers(layout)
        ticket = (numbers[-1] if numbers else 0) + 1
        fd = os.open(layout.tracking_turn_lock(ticket), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
            _write_fd(fd, json.dumps({"step": step_label, "state": QUEUED, "pid": os.getpid()}))
        except OSError:
            os.close(fd)
            raise
    return Turn(ticket, fd)


def mark_turn(fd: int, state: str) -> None:
    """Write ``state`` into a held turn's lock file (the worker, when it is done: :data:`FINISHED`)."""
    try:
        info = json.loads(_read_fd(fd) or "{}")
    except ValueError:
        info = {}
    info.update(state=state, pid=os.getpid())
    with contextlib.suppress(OSError):
        _write_fd(fd, json.dumps(info))


def wait_for_turn(layout: DatasetLayout, ticket: int, timeout: float) -> str | None:
    """Wait until the worker of turn ``ticket - 1`` is done (the worker, before it touches the store).

    Returns a warning to pass on, or None: the predecessor ended without
    finishing its work (killed, crashed, timed out), or it was still at work
    after ``timeout`` seconds (this worker then goes on anyway).
    """
    path = layout.tracking_turn_lock(ticket - 1)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:  # no predecessor, or it was done and its successor already removed it
        return None
    try:
        if not _try_lock(fd, fcntl.LOCK_EX, time.monotonic() + timeout):
            return (f"warning: the MLflow tracking of {_describe(fd)} was still at work after "
                    f"{timeout:.0f} s; this step's tracking goes on without waiting for it")
        try:
            info = json.loads(_read_fd(fd) or "{}")
        except ValueError:
            info = {}
        path.unlink(missing_ok=True)  # only this worker waits for it; the next waits for this worker's file
    finally:
        os.close(fd)
    state = info.get("state", QUEUED)
    if state not in (QUEUED, RUNNING):  # done, or its end was reported already
        return None
    return (f"warning: the MLflow tracking of {info.get('step', 'an earlier step')} ended before it was done "
            "(its worker was interrupted or killed); its run may lack what that step would have logged")


def _describe(fd: int) -> str:
    try:
        info = json.loads(_read_fd(fd) or "{}")
    except ValueError:
        return "an earlier step"
    return f"{info.get('step', 'an earlier step')} (process {info.get('pid', '?')})"


def pending_step(layout: DatasetLayout) -> str | None:
    """The step whose tracking worker is the dataset's last and still at work (its label), or None."""
    numbers = _turn_numbers(layout)
    if not numbers:
        return None
    try:
        fd = os.open(layout.tracking_turn_lock(numbers[-1]), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd, fcntl.LOCK_SH, time.monotonic()):
            return None
        return json.loads(_read_fd(fd) or "{}").get("step", "an earlier step")
    except ValueError:
        return "an earlier step"
    finally:
        os.close(fd)


def wait_for_pending(layout: DatasetLayout, timeout: float = 600.0,
                     notify: Callable[[str], None] | None = None) -> bool:
    """Wait until every tracking worker of ``layout`` started so far is done; False after ``timeout`` seconds.

    For what reads the run or the registry right after a pipeline run: a
    script exits before its worker has logged (and, after step 4,
    registered the model; after step 5, ended the run). Workers go in turn,
    so waiting for the last one waits for all. ``notify`` receives one line
    when there is something to wait for. Returns at once when nothing is
    pending (or tracking was never on). Print what the workers said with
    :func:`show_undelivered`.
    """
    deadline = time.monotonic() + timeout
    while True:
        numbers = _turn_numbers(layout)
        if not numbers:
            return True
        try:
            fd = os.open(layout.tracking_turn_lock(numbers[-1]), os.O_RDONLY)
        except FileNotFoundError:  # removed by its successor, which is newer: wait for that one
            continue
        try:
            if _try_lock(fd, fcntl.LOCK_SH, time.monotonic()):
                return True
            if notify is not None:
                notify(f"Waiting for the MLflow tracking of {_describe(fd)} to finish (it goes on after its "
                       "script)")
            return _try_lock(fd, fcntl.LOCK_SH, deadline)
        finally:
            os.close(fd)


def wait_and_show(layout: DatasetLayout, timeout: float = 600.0) -> bool:
    """:func:`wait_for_pending`, then :func:`show_undelivered`, printing (warnings on stderr); as
    :func:`wait_for_pending`. For a script or notebook about to read the run or the registry."""
    def say(line: str) -> None:
        print(line, flush=True)

    def warn(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    done = wait_for_pending(layout, timeout, say)
    if not done:
        warn(f"warning: the MLflow tracking of {layout.dataset} is still at work after {timeout:.0f} s; its last "
             "step may not show in the run or the registry yet")
    show_undelivered(layout, say, warn)
    return done


# --- the log of what detached workers said -----------------------------------------------------------------
def append_log(layout: DatasetLayout, step_label: str, kind: str, text: str) -> None:
    """Keep a message of a worker whose script has gone (``kind``: ``log`` or ``warn``)."""
    line = "\t".join((datetime.now().isoformat(timespec="seconds"), step_label, kind,
                      " ".join(text.split()))) + "\n"
    with _locked(layout):
        with layout.tracking_log.open("a", encoding="utf-8") as log:
            log.write(line)


def show_undelivered(layout: DatasetLayout, log: Callable[[str], None], warn: Callable[[str], None]) -> int:
    """Print the messages of :attr:`~imgclass.layout.DatasetLayout.tracking_log` not printed before; how many.

    Progress lines go to ``log``, warnings to ``warn``, each saying which
    step's tracking said it and when. The log keeps them; the lock file
    keeps how far it was printed, so each line is printed once.
    """
    if not layout.tracking_log.is_file():
        return 0
    with _locked(layout) as fd:
        try:
            shown = int(_read_fd(fd).strip() or 0)
        except ValueError:
            shown = 0
        with layout.tracking_log.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            shown = shown if shown <= size else 0  # the log was emptied or replaced
            file.seek(shown)
            new = file.read()
        new = new[:new.rfind(b"\n") + 1]  # whole lines only
        end = shown + len(new)
        if end == size and size > LOG_TRIM_BYTES:
            layout.tracking_log.write_bytes(b"")
            end = 0
        _write_fd(fd, str(end))
    messages = [_parse(line) for line in new.decode("utf-8", "replace").splitlines() if line.strip()]
    for when, step, kind, text in messages:
        where = f"[{step}, {when}, after its script ended]"
        if kind == "warn":
            warn(f"warning {where}: {text.removeprefix('warning: ')}")
        else:
            log(f"Tracking {where}: {text.removeprefix('Tracking: ')}")
    return len(messages)


def _parse(line: str) -> tuple[str, str, str, str]:
    parts = line.split("\t", 3)
    if len(parts) != 4:
        return "", "an earlier step", "log", line
    when, step, kind, text = parts
    return when.replace("T", " "), step, kind, text


__all__ = ["FINISHED", "QUEUED", "RUNNING", "STOPPED", "TIMED_OUT", "Turn", "append_log", "mark_turn", "pending_step",
           "show_undelivered", "take_turn", "wait_and_show", "wait_for_pending", "wait_for_turn"]
