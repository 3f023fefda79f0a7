"""One MLflow run per pipeline run, although steps 1-5 are separate processes.

Step 1 starts a run and writes its id to ``proc/<ds>/mlflow_run.json``
(:attr:`~imgclass.layout.DatasetLayout.mlflow_run_json`); steps 2-5 read it and
add to that run; step 5 ends it. A new step 1 starts a new run. A step run
alone after the run ended adds to it and says so; a step that finds no run
of its store to add to (tracking was off for step 1, the store changed, the
run was deleted) starts one and says that.

:class:`StepTracker` wraps one step (``imgclass.cli`` runs every step through
it). Tracking must never cost a result: the step's files are written before
anything is logged, and any failure of the store (server down, disk full,
database locked) becomes one warning on stderr, after which the step goes on
untracked. ``mlflow_trackingUri = ''`` turns all of it off.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from imgclass.io.atomic import write_json
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.serve.pyfunc import artifact_location, import_mlflow, prepare_store, resolve_tracking_uri, sqlite_path
from imgclass.tracking import records
from imgclass.tracking.registry import VERSION_TAG, log_and_register, registered_model_name, \
    tag_version_with_metrics

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


def git_commit(folder: Path) -> str | None:
    """The commit checked out in ``folder``'s git repository, or None (no git, not a repository)."""
    try:
        result = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


