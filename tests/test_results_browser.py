"""Reading step 5's results for browsing: predictions table, filters, least-sure ranking, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imgclass.evaluation import results as R
from imgclass.errors import MissingArtifactError
from imgclass.layout import DatasetLayout

LABELS = ["cat", "dog", "NA"]  # 'NA' must stay a class name, not become a missing value
# path, true label, scores (cat, dog, NA): the predicted class is the highest score
TABLE = [
    ("cat/a.jpg", "cat", [0.9, -0.8, -1.0]),    # right, margin 1.7
    ("cat/b.jpg", "cat", [0.25, 0.125, -1.0]),  # right, margin 0.125
    ("dog/c.jpg", "dog", [0.5, 0.25, -0.5]),    # wrong (cat), margin 0.25
    ("dog/d.jpg", "dog", [-0.9, 0.8, -0.7]),    # right, margin 1.5
    ("NA/e.jpg", "NA", [-0.75, -0.5, -0.375]),  # right, margin 0.125: a tie with cat/b, broken by path
    ("NA/f.jpg", "NA", [-1.0, 0.6, -0.2]),      # wrong (dog), margin 0.8
]
METRICS = {
    "labels": LABELS, "n_test_images": 6, "per_class_counts": {"cat": 2, "dog": 2, "NA": 2},
    "overall_accuracy": 4 / 6, "class_averaged_accuracy": (1 + 0.5 + 0.5) / 3,
    "per_class_accuracy": {"cat": 1.0, "dog": 0.5, "NA": 0.5},
    "auc_macro": 0.8, "auc_micro": 0.85, "auc_per_class": {"cat": 0.9, "dog": 0.7, "NA": None},
    "confusion_matrix": [[2, 0, 0], [1, 1, 0], [0, 1, 1]], "classifier": "svm", "C": 1.0, "featurizer": {},
}


def write_results(layout: DatasetLayout, table=TABLE, metrics=METRICS) -> None:
    lines = ["path,label,predicted,correct,score," + ",".join(f"score_{c}" for c in LABELS)]
    for path, label, scores in table:
        predicted = LABELS[int(np.argmax(scores))]
        lines.append(f"{path},{label},{predicted},{int(predicted == label)},{max(scores):.6g},"
                     + ",".join(f"{s:.6g}" for s in scores))
    layout.results_dir.mkdir(parents=True)
    layout.predictions_csv.write_text("\n".join(lines) + "\n")
    layout.metrics_json.write_text(json.dumps(metrics))
    (layout.results_dir / "confusion_matrix.png").write_bytes(b"png")
    (layout.results_dir / "roc_curves.png").write_bytes(b"png")


@pytest.fixture
def results(tmp_path: Path) -> R.Results:
    layout = DatasetLayout(tmp_path, "toy")
    write_results(layout)
    return R.load_results(layout)


def test_predictions_are_read_with_margin_runner_up_and_image_paths(results: R.Results, tmp_path: Path) -> None:
    frame = results.predictions
    assert results.labels == LABELS == R.labels_of(frame)
    assert frame["label"].tolist() == ["cat", "cat", "dog", "dog", "NA", "NA"]
    assert frame["correct"].dtype == bool
    assert frame["correct"].tolist() == [True, True, False, True, True, False]
    assert frame["predicted"].tolist() == ["cat", "cat", "cat", "dog", "NA", "dog"]
    assert frame["runner_up"].tolist() == ["dog", "dog", "dog", "NA", "dog", "NA"]
    np.testing.assert_allclose(frame["margin"], [1.7, 0.125, 0.25, 1.5, 0.125, 0.8], atol=1e-9)
    assert frame["image"].iloc[0] == tmp_path / "images" / "toy" / "cat" / "a.jpg"
    assert list(results.plots) == ["roc_curves", "confusion_matrix"]  # the ones present, in reading order


def test_filters_by_class_outcome_and_prediction_without_touching_the_input(results: R.Results) -> None:
    frame = results.predictions
    before = frame.copy()
    assert R.filter_predictions(frame, label="dog")["path"].tolist() == ["dog/c.jpg", "dog/d.jpg"]
    assert R.filter_predictions(frame, correct=False)["path"].tolist() == ["dog/c.jpg", "NA/f.jpg"]
    assert R.filter_predictions(frame, correct=True, label="NA")["path"].tolist() == ["NA/e.jpg"]
    assert R.filter_predictions(frame, predicted="cat", correct=False)["path"].tolist() == ["dog/c.jpg"]
    assert R.filter_predictions(frame)["path"].tolist() == frame["path"].tolist()
    assert R.filter_predictions(frame, label="fish").empty
    pd.testing.assert_frame_equal(frame, before)


def test_least_sure_ranks_by_margin_or_top_score(results: R.Results) -> None:
    frame = results.predictions
    before = frame.copy()
    by_margin = R.least_sure(frame, n=3)
    # equal margins (0.125, exact in binary) keep path order: 'NA/e.jpg' < 'cat/b.jpg'
    assert by_margin["path"].tolist() == ["NA/e.jpg", "cat/b.jpg", "dog/c.jpg"]
    assert R.least_sure(frame, n=None, by="score")["path"].tolist() == [
        "NA/e.jpg", "cat/b.jpg", "dog/c.jpg", "NA/f.jpg", "dog/d.jpg", "cat/a.jpg"]
    assert len(R.least_sure(frame, n=10)) == 6
    with pytest.raises(ValueError, match="margin"):
        R.least_sure(frame, by="entropy")
    pd.testing.assert_frame_equal(frame, before)


def test_score_vector_is_one_image_in_class_order(results: R.Results) -> None:
    vector = R.score_vector(results.predictions, "NA/f.jpg")
    assert vector.index.tolist() == LABELS
    np.testing.assert_allclose(vector.to_numpy(), [-1.0, 0.6, -0.2])
    with pytest.raises(KeyError):
        R.score_vector(results.predictions, "missing.jpg")


def test_metrics_and_confusion_tables(results: R.Results) -> None:
    table = R.metrics_table(results.metrics)
    assert table.index.tolist() == LABELS + ["overall", "class average"]
    assert table["images"].tolist() == [2, 2, 2, 6, 6]
    assert table.loc["dog", "accuracy"] == 0.5
    assert pd.isna(table.loc["NA", "AUC"])  # undefined AUC stays missing, not 0
    assert table.loc["overall", "accuracy"] == pytest.approx(4 / 6)
    assert table.loc["class average", "AUC"] == 0.8
    confusion = R.confusion_table(results.metrics)
    assert confusion.loc["NA", "dog"] == 1 and confusion.index.name == "true"
    assert R.summary_line(results.metrics).startswith("Accuracy 0.667 over 6 test images (class average 0.667)")
    assert "AUC macro n/a" in R.summary_line({**results.metrics, "auc_macro": None})


def test_missing_or_inconsistent_results_say_what_to_run(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path, "toy")
    with pytest.raises(MissingArtifactError, match="5_evaluate"):
        R.load_results(layout)
    write_results(layout, metrics={**METRICS, "labels": ["cat", "dog", "fish"]})
    with pytest.raises(MissingArtifactError, match="disagree"):
        R.load_results(layout)
    layout.predictions_csv.write_text("a,b\n1,2\n")
    with pytest.raises(MissingArtifactError, match="not a predictions file"):
        R.read_predictions(layout.predictions_csv)
