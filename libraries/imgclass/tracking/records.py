"""What each of steps 1-5 records in its MLflow run, built from the step's report.

Plain data (:class:`StepRecord`), so what is logged can be read and tested
without a store. Each step logs the parameters it read (together: every
parameter of the pipeline), its counts and results as metrics, and its
output files as artifacts:

=========  ====================================================================================
step 1     split counts (total and per class), skipped files, straddling near-duplicates;
           ``split.csv``, ``labels.json``; tag ``dataset``
step 2     tags ``backbone``, ``classifier``; refinement's per-epoch curves as step metrics
           (``refine/train_loss`` ... at step = epoch), the best epoch, the epochs run, whether it
           stopped early; ``dnnTraining.csv/.png``
step 3     images featurized, reused, unreadable, seconds and images per second; tags device,
           precision; ``features.json``
step 4     CV accuracy per C (``cv_accuracy/C_0.1`` ...), the chosen C with its CV and training
           accuracy; ``svm.json``
step 5     test and class-averaged accuracy, AUC (macro, micro), per-class accuracy and AUC;
           ``metrics.json``, ``predictions.csv``, the plots
=========  ====================================================================================

The model itself is logged by the step that completes it (:func:`completes_model`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from imgclass.parameters import Parameters, StepSpec

#: MLflow refuses longer parameter values.
MAX_PARAM_LENGTH = 6000
#: Version tags copied from step 5's metrics onto the registered model version.
VERSION_METRICS = ("test_accuracy", "class_averaged_accuracy", "auc_macro", "auc_micro")


@dataclass
class StepRecord:
    """What one step logs: parameters, metrics, per-epoch series ``(key, value, step)``, tags, files."""

    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: list[tuple[str, float, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    #: ``(file, folder in the run's artifacts)``; missing files are skipped
    artifacts: list[tuple[Path, str]] = field(default_factory=list)

    def add_metric(self, key: str, value: Any) -> None:
        """Add a finite number under a key MLflow accepts (None and NaN are left out)."""
        if value is None or isinstance(value, bool):
            return
        number = float(value)
        if math.isfinite(number):
            self.metrics[metric_key(key)] = number


def metric_key(key: str) -> str:
    """``key`` with the characters MLflow refuses in names (it allows ``[\\w.\\- /:]``) replaced by ``_``."""
    return re.sub(r"[^\w.\- /:]", "_", key)


def param_value(value: Any) -> str:
    """A parameter as MLflow stores it: its text, cut to MLflow's limit."""
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[:MAX_PARAM_LENGTH - 3] + "..."


def step_params(params: Parameters, step: StepSpec) -> dict[str, str]:
    """The parameters ``step`` reads, as text: what the run records for it."""
    return {name: param_value(getattr(params, name)) for name in step.reads}


def completes_model(step_name: str, classifier: str) -> bool:
    """True for the step whose end makes a complete model: step 4, or step 2 for ``'dnn'`` (no SVM)."""
    return step_name == ("build" if classifier == "dnn" else "train")


def record_for(step_name: str, report: Any) -> StepRecord:
    """The metrics, tags and files of one step's report (parameters are added by the caller)."""
    builders = {"prepare": _prepare, "build": _build, "featurize": _featurize, "train": _train, "evaluate": _evaluate}
    record = StepRecord()
    builders[step_name](report, record)
    return record


def _prepare(report: Any, record: StepRecord) -> None:
    counts: Mapping[str, Mapping[str, int]] = report.counts
    record.add_metric("n_classes", len(report.labels))
    record.add_metric("n_train_images", sum(c["train"] for c in counts.values()))
    record.add_metric("n_test_images", sum(c["test"] for c in counts.values()))
    record.add_metric("n_skipped_files", len(report.skipped_files))
    record.add_metric("n_straddling_duplicates", len(report.straddling_duplicates))
    for label, c in counts.items():
        record.add_metric(f"train_images/{label}", c["train"])
        record.add_metric(f"test_images/{label}", c["test"])
    record.tags["dataset"] = report.layout.dataset
    record.tags["dedicated_test_file"] = str(bool(report.used_dedicated_test_file))
    record.artifacts += [(report.layout.split_csv, "split"), (report.layout.labels_json, "split")]


def _build(report: Any, record: StepRecord) -> None:
    info = report.featurizer.describe()
    record.tags.update(backbone=str(info.get("backbone", "")), resolution=str(info.get("resolution", "")),
                       featurizer_source=str(info.get("source", ""))[:500])
    record.add_metric("feature_dim", info.get("feature_dim"))
    result = report.refinement
    if result is None:
        return
    for epoch, row in enumerate(result.history, start=1):
        for key in ("learning_rate", "train_loss", "train_error", "validation_loss", "validation_error", "seconds"):
            value = row.get(key)
            if value is not None and math.isfinite(float(value)):
                record.series.append((f"refine/{key}", float(value), int(row.get("epoch", epoch))))
    record.add_metric("refine/best_epoch", result.best_epoch)
    record.add_metric("refine/epochs", len(result.fine_tuning_epochs))  # epochs run ('lpft''s probe is not one)
    record.add_metric("refine/stopped_early", int(result.stopped_early))
    record.artifacts += [(report.layout.training_csv, "refinement"), (report.layout.training_png, "refinement")]


def _featurize(report: Any, record: StepRecord) -> None:
    record.add_metric("featurize/images", report.n_images)
    record.add_metric("featurize/computed", report.n_featurized)
    record.add_metric("featurize/reused", report.n_reused)
    record.add_metric("featurize/resumed", report.n_resumed)
    record.add_metric("featurize/unreadable", len(report.failures))
    record.add_metric("featurize/seconds", report.seconds)
    if report.n_featurized and report.seconds > 0:
        record.add_metric("featurize/images_per_second", report.n_featurized / report.seconds)
    record.add_metric("feature_dim", report.feature_dim)
    record.tags.update(device=str(report.device), precision=str(report.precision))
    record.artifacts.append((report.layout.features_json, "features"))


def _train(report: Any, record: StepRecord) -> None:
    if report.model is None:  # 'dnn': nothing to train
        return
    chosen = report.model.C_
    for row in report.per_C:
        record.add_metric(f"cv_accuracy/C_{row['C']:g}", row["cv_accuracy"])
        if row["C"] == chosen:
            record.add_metric("cv_accuracy", row["cv_accuracy"])
            record.add_metric("train_accuracy", row["train_accuracy"])
    record.add_metric("chosen_C", chosen)
    record.add_metric("cv_folds", report.model.cv_results_.folds)
    record.artifacts.append((report.layout.svm_json, "classifier"))


def _evaluate(report: Any, record: StepRecord) -> None:
    m = report.metrics
    record.add_metric("test_accuracy", m.get("overall_accuracy"))
    record.add_metric("class_averaged_accuracy", m.get("class_averaged_accuracy"))
    record.add_metric("auc_macro", m.get("auc_macro"))
    record.add_metric("auc_micro", m.get("auc_micro"))
    record.add_metric("n_test_images_evaluated", m.get("n_test_images"))
    for label in m.get("labels", []):
        record.add_metric(f"test_accuracy/{label}", m.get("per_class_accuracy", {}).get(label))
        record.add_metric(f"auc/{label}", m.get("auc_per_class", {}).get(label))
    record.artifacts += [(path, "evaluation") for path in report.written]


def version_tags(metrics: Mapping[str, float]) -> dict[str, str]:
    """Step 5's headline metrics as tags of the registered model version (what promotion compares)."""
    return {key: f"{metrics[key]:.6g}" for key in VERSION_METRICS if key in metrics}