class StepTracker:
    """Tracks one step: opens (or starts) the dataset's run, logs the step's record, the model, the end.

    Use as ``with StepTracker(params, step) as tracker: report = ...; tracker.record(report)``.
    Every call into MLflow goes through :meth:`_attempt`: the first failure is
    one warning and switches tracking off for the rest of the step.
    """

    def __init__(self, params: Parameters, step: StepSpec, log: Callable[[str], None] = print,
                 warn: Callable[[str], None] | None = None):
        self.params = params
        self.step = step
        self.settings = TrackingSettings.from_parameters(params)
        self.layout = DatasetLayout.from_parameters(params)
        self.log = log
        self.warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
        self.client: Any = None
        self.run_id: str | None = None
        self.run_name = ""
        self.failed = False
        self.seconds = 0.0  # time spent tracking (the overhead a benchmark reports)

    # --- the guard ---------------------------------------------------------------------------------------
    def _attempt(self, what: str, action: Callable[[], Any]) -> Any:
        """``action()``, or None after turning a failure into one warning (tracking stops for this step)."""
        if self.failed or not self.settings.enabled:
            return None
        start = time.perf_counter()
        try:
            return action()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # any failure of the store must not cost the step's result
            self.failed = True
            self.warn(f"warning: MLflow tracking failed while {what} ({_one_line(exc)}); the step's results are "
                      f"saved in {self.layout.proc_dir} and {self.layout.results_dir}, but this step is not (fully) "
                      f"tracked in {self.settings.tracking_uri}")
            return None
        finally:
            self.seconds += time.perf_counter() - start

    # --- opening the run -------------------------------------------------------------------------------------
    def __enter__(self) -> "StepTracker":
        self._attempt(f"opening the run at {self.settings.tracking_uri}", self._open)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and self.run_id and not isinstance(exc, KeyboardInterrupt):
            self._attempt("noting the failed step", lambda: self.client.set_tag(
                self.run_id, FAILED_TAG, f"{self.step.label}: {_one_line(exc)}"))
        return False

    def _open(self) -> None:
        mlflow = import_mlflow()
        prepare_store(self.settings.tracking_uri)
        self.client = mlflow.MlflowClient(self.settings.tracking_uri, self.settings.tracking_uri)
        experiment_id = self._experiment_id()
        recorded = self._recorded_run()
        if self.step.name == FIRST_STEP:
            self._start(experiment_id, recorded, "")
            return
        if recorded is None:
            self._start(experiment_id, None, f"found no run of {self.settings.tracking_uri} to add to in "
                                             f"{self.layout.mlflow_run_json}")
            return
        run = recorded
        self.run_id, self.run_name = run.info.run_id, run.info.run_name
        if run.info.status != "RUNNING":
            ended = datetime.fromtimestamp((run.info.end_time or run.info.start_time) / 1000).strftime(
                "%Y-%m-%d %H:%M")
            self.log(f"Tracking: {self.step.label} adds to run '{self.run_name}' ({self.run_id}), which ended "
                     f"{ended} ({run.info.status.lower()}); scripts/1_prepareData.py starts a new run")

    def _experiment_id(self) -> str:
        name = self.settings.experiment_name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            return self.client.create_experiment(name, artifact_location(self.settings.tracking_uri, name),
                                                 tags={"dataset": self.params.datasetName})
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _recorded_run(self) -> Any:
        """The run named in ``mlflow_run.json`` if it is in this store and not deleted, else None."""
        path = self.layout.mlflow_run_json
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("tracking_uri") != self.settings.tracking_uri:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(str(saved.get("run_id")))
        except MlflowException:
            return None
        return None if run.info.lifecycle_stage == "deleted" else run

    def _start(self, experiment_id: str, previous: Any, why: str) -> None:
        tags = {"dataset": self.params.datasetName, "mlflow.source.name": self.step.script,
                "mlflow.source.type": "LOCAL", "imgclass.started_by": self.step.label}
        commit = git_commit(self.params.project_dir)
        if commit:
            tags["mlflow.source.git.commit"] = tags["git_commit"] = commit
        run = self.client.create_run(experiment_id, tags=tags)
        self.run_id, self.run_name = run.info.run_id, run.info.run_name
        if previous is not None and previous.info.status == "RUNNING":  # an earlier pipeline run never finished
            self.client.set_tag(previous.info.run_id, "imgclass.superseded_by", self.run_id)
            self.client.set_terminated(previous.info.run_id, "KILLED")
        write_json(self.layout.mlflow_run_json, {
            "run_id": self.run_id, "run_name": self.run_name, "experiment_id": experiment_id,
            "experiment_name": self.settings.experiment_name, "tracking_uri": self.settings.tracking_uri,
            "started_by": self.step.label, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        because = f" ({why})" if why else ""
        self.log(f"Tracking: {self.step.label} started run '{self.run_name}' ({self.run_id}) in experiment "
                 f"'{self.settings.experiment_name}' at {self.settings.tracking_uri}{because}")

    # --- logging what the step did -------------------------------------------------------------------------
    def record(self, report: Any) -> None:
        """Log the step's parameters, metrics, tags and files; the model if this step completes one; the end."""
        if not self.run_id:
            return
        record = records.record_for(self.step.name, report)
        record.params = records.step_params(self.params, self.step)
        if "classifier" in self.step.reads:
            record.tags["classifier"] = self.params.classifier
        self._attempt(f"logging {self.step.label}", lambda: self._log(record))
        classifier = self.params.classifier if "classifier" in self.step.reads else ""
        if classifier and records.completes_model(self.step.name, classifier) \
                and getattr(report, "model", "") is not None:  # step 4 of 'dnn' trains nothing
            self._attempt("logging and registering the model", lambda: self._log_model(record.tags))
        if self.step.name == LAST_STEP:
            self._attempt("ending the run", lambda: self._finish(report))

    def _log(self, record: records.StepRecord) -> None:
        from mlflow.entities import Metric, Param, RunTag

        existing = self.client.get_run(self.run_id).data.params
        params = []
        for key, value in record.params.items():
            if key not in existing:
                params.append(Param(key, value))
            elif existing[key] != value and f"{self.step.name}/{key}" not in existing:
                # this step ran with another value than an earlier step of the run: keep both, the later one
                # under the step's name (MLflow never changes a logged parameter)
                params.append(Param(f"{self.step.name}/{key}", value))
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, 0) for key, value in record.metrics.items()]
        metrics += [Metric(key, value, now, step) for key, value, step in record.series]
        tags = [RunTag(key, value) for key, value in record.tags.items()]
        if FAILED_TAG in self.client.get_run(self.run_id).data.tags:  # this attempt succeeded
            self.client.delete_tag(self.run_id, FAILED_TAG)
        for start in range(0, max(len(params), len(metrics), 1), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 100], params=params[start:start + 100],
                                  tags=tags if start == 0 else [])
        for path, folder in record.artifacts:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path), folder)

    def _log_model(self, tags: dict[str, str]) -> None:
        example = None
        split = self.layout.split_csv
        if split.is_file():
            from imgclass.data.splits import read_split

            rows = read_split(split)
            example = self.layout.images_dir / rows[0].path if rows else None
        known = {**self.client.get_run(self.run_id).data.tags, **tags}
        model_tags = {key: known[key] for key in ("backbone", "classifier") if key in known}
        version = log_and_register(self.client, self.run_id, self.layout, self.settings.model_name, example,
                                   model_tags)
        self.log(f"Tracking: model logged to run '{self.run_name}' and registered as version {version} of "
                 f"'{self.settings.model_name}' (models:/{self.settings.model_name}/{version})")

    def _finish(self, report: Any) -> None:
        metrics = {key: value for key, value in records.record_for(self.step.name, report).metrics.items()}
        tagged = tag_version_with_metrics(self.client, self.run_id, records.version_tags(metrics))
        self.client.set_terminated(self.run_id, "FINISHED")
        version = f"; model version {tagged.replace('/', ' ')} tagged with its test metrics" if tagged else ""
        self.log(f"Tracking: run '{self.run_name}' ({self.run_id}) finished{version}; browse the runs: "
                 f"{self.settings.ui_command()}")


__all__ = ["StepTracker", "TrackingSettings", "VERSION_TAG", "git_commit"]
