"""One MLflow run per pipeline run, although steps 1-5 are separate processes.

Step 1 starts a run and writes its id to ``proc/<ds>/mlflow_run.json``
(:attr:`~imgclass.layout.DatasetLayout.mlflow_run_json`); steps 2-5 read it and
add to that run; step 5 ends it. A new step 1 starts a new run. A step run
alone after the run ended adds to it and says so; a step that finds no run
of its store to add to (tracking was off for step 1, the store changed, the
run was deleted) starts one and says that.

:class:`RunLogger` does this from plain data (a :class:`StepJob` and the
step's :class:`~imgclass.tracking.records.StepRecord`): it runs in the
tracking worker process (:mod:`imgclass.tracking.worker`), so that importing
MLflow and talking to the store overlap with the step's own work instead of
adding to it. Any failure of the store (server down, disk full, database
locked) becomes one warning, after which tracking stops for the process: the
step's files are written by the step itself, never by this code.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from imgclass.io.atomic import write_json
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters
from imgclass.serve.pyfunc import artifact_location, import_mlflow, prepare_store, resolve_tracking_uri, sqlite_path
from imgclass.tracking import records
from imgclass.tracking.registry import log_and_register, registered_model_name, tag_version_with_metrics

#: The step that starts a run, and the one that ends it.
FIRST_STEP, LAST_STEP = "prepare", "evaluate"
#: Run tag naming the step that failed last (deleted when a later attempt of a step succeeds).
FAILED_TAG = "imgclass.failed_step"


@dataclass(frozen=True)
class TrackingSettings:
    """Where a dataset's runs go: store URI (``''`` = off), experiment, registered model name."""

    tracking_uri: str
    experiment_name: str
    model_name: str

    @classmethod
    def from_parameters(cls, params: Parameters) -> "TrackingSettings":
        """From ``mlflow_trackingUri``, ``mlflow_experimentName`` and ``mlflow_registeredModelName``."""
        return cls(resolve_tracking_uri(params.mlflow_trackingUri, params.root_path),
                   params.mlflow_experimentName or params.datasetName, registered_model_name(params))

    @property
    def enabled(self) -> bool:
        return bool(self.tracking_uri)

    def ui_command(self) -> str:
        """How to browse the runs: ``mlflow ui`` on the SQLite file, or the server's own address."""
        if sqlite_path(self.tracking_uri) is not None:
            return f"mlflow ui --backend-store-uri {self.tracking_uri}"
        return f"open {self.tracking_uri}" if self.tracking_uri.startswith("http") else "mlflow ui"


@dataclass
class StepJob:
    """What the tracking worker needs to know about one step: plain data, sent as JSON."""

    tracking_uri: str
    experiment_name: str
    model_name: str
    root: str
    dataset: str
    step_name: str
    step_label: str
    step_script: str
    project_dir: str
    #: the ``classifier`` parameter when the step reads it, else ''
    classifier: str = ""
    #: the finished run the script already told the user it adds to (from ``mlflow_run.json``), else ''
    announced_run: str = ""

    @property
    def layout(self) -> DatasetLayout:
        return DatasetLayout(Path(self.root), self.dataset)

    @property
    def settings(self) -> TrackingSettings:
        return TrackingSettings(self.tracking_uri, self.experiment_name, self.model_name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RecordJob:
    """A step's record, whether it completes a model, and (step 5) the tags for the model version."""

    record: records.StepRecord
    log_model: bool = False
    version_tags: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self.record)
        record["artifacts"] = [[str(path), folder] for path, folder in self.record.artifacts]
        return {"record": record, "log_model": self.log_model, "version_tags": self.version_tags}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RecordJob":
        raw = dict(data["record"])
        raw["artifacts"] = [(Path(path), folder) for path, folder in raw.get("artifacts", [])]
        raw["series"] = [tuple(item) for item in raw.get("series", [])]
        return cls(records.StepRecord(**raw), bool(data.get("log_model")), data.get("version_tags"))


