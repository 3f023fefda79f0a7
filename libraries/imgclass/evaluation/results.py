"""Step 5's results as tables to browse: predictions, filters, least-sure images, metrics.

Reads ``results/<ds>/predictions.csv`` and ``metrics.json`` (formats in the
README) into pandas objects. Every function below is pure: it takes a
DataFrame or the metrics dict and returns a new one, never modifying its input,
so the notebook ``showResults.ipynb`` and tests can call them directly.

The per-class scores are what step 5 ranked by: SVM decision values (margins,
roughly -1.5 .. 1.5) for ``classifier='svm'`` / ``'svmDnnRefined'``, softmax
probabilities for ``'dnn'``. How sure the model is about an image is measured
by the *margin* between its two highest scores (small = torn between two
classes) or by its *top score* (low = no class fits well).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imgclass.errors import MissingArtifactError
from imgclass.layout import DatasetLayout, require

#: Prefix of the per-class score columns of predictions.csv.
SCORE_PREFIX = "score_"
MADE_BY = "scripts/5_evaluate.py"


@dataclass(frozen=True)
class Results:
    """Step 5's results of one dataset.

    ``predictions`` has the columns of predictions.csv (``correct`` as bool)
    plus ``runner_up`` (the second-best class), ``margin`` (best minus
    second-best score) and ``image`` (absolute path of the image file).
    """

    predictions: pd.DataFrame
    metrics: dict[str, Any]
    labels: list[str]
    results_dir: Path
    images_dir: Path
    #: step 5's plot files, in reading order (:attr:`DatasetLayout.evaluation_plots`)
    plot_files: tuple[Path, ...] = ()

    @property
    def plots(self) -> dict[str, Path]:
        """The plot files that exist, ``{'roc_curves': Path, ...}``, in reading order."""
        return {path.stem: path for path in self.plot_files if path.is_file()}


def score_columns(labels: list[str]) -> list[str]:
    """The predictions.csv column of each class's score, in class-id order."""
    return [f"{SCORE_PREFIX}{label}" for label in labels]


def labels_of(predictions: pd.DataFrame) -> list[str]:
    """Class names in class-id order, from the ``score_<class>`` columns."""
    return [c[len(SCORE_PREFIX):] for c in predictions.columns if c.startswith(SCORE_PREFIX)]


