"""The pipeline's side of run tracking: :class:`StepTracker` around each step, one worker process beside it.

``imgclass.cli.run_step`` runs every one of steps 1-5 inside a
:class:`StepTracker`. It hands the tracking work to
:mod:`imgclass.tracking.worker`, a process started when the step starts:
while the step imports torch and works, the worker imports MLflow and opens
the run on another core, and when the step ends it logs what the step did
(built here from the step's report, :mod:`imgclass.tracking.records`). A
script waits for its worker before it exits; ``python -m imgclass run``
shares one worker between its five steps (:class:`TrackingSession`) and waits
once, at the end.

Tracking must never cost a result: the step's files are written by the step
before anything is sent, a failure of the store is one warning (from the
worker), and a worker that cannot start, dies or hangs is one warning too.
``mlflow_trackingUri = ''`` starts no worker at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.tracking import records
from imgclass.tracking.runs import FIRST_STEP, LAST_STEP, RecordJob, StepJob, TrackingSettings, one_line, \
    read_pointer

#: Longest wait for the worker to finish a pipeline's tracking before it is stopped (MLflow's own HTTP
#: timeouts end each call well before; this only guards against a hung worker).
WORKER_TIMEOUT_SECONDS = 300.0


def _stderr_warning(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TrackingSession:
    """The tracking worker process of one script or one ``python -m imgclass run``, started on first use.

    Commands are sent as JSON lines; a thread collects the answers. ``log``
    prints the worker's progress lines, ``warn`` its warnings.
    """

    def __init__(self, log: Callable[[str], None] = print, warn: Callable[[str], None] = _stderr_warning,
                 timeout: float = WORKER_TIMEOUT_SECONDS):
        self.log = log
        self.warn = warn
        self.timeout = timeout
        self.process: subprocess.Popen[str] | None = None
        self.sent = 0
        self.done = 0
        self.ended = False
        self.broken = False
        self.waited = 0.0
        self._messages: list[tuple[str, str]] = []
        self._changed = threading.Condition()
        self._stderr: Any = None

    # --- the worker process ----------------------------------------------------------------------------------
    def _start(self) -> None:
        import imgclass

        package_root = str(Path(imgclass.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONIOENCODING": "utf-8",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, "-m", "imgclass.tracking.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._stderr, text=True, encoding="utf-8",
                                        env=env)
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
                elif "log" in answer:
                    self._messages.append(("log", str(answer["log"])))
                elif "warn" in answer:
                    self._messages.append(("warn", str(answer["warn"])))
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
        """Queue ``command`` for the worker (starting it if needed); never raises."""
        if self.broken:
            return
        try:
            if self.process is None:
                self._start()
            assert self.process is not None and self.process.stdin is not None
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
            self.sent += 1
        except (OSError, ValueError) as exc:
            self._give_up(f"the tracking worker could not be reached ({one_line(exc)})")

    # --- waiting and reporting -------------------------------------------------------------------------------
    def print_messages(self) -> None:
        """Print what the worker said so far (progress on stdout, warnings on stderr)."""
        with self._changed:
            messages, self._messages = self._messages, []
        for kind, text in messages:
            (self.log if kind == "log" else self.warn)(text)

    def wait(self) -> None:
        """Until every command sent so far is done (or the worker is gone); then print its messages."""
        if self.process is None or self.broken:
            self.print_messages()
            return
        start = time.perf_counter()
        with self._changed:
            finished = self._changed.wait_for(lambda: self.done >= self.sent or self.ended, self.timeout)
        self.waited += time.perf_counter() - start
        self.print_messages()
        if not finished:
            self._give_up(f"the tracking worker did not finish within {self.timeout:.0f} s")
        elif self.done < self.sent:
            self._give_up(f"the tracking worker ended early (exit code {self.process.poll()})")

    def close(self) -> None:
        """Wait for the worker, let it end, print what it said."""
        self.wait()
        if self.process is None:
            return
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
        if self._stderr is not None:
            self._stderr.close()

    def __enter__(self) -> "TrackingSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class StepTracker:
    """Tracks one step: ``with StepTracker(params, step) as tracker: report = ...; tracker.record(report)``.

    Without a ``session`` the tracker starts its own worker and waits for it on
    exit (a script); with one (``python -m imgclass run``) it only prints what
    the worker has said so far, and the caller closes the session at the end.
    """

    def __init__(self, params: Parameters, step: StepSpec, session: TrackingSession | None = None):
        self.params = params
        self.step = step
        self.settings = TrackingSettings.from_parameters(params)
        self.layout = DatasetLayout.from_parameters(params)
        self.session = session
        self._own_session = session is None
        #: seconds this process spent on tracking (starting the worker, sending, waiting): its overhead
        self.seconds = 0.0

    def _job(self, previous: dict[str, Any] | None) -> StepJob:
        return StepJob(self.settings.tracking_uri, self.settings.experiment_name, self.settings.model_name,
                       str(self.layout.root), self.layout.dataset, self.step.name, self.step.label, self.step.script,
                       str(self.params.project_dir),
                       self.params.classifier if "classifier" in self.step.reads else "", previous)

    def __enter__(self) -> "StepTracker":
        start = time.perf_counter()
        previous = None
        if self.step.name == FIRST_STEP:  # a new pipeline run: later steps must never add to the last one, even
            previous = read_pointer(self.layout)  # when this step cannot start a run (tracking off or failing)
            self.layout.mlflow_run_json.unlink(missing_ok=True)
        if self.settings.enabled:
            if self.session is None:
                self.session = TrackingSession()
            self.session.send({"op": "open", "job": self._job(previous).to_json()})
        self.seconds += time.perf_counter() - start
        return self

    def record(self, report: Any) -> None:
        """Send what the step did: its record, whether it completes a model, (step 5) the version's tags."""
        if self.session is None:
            return
        start = time.perf_counter()
        record = records.record_for(self.step.name, report)
        record.params = records.step_params(self.params, self.step)
        classifier = self.params.classifier if "classifier" in self.step.reads else ""
        if classifier:
            record.tags["classifier"] = classifier
        log_model = bool(classifier) and records.completes_model(self.step.name, classifier) \
            and getattr(report, "model", "") is not None  # step 4 of 'dnn' trains nothing
        version_tags = records.version_tags(record.metrics) if self.step.name == LAST_STEP else None
        self.session.send({"op": "record", "job": RecordJob(record, log_model, version_tags).to_json()})
        self.seconds += time.perf_counter() - start

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if self.session is None:
            return False
        start = time.perf_counter()
        if isinstance(exc, KeyboardInterrupt):  # the user wants to stop: do not wait for tracking
            self.session._give_up("interrupted")
        elif exc is not None:
            self.session.send({"op": "failed", "message": one_line(exc)})
        if self._own_session:
            self.session.close()
        else:
            self.session.print_messages()
        self.seconds += time.perf_counter() - start
        return False


__all__ = ["StepTracker", "TrackingSession"]
