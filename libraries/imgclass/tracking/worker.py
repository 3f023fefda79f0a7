"""The tracking worker: ``python -m imgclass.tracking.worker``, one process beside a script (or ``run``).

Importing MLflow, opening its store and logging (after step 4: saving and
registering the model) take seconds, as long as a short step or longer. In
a process of their own they run on another core while the step works, and
after it: the script does not wait for its worker. It sends the step's
record, closes the worker's input and exits; the worker finishes on its own.

Protocol: one JSON command per line on stdin, answers as JSON lines on stdout.

- ``{"op": "open", "job": <StepJob>}``: start or resume the run of a step;
- ``{"op": "record", "job": <RecordJob>}``: log what the step did (and the model, and the end of the run);
- ``{"op": "failed", "message": "..."}``: tag the run with the step that failed;

answers: ``{"log": "..."}`` (progress for the user), ``{"warn": "..."}`` (a
warning), ``{"done": <n>}`` after the n-th command, and ``{"detached": true}``
when stdin ends: the script has stopped listening (or died). From then on
what the worker would have said goes to ``proc/<ds>/tracking.log``, which the
next tracked step prints (:mod:`imgclass.tracking.pending`); so does anything
after the answers' pipe breaks. Its stderr (MLflow's own warnings) goes to a
file the script names, not to the user's terminal.

Order and time: the worker holds its turn's lock (inherited from the script,
``--turn-fd``) until it is done, imports MLflow, then waits for the previous
turn's worker before it touches the store, so the workers of a dataset log
one at a time, in the order their steps started. Each command has
``--job-timeout`` seconds; a worker that hangs past them says so and ends.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
from pathlib import Path
from typing import IO, Any

from imgclass.layout import DatasetLayout
from imgclass.tracking import pending

#: Longest time one command (open, record, failed) may take before the worker gives up (seconds).
JOB_TIMEOUT_SECONDS = 600.0
#: Longest wait for the previous worker of the dataset before going on without it (seconds).
TURN_TIMEOUT_SECONDS = 1800.0


class Channel:
    """Where the worker's messages go: to its script while the script listens, else to the dataset's log."""

    def __init__(self, answers: IO[str], layout: DatasetLayout, step_label: str):
        self.answers = answers
        self.layout = layout
        self.step_label = step_label
        self.attached = True
        self._lock = threading.Lock()

    def say(self, **message: Any) -> None:
        """Send ``message`` to the script; a ``log`` or ``warn`` it cannot receive goes to the log file."""
        with self._lock:
            if self.attached:
                try:
                    self.answers.write(json.dumps(message) + "\n")
                    self.answers.flush()
                    return
                except (OSError, ValueError):  # BrokenPipeError: the script has gone (Python ignores SIGPIPE)
                    self.attached = False
            for kind in ("log", "warn"):
                if kind in message:
                    try:
                        pending.append_log(self.layout, self.step_label, kind, str(message[kind]))
                    except OSError as exc:  # nowhere left to say it: stderr, the file the script gave us
                        print(f"{message[kind]} (tracking.log not writable: {exc})", file=sys.stderr, flush=True)

    def detach(self) -> None:
        """The script stopped listening: say so (the last answer it reads) and write to the log from now on."""
        with self._lock:
            if self.attached:
                self.attached = False
                try:
                    self.answers.write(json.dumps({"detached": True}) + "\n")
                    self.answers.flush()
                    self.answers.close()
                except (OSError, ValueError):
                    pass


def _read_commands(commands: IO[str], lines: "queue.Queue[str | None]", channel: Channel) -> None:
    """Queue the script's commands as they come; its end of input means it has stopped listening."""
    try:
        for line in commands:
            lines.put(line)
    except (OSError, ValueError):
        pass
    channel.detach()
    lines.put(None)


class Watchdog:
    """Ends the worker, after one warning, when a command takes longer than ``timeout`` seconds."""

    def __init__(self, channel: Channel, turn_fd: int | None, timeout: float):
        self.channel = channel
        self.turn_fd = turn_fd
        self.timeout = timeout
        self._timer: threading.Timer | None = None

    def start(self, what: str) -> None:
        self._timer = threading.Timer(self.timeout, self._expire, (what,))
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self, what: str) -> None:
        self.channel.say(warn=f"warning: MLflow tracking of {self.channel.step_label} did not finish {what} within "
                              f"{self.timeout:.0f} s and was stopped; the step's results are saved, but its run "
                              "may lack what was not logged yet")
        if self.turn_fd is not None:
            pending.mark_turn(self.turn_fd, pending.TIMED_OUT)
        os._exit(3)  # the stuck call (a store that never answers) cannot be interrupted from this thread


def serve(commands: IO[str], answers: IO[str], layout: DatasetLayout, step_label: str, ticket: int = 0,
          turn_fd: int | None = None, job_timeout: float = JOB_TIMEOUT_SECONDS,
          turn_timeout: float = TURN_TIMEOUT_SECONDS) -> None:
    """Run the commands read from ``commands`` in order, after the previous turn's worker (``ticket - 1``).

    Answers go to ``answers`` while the script listens, then to the log.
    """
    if turn_fd is not None:
        pending.mark_turn(turn_fd, pending.RUNNING)  # with this process's id, for whoever waits for it
    channel = Channel(answers, layout, step_label)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_commands, args=(commands, lines, channel), name="tracking-commands",
                     daemon=True).start()
    from imgclass.serve.pyfunc import import_mlflow
    from imgclass.tracking.runs import RecordJob, RunLogger, StepJob

    try:
        import_mlflow()  # seconds, before this turn comes: it needs no store
    except Exception:  # MLflow missing or broken: opening the run reports it as the step's one warning
        pass
    if ticket > 1:
        warning = pending.wait_for_turn(layout, ticket, turn_timeout)
        if warning:
            channel.say(warn=warning)
    logger = RunLogger(log=lambda line: channel.say(log=line), warn=lambda line: channel.say(warn=line))
    watchdog = Watchdog(channel, turn_fd, job_timeout)
    number = 0
    while (line := lines.get()) is not None:
        number += 1
        try:
            command = json.loads(line)
            if command["op"] == "open":
                job = StepJob(**command["job"])
                channel.step_label = job.step_label
                watchdog.start("opening the run")
                logger.open(job)
            elif command["op"] == "record":
                watchdog.start("logging the step")
                logger.record(RecordJob.from_json(command["job"]))
            elif command["op"] == "failed":
                watchdog.start("noting the failed step")
                logger.failed_step(str(command["message"]))
        except Exception as exc:  # a malformed command is our bug; it must still not stop the pipeline
            channel.say(warn=f"warning: the MLflow tracking worker could not read a command "
                             f"({type(exc).__name__}: {exc})")
        finally:
            watchdog.stop()
        channel.say(done=number)
    if turn_fd is not None:
        pending.mark_turn(turn_fd, pending.FINISHED)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imgclass.tracking.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="rootDir of the dataset")
    parser.add_argument("--dataset", required=True, help="datasetName")
    parser.add_argument("--step", required=True, help="label of the (first) step, for the log")
    parser.add_argument("--ticket", type=int, default=0, help="this worker's turn (0: none, do not wait)")
    parser.add_argument("--turn-fd", type=int, default=None, help="descriptor of the turn's lock, held")
    parser.add_argument("--job-timeout", type=float, default=JOB_TIMEOUT_SECONDS)
    args = parser.parse_args(argv)
    serve(sys.stdin, sys.stdout, DatasetLayout(Path(args.root), args.dataset), args.step, args.ticket, args.turn_fd,
          args.job_timeout)


if __name__ == "__main__":
    main()