def read_predictions(path: str | Path, images_dir: str | Path | None = None) -> pd.DataFrame:
    """Read predictions.csv, adding ``runner_up``, ``margin`` and (with ``images_dir``) ``image``.

    Class names are read as text even when they look like numbers or ``NA``.
    """
    frame = pd.read_csv(path, dtype={"path": str, "label": str, "predicted": str}, keep_default_na=False)
    required = {"path", "label", "predicted", "correct", "score"}
    labels = labels_of(frame)
    if not required <= set(frame.columns) or len(labels) < 2:
        raise MissingArtifactError(f"{path} is not a predictions file (columns path,label,predicted,correct,"
                                   f"score,score_<class>...); re-run {MADE_BY}")
    frame["correct"] = frame["correct"].astype(int).astype(bool)
    scores = frame[score_columns(labels)].to_numpy(dtype=np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")
    rows = np.arange(len(frame))
    frame["runner_up"] = [labels[j] for j in order[:, 1]] if len(frame) else pd.Series(dtype=str)
    frame["margin"] = scores[rows, order[:, 0]] - scores[rows, order[:, 1]] if len(frame) else pd.Series(
        dtype=float)
    if images_dir is not None:
        frame["image"] = [Path(images_dir) / p for p in frame["path"]]
    return frame


def load_results(layout: DatasetLayout) -> Results:
    """Read ``predictions.csv`` and ``metrics.json`` of ``layout``'s dataset."""
    predictions = read_predictions(require(layout.predictions_csv, MADE_BY), layout.images_dir)
    metrics = json.loads(require(layout.metrics_json, MADE_BY).read_text(encoding="utf-8"))
    labels = list(metrics.get("labels") or labels_of(predictions))
    if labels != labels_of(predictions):
        raise MissingArtifactError(f"{layout.predictions_csv} and {layout.metrics_json} disagree on the classes; "
                                   f"re-run {MADE_BY}")
    return Results(predictions, metrics, labels, layout.results_dir, layout.images_dir, layout.evaluation_plots)


def filter_predictions(predictions: pd.DataFrame, label: str | None = None, correct: bool | None = None,
                       predicted: str | None = None) -> pd.DataFrame:
    """The rows matching every filter given (None = no filter on that).

    Parameters
    ----------
    label:
        True class.
    correct:
        True: right predictions only; False: wrong ones only.
    predicted:
        Predicted class.
    """
    mask = pd.Series(True, index=predictions.index)
    if label is not None:
        mask &= predictions["label"] == label
    if predicted is not None:
        mask &= predictions["predicted"] == predicted
    if correct is not None:
        mask &= predictions["correct"] == bool(correct)
    return predictions[mask].copy()


def least_sure(predictions: pd.DataFrame, n: int | None = 10, by: str = "margin") -> pd.DataFrame:
    """The ``n`` images the model is least sure about, least sure first.

    Parameters
    ----------
    by:
        ``'margin'``: smallest difference between the two highest scores (the
        model hesitates between two classes); ``'score'``: lowest top score
        (no class fits well). Ties keep the file order (path).
    n:
        How many (None = all, ranked).
    """
    if by not in ("margin", "score"):
        raise ValueError(f"by must be 'margin' or 'score', not {by!r}")
    ranked = predictions.sort_values([by, "path"], kind="stable")
    return (ranked if n is None else ranked.head(n)).copy()


def score_vector(predictions: pd.DataFrame, path: str) -> pd.Series:
    """One image's score for every class (index = class names, class-id order): a bar chart's data."""
    rows = predictions[predictions["path"] == path]
    if rows.empty:
        raise KeyError(f"no prediction for {path!r}")
    labels = labels_of(predictions)
    values = rows.iloc[0][score_columns(labels)].to_numpy(dtype=np.float64)
    return pd.Series(values, index=pd.Index(labels, name="class"), name=path)


def metrics_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Per class: test images, accuracy, AUC; then the rows ``overall`` and ``class average``.

    ``overall`` is the fraction of all test images classified right; ``class
    average`` the mean of the per-class accuracies (and the macro AUC), which
    does not let a large class hide a bad small one.
    """
    labels = list(metrics["labels"])
    counts = metrics.get("per_class_counts", {})
    accuracy = metrics.get("per_class_accuracy", {})
    auc = metrics.get("auc_per_class", {})
    rows = [[counts.get(c), accuracy.get(c), auc.get(c)] for c in labels]
    rows.append([metrics.get("n_test_images"), metrics.get("overall_accuracy"), metrics.get("auc_micro")])
    rows.append([metrics.get("n_test_images"), metrics.get("class_averaged_accuracy"), metrics.get("auc_macro")])
    table = pd.DataFrame(rows, columns=["images", "accuracy", "AUC"],
                         index=pd.Index(labels + ["overall", "class average"], name="class"))
    table["images"] = table["images"].astype("Int64")
    return table


def confusion_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """The confusion matrix with class names: rows = true class, columns = predicted class."""
    labels = list(metrics["labels"])
    return pd.DataFrame(metrics["confusion_matrix"], index=pd.Index(labels, name="true"),
                        columns=pd.Index(labels, name="predicted"))


def summary_line(metrics: dict[str, Any]) -> str:
    """``'Accuracy 0.935 over 46 test images (class average 0.887), AUC macro 0.973, classifier svm'``."""
    def number(key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    return (f"Accuracy {number('overall_accuracy')} over {metrics.get('n_test_images')} test images "
            f"(class average {number('class_averaged_accuracy')}), AUC macro {number('auc_macro')}, "
            f"classifier {metrics.get('classifier', 'svm')}")


__all__ = ["Results", "SCORE_PREFIX", "confusion_table", "filter_predictions", "labels_of",
           "least_sure", "load_results", "metrics_table", "read_predictions", "score_columns", "score_vector",
           "summary_line"]
