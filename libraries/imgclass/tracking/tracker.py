"""The pipeline's side of run tracking: :class:`StepTracker` around each step, one worker process beside it.

``imgclass.cli.run_step`` runs every one of steps 1-5 inside a
:class:`StepTracker`. It hands the tracking work to
:mod:`imgclass.tracking.worker`, a process started when the step starts:
while the step imports torch and works, the worker imports MLflow and opens
the run on another core, and when the step ends it logs what the step did
(built here from the step's report, :mod:`imgclass.tracking.records`).

A script does not wait for its worker: it sends the record, tells the
worker it stops listening (:meth:`TrackingSession.detach`) and exits; the
worker finishes on its own, after the dataset's earlier workers and before
its later ones (:mod:`imgclass.tracking.pending`), and what it says after
that goes to ``proc/<ds>/tracking.log``, printed by the next tracked step.
The one wait: step 1's script waits until its run exists (its id in
``mlflow_run.json``), which overlaps with the step's own work.
``python -m imgclass run`` shares one worker between its five steps and
waits for it once, at the end (:meth:`TrackingSession.close`).

Tracking must never cost a result: the step's files are written by the step
before anything is sent, a failure of the store is one warning (from the
worker), a worker that cannot start or dies is one warning too, and one that
hangs stops itself. ``mlflow_trackingUri = ''`` starts no worker at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from imgclass.errors import MissingArtifactError
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.pipeline.select import effective_classifier
from imgclass.tracking import pending, records
from imgclass.tracking.runs import FIRST_STEP, LAST_STEP, RecordJob, StepJob, TrackingSettings, ended_run_message, \
    one_line, read_pointer
from imgclass.tracking.worker import JOB_TIMEOUT_SECONDS

#: Longest wait of a script or ``python -m imgclass run`` for its worker (step 1: for the run to exist;
#: ``run``: for everything); after it the worker goes on in the background, as a script's always does.
WAIT_TIMEOUT_SECONDS = 300.0
#: Longest wait for the worker to acknowledge that the script stops listening (it answers at once unless
#: it is still starting up); until then what it says still reaches the script.
DETACH_TIMEOUT_SECONDS = 10.0


def _stderr_warning(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TrackingSession:
    """The tracking worker process of one script or one ``python -m imgclass run``, started on first use.

    Commands are sent as JSON lines; a thread collects the answers. ``log``
    prints the worker's progress lines, ``warn`` its warnings.
    ``job_timeout``: how long the worker gives each command before it stops.
    """

    def __init__(self, log: Callable[[str], None] = print, warn: Callable[[str], None] = _stderr_warning,
                 timeout: float = WAIT_TIMEOUT_SECONDS, job_timeout: float = JOB_TIMEOUT_SECONDS):
        self.log = log
        self.warn = warn
        self.timeout = timeout
        self.job_timeout = job_timeout
        self.layout: DatasetLayout | None = None
        self.process: subprocess.Popen[str] | None = None
        self.sent = 0
        self.done = 0
        self.ended = False
        self.detached = False
        self.broken = False
        self.warned = False
        self.waited = 0.0
        self._messages: list[tuple[str, str]] = []
        self._changed = threading.Condition()
        self._stderr: Any = None

    # --- the worker process ----------------------------------------------------------------------------------
    def start(self, layout: DatasetLayout, step_label: str) -> None:
        """Take the dataset's next tracking turn and start the worker with it (once; never raises)."""
        if self.process is not None or self.broken:
            return
        self.layout = layout
        try:
            turn = pending.take_turn(layout, step_label)
        except OSError as exc:
            self._give_up(f"no tracking turn could be taken in {layout.proc_dir} ({one_line(exc)})")
            return
        import imgclass

        package_root = str(Path(imgclass.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONIOENCODING": "utf-8",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
        command = [sys.executable, "-m", "imgclass.tracking.worker", "--root", str(layout.root), "--dataset",
                   layout.dataset, "--step", step_label, "--ticket", str(turn.ticket), "--turn-fd", str(turn.fd),
                   "--job-timeout", str(self.job_timeout)]
        try:
            self._stderr = tempfile.TemporaryFile()
            # its own session: Ctrl-C in the terminal stops the script, not a worker still logging an earlier step
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=self._stderr, text=True, encoding="utf-8", env=env,
                                            pass_fds=(turn.fd,), start_new_session=True)
        except (OSError, ValueError) as exc:
            pending.mark_turn(turn.fd, pending.STOPPED)
            self._give_up(f"the tracking worker could not be started ({one_line(exc)})")
            return
        finally:
            turn.close()  # the worker holds the turn from here on
        threading.Thread(target=self._read_answers, name="tracking-answers", daemon=True).start()

    def _read_answers(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                if "done" in answer:
                    self.done = int(answer["done"])
                elif "detached" in answer:
                    self.detached = True
                elif "log" in answer:
                    self._messages.append(("log", str(answer["log"])))
                elif "warn" in answer:
                    self._messages.append(("warn", str(answer["warn"])))
                    self.warned = True
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def _give_up(self, why: str) -> None:
        if not self.broken:
            self.broken = True
            detail = ""
            if self._stderr is not None:
                self._stderr.seek(0)
                lines = [line for line in self._stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
                detail = f" ({lines[-1].strip()[:300]})" if lines else ""
            self.warn(f"warning: MLflow tracking stopped: {why}{detail}; the steps' results are saved as usual, "
                      "but not tracked")
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def send(self, command: dict[str, Any]) -> None:
        """Queue ``command`` for the worker (started by :meth:`start`); never raises."""
        if self.broken or self.process is None or self.detached:
            return
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
            self.sent += 1
        except (OSError, ValueError) as exc:
            self._give_up(f"the tracking worker could not be reached ({one_line(exc)})")

    # --- waiting, detaching, reporting -----------------------------------------------------------------------
    def print_messages(self) -> None:
        """Print what the worker said so far (progress on stdout, warnings on stderr)."""
        with self._changed:
            messages, self._messages = self._messages, []
        for kind, text in messages:
            (self.log if kind == "log" else self.warn)(text)

    def wait(self, commands: int | None = None) -> bool:
        """Until the first ``commands`` commands (default: all sent) are done, the worker is gone, or the
        timeout; then print its messages. False on the timeout (the worker goes on: see :meth:`detach`)."""
        if self.process is None or self.broken:
            self.print_messages()
            return True
        target = self.sent if commands is None else min(commands, self.sent)
        start = time.perf_counter()
        with self._changed:
            finished = self._changed.wait_for(lambda: self.done >= target or self.ended, self.timeout)
        self.waited += time.perf_counter() - start
        self.print_messages()
        if finished and self.done < target:
            if self.warned:  # it said why itself (a command that timed out)
                self.broken = True
            else:
                try:
                    code: Any = self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    code = "none yet"
                self._give_up(f"the tracking worker ended early (exit code {code})")
        return finished

    def detach(self) -> None:
        """Stop listening: the worker finishes the commands sent on its own; its later messages go to the log.

        The worker acknowledges at once (its input has ended); everything it
        said before that is printed here, so nothing falls between the two.
        """
        if self.process is None or self.detached:
            self.print_messages()
            return
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass
        with self._changed:
            self._changed.wait_for(lambda: self.detached or self.ended, DETACH_TIMEOUT_SECONDS)
            self.detached = True
        self.print_messages()
        if self._stderr is not None:
            self._stderr.close()  # the worker keeps its own copy
            self._stderr = None

    @property
    def finished(self) -> bool:
        """True when the worker has done every command sent (or is gone)."""
        return self.process is None or self.ended or self.done >= self.sent

    def close(self) -> None:
        """``python -m imgclass run``'s end: wait for the worker (bounded), print what it said, let it end."""
        if not self.wait() and not self.broken:
            where = self.layout.tracking_log if self.layout is not None else "tracking.log"
            self.log(f"Tracking: the tracking worker is still busy after {self.timeout:.0f} s; it goes on in the "
                     f"background (messages: {where})")
        self.detach()

    def __enter__(self) -> "TrackingSession":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, KeyboardInterrupt):  # the user wants to stop: do not wait for tracking
            self._give_up("interrupted")
        self.close()


class StepTracker:
    """Tracks one step: ``with StepTracker(params, step) as tracker: report = ...; tracker.record(report)``.

    Without a ``session`` the tracker starts its own worker and, on exit,
    detaches from it (a script; step 1 first waits for its run); with one
    (``python -m imgclass run``) it only prints what the worker has said so
    far, and the caller closes the session at the end.
    """

    def __init__(self, params: Parameters, step: StepSpec, session: TrackingSession | None = None):
        self.params = params
        self.step = step
        self.settings = TrackingSettings.from_parameters(params)
        self.layout = DatasetLayout.from_parameters(params)
        self.session = session
        self._own_session = session is None
        self._log_model = False
        #: seconds this process spent on tracking (starting the worker, sending, waiting): its overhead
        self.seconds = 0.0

    @property
    def _log(self) -> Callable[[str], None]:
        return self.session.log if self.session is not None else print

    @property
    def _warn(self) -> Callable[[str], None]:
        return self.session.warn if self.session is not None else _stderr_warning

    def _classifier(self) -> str:
        """The classifier mode of this step's result ('' when the step does not read it).

        ``params.classifier``, or for ``'auto'`` the mode step 2 chose, so that the run's tag and the
        logged model say what was trained, not 'auto'.
        """
        if "classifier" not in self.step.reads:
            return ""
        try:
            return effective_classifier(self.params)
        except MissingArtifactError:
            return self.params.classifier

    def _job(self, announced_run: str) -> StepJob:
        return StepJob(self.settings.tracking_uri, self.settings.experiment_name, self.settings.model_name,
                       str(self.layout.root), self.layout.dataset, self.step.name, self.step.label, self.step.script,
                       str(self.params.project_dir),
                       self.params.classifier if "classifier" in self.step.reads else "", announced_run)

    def _announce_finished_run(self) -> str:
        """A step 2-5 run alone after step 5 ended the run: say so now (the worker would, later); its id."""
        pointer = read_pointer(self.layout)
        if self.step.name == FIRST_STEP or pointer is None or pointer.get("status") != "FINISHED" \
                or pointer.get("tracking_uri") != self.settings.tracking_uri:
            return ""
        try:
            ended = datetime.fromisoformat(str(pointer.get("ended_at"))).astimezone().strftime("%Y-%m-%d %H:%M")
        except ValueError:
            ended = "earlier"
        run_id = str(pointer.get("run_id", ""))
        self._log(f"Tracking: {ended_run_message(self.step.label, str(pointer.get('run_name', '')), run_id, ended)}; "
                  "scripts/1_prepareData.py starts a new run")
        return run_id

    def __enter__(self) -> "StepTracker":
        start = time.perf_counter()
        try:
            pending.show_undelivered(self.layout, self._log, self._warn)
        except OSError:
            pass  # an unreadable log must not stop a step
        if self.settings.enabled:
            if self.session is None:
                self.session = TrackingSession()
            self.session.start(self.layout, self.step.label)
            # A script says at once that it adds to a finished run. Not in ``run``: its step 1's worker may not
            # have replaced the previous run's mlflow_run.json yet.
            announced = self._announce_finished_run() if self._own_session else ""
            self.session.send({"op": "open", "job": self._job(announced).to_json()})
        if self.step.name == FIRST_STEP and (not self.settings.enabled or self.session is None
                                             or self.session.broken):
            # A new pipeline run that no worker will start: later steps must never add to the previous run.
            # The file goes after the earlier steps' workers, which may still need it.
            if pending.pending_step(self.layout) is not None:
                pending.wait_for_pending(self.layout, WAIT_TIMEOUT_SECONDS, self._log)
            self.layout.mlflow_run_json.unlink(missing_ok=True)
        self.seconds += time.perf_counter() - start
        return self

    def record(self, report: Any) -> None:
        """Send what the step did: its record, whether it completes a model, (step 5) the version's tags."""
        if self.session is None:
            return
        start = time.perf_counter()
        record = records.record_for(self.step.name, report)
        record.params = records.step_params(self.params, self.step)
        classifier = self._classifier()
        if classifier:
            record.tags["classifier"] = classifier
        self._log_model = bool(classifier) and records.completes_model(self.step.name, classifier) \
            and getattr(report, "model", "") is not None  # step 4 of 'dnn' trains nothing
        version_tags = records.version_tags(record.metrics) if self.step.name == LAST_STEP else None
        self.session.send({"op": "record", "job": RecordJob(record, self._log_model, version_tags).to_json()})
        self.seconds += time.perf_counter() - start

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if self.session is None:
            return False
        start = time.perf_counter()
        session = self.session
        if isinstance(exc, KeyboardInterrupt):  # the user wants to stop: do not wait for tracking
            session._give_up("interrupted")
        elif exc is not None:
            session.send({"op": "failed", "message": one_line(exc)})
        if not self._own_session:
            session.print_messages()
        else:
            if exc is None and self.step.name == FIRST_STEP and not session.wait(commands=1):
                self._log(f"Tracking: the run is not started yet (the tracking worker is still busy after "
                          f"{session.timeout:.0f} s); later steps add to it when it is")
            session.detach()
            try:
                pending.show_undelivered(self.layout, self._log, self._warn)  # earlier workers done meanwhile
            except OSError:
                pass
            if not session.finished and (self._log_model or self.step.name == LAST_STEP):
                what = "logging and registering the model" if self._log_model else "ending the run"
                self._log(f"Tracking: {what} goes on in the background (scripts/8_promoteModel.py waits for it; "
                          f"messages: {self.layout.tracking_log})")
        self.seconds += time.perf_counter() - start
        return False


__all__ = ["StepTracker", "TrackingSession"]