def git_commit(folder: Path) -> str | None:
    """The commit checked out in ``folder``'s git repository, or None (no git, not a repository)."""
    try:
        result = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (MLflow's errors can be pages long)."""
    text = str(getattr(exc, "message", "") or exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def ended_run_message(step_label: str, run_name: str, run_id: str, ended: str) -> str:
    """``step 4 (train) adds to run 'x' (id), which ended <when>``: one wording for the script and the worker."""
    return f"{step_label} adds to run '{run_name}' ({run_id}), which ended {ended}"


def read_pointer(layout: DatasetLayout) -> dict[str, Any] | None:
    """``mlflow_run.json`` as the last step 1 wrote it (None if missing or unreadable)."""
    try:
        saved = json.loads(layout.mlflow_run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


class RunLogger:
    """Logs steps to the dataset's run (the tracking worker's side): open, record, fail.

    ``log`` receives progress lines for the user, ``warn`` the one warning of a
    failure; after a failure every later call does nothing.
    """

    def __init__(self, log: Callable[[str], None], warn: Callable[[str], None]):
        self.log = log
        self.warn = warn
        self.client: Any = None
        self.job: StepJob | None = None
        self.run_id: str | None = None
        self.run_name = ""
        self.failed = False

    def _attempt(self, what: str, action: Callable[[], Any]) -> Any:
        """``action()``, or None after turning a failure into one warning (tracking stops here)."""
        if self.failed:
            return None
        try:
            return action()
        except Exception as exc:  # any failure of the store must not cost a result
            self.failed = True
            job = self.job
            where = f" in {job.tracking_uri}" if job else ""
            saved = f"; the step's results are saved in {job.layout.proc_dir} and {job.layout.results_dir}" \
                if job else ""
            self.warn(f"warning: MLflow tracking failed while {what} ({one_line(exc)}){saved}, but from here on "
                      f"nothing is tracked{where}")
            return None

    # --- opening the run -------------------------------------------------------------------------------------
    def open(self, job: StepJob) -> None:
        """Start (step 1) or resume (steps 2-5) the dataset's run for ``job``'s step.

        Step 1 removes ``mlflow_run.json`` first, whatever happens next: later
        steps must never add to the previous pipeline run, even when this one
        cannot start (the store failing). The worker does it in its turn, after
        the earlier steps' workers, which still need the file.
        """
        self.job, self.run_id = job, None
        previous = None
        if job.step_name == FIRST_STEP:
            previous = read_pointer(job.layout)
            job.layout.mlflow_run_json.unlink(missing_ok=True)
        self._attempt(f"opening the run of {job.step_label}", lambda: self._open(job, previous))

    def _open(self, job: StepJob, previous: dict[str, Any] | None) -> None:
        if self.client is None or self.client.tracking_uri != job.tracking_uri:
            mlflow = import_mlflow()
            prepare_store(job.tracking_uri)
            self.client = mlflow.MlflowClient(job.tracking_uri, job.tracking_uri)
        experiment_id = self._experiment_id(job)
        if job.step_name == FIRST_STEP:
            self._start(job, experiment_id, self._recorded_run(job, previous), "")
            return
        run = self._recorded_run(job, read_pointer(job.layout))
        if run is None:
            self._start(job, experiment_id, None, f"found no run of {job.tracking_uri} to add to in "
                                                  f"{job.layout.mlflow_run_json}")
            return
        self.run_id, self.run_name = run.info.run_id, run.info.run_name
        if run.info.status != "RUNNING" and job.announced_run != self.run_id:
            ended = datetime.fromtimestamp((run.info.end_time or run.info.start_time) / 1000).strftime(
                "%Y-%m-%d %H:%M")
            self.log(f"Tracking: {ended_run_message(job.step_label, self.run_name, self.run_id, ended)} "
                     f"({run.info.status.lower()}); scripts/1_prepareData.py starts a new run")

    def _experiment_id(self, job: StepJob) -> str:
        experiment = self.client.get_experiment_by_name(job.experiment_name)
        if experiment is None:
            return self.client.create_experiment(job.experiment_name,
                                                 artifact_location(job.tracking_uri, job.experiment_name),
                                                 tags={"dataset": job.dataset})
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _recorded_run(self, job: StepJob, pointer: dict[str, Any] | None) -> Any:
        """The run ``pointer`` names if it is in this store and not deleted, else None."""
        if pointer is None or pointer.get("tracking_uri") != job.tracking_uri:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(str(pointer.get("run_id")))
        except MlflowException:
            return None
        return None if run.info.lifecycle_stage == "deleted" else run

    def _start(self, job: StepJob, experiment_id: str, previous: Any, why: str) -> None:
        tags = {"dataset": job.dataset, "mlflow.source.name": job.step_script, "mlflow.source.type": "LOCAL",
                "imgclass.started_by": job.step_label}
        commit = git_commit(Path(job.project_dir))
        if commit:
            tags["mlflow.source.git.commit"] = tags["git_commit"] = commit
        run = self.client.create_run(experiment_id, tags=tags)
        self.run_id, self.run_name = run.info.run_id, run.info.run_name
        if previous is not None and previous.info.status == "RUNNING":  # an earlier pipeline run never finished
            self.client.set_tag(previous.info.run_id, "imgclass.superseded_by", self.run_id)
            self.client.set_terminated(previous.info.run_id, "KILLED")
        write_json(job.layout.mlflow_run_json, {
            "run_id": self.run_id, "run_name": self.run_name, "experiment_id": experiment_id,
            "experiment_name": job.experiment_name, "tracking_uri": job.tracking_uri,
            "started_by": job.step_label, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        because = f" ({why})" if why else ""
        self.log(f"Tracking: {job.step_label} started run '{self.run_name}' ({self.run_id}) in experiment "
                 f"'{job.experiment_name}' at {job.tracking_uri}{because}")

    # --- logging what the step did -------------------------------------------------------------------------
    def record(self, job: RecordJob) -> None:
        """Log the step's parameters, metrics, tags and files; then the model, the version's tags, the end."""
        if not self.run_id or self.job is None:
            return
        self._attempt(f"logging {self.job.step_label}", lambda: self._log(job.record))
        if job.log_model:
            self._attempt("logging and registering the model", lambda: self._log_model(job.record.tags))
        if job.version_tags is not None:
            self._attempt("ending the run", lambda: self._finish(job.version_tags or {}))

    def failed_step(self, message: str) -> None:
        """Tag the run with the step that failed (the step's error is reported by the step itself)."""
        if self.run_id and self.job is not None:
            self._attempt("noting the failed step",
                          lambda: self.client.set_tag(self.run_id, FAILED_TAG, f"{self.job.step_label}: {message}"))

    def _log(self, record: records.StepRecord) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.get_run(self.run_id)
        existing, step = run.data.params, self.job.step_name
        params = []
        for key, value in record.params.items():
            if key not in existing:
                params.append(Param(key, value))
            elif existing[key] != value and f"{step}/{key}" not in existing:
                # this step ran with another value than an earlier step of the run: keep both, the later one
                # under the step's name (MLflow never changes a logged parameter)
                params.append(Param(f"{step}/{key}", value))
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, 0) for key, value in record.metrics.items()]
        metrics += [Metric(key, value, now, int(epoch)) for key, value, epoch in record.series]
        tags = [RunTag(key, value) for key, value in record.tags.items()]
        if FAILED_TAG in run.data.tags:  # this attempt succeeded
            self.client.delete_tag(self.run_id, FAILED_TAG)
        for start in range(0, max(len(params), len(metrics), 1), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 100], params=params[start:start + 100],
                                  tags=tags if start == 0 else [])
        for path, folder in record.artifacts:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path), folder)

    def _log_model(self, tags: dict[str, str]) -> None:
        from imgclass.data.splits import read_split

        job = self.job
        layout = job.layout
        rows = read_split(layout.split_csv) if layout.split_csv.is_file() else []
        example = layout.images_dir / rows[0].path if rows else None
        known = {**self.client.get_run(self.run_id).data.tags, **tags}
        model_tags = {key: known[key] for key in ("backbone", "classifier") if key in known}
        # The step's tag names the mode trained ('auto' resolved by the step); the job's is the parameter.
        classifier = tags.get("classifier") or job.classifier
        version = log_and_register(self.client, self.run_id, layout, job.model_name, classifier, example,
                                   model_tags)
        self.log(f"Tracking: model logged to run '{self.run_name}' and registered as version {version} of "
                 f"'{job.model_name}' (models:/{job.model_name}/{version})")

    def _finish(self, version_tags: dict[str, str]) -> None:
        tagged = tag_version_with_metrics(self.client, self.run_id, version_tags)
        self.client.set_terminated(self.run_id, "FINISHED")
        pointer = read_pointer(self.job.layout)
        if pointer is not None and pointer.get("run_id") == self.run_id:  # so that a later step, run alone,
            write_json(self.job.layout.mlflow_run_json, {  # can say at once that it adds to a finished run
                **pointer, "status": "FINISHED", "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        version = f"; model version {tagged.replace('/', ' ')} tagged with its test metrics" if tagged else ""
        self.log(f"Tracking: run '{self.run_name}' ({self.run_id}) finished{version}; browse the runs: "
                 f"{self.job.settings.ui_command()}")


__all__ = ["RecordJob", "RunLogger", "StepJob", "TrackingSettings", "ended_run_message", "git_commit", "read_pointer"]
