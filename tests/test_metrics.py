"""Tests of imgclass.evaluation.metrics against numbers computed by hand on tiny examples."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from imgclass.evaluation.metrics import (
    RocCurves,
    class_averaged_accuracy,
    confusion_matrix,
    overall_accuracy,
    per_class_accuracy,
    roc_curves,
    summarize,
)

# Three classes, six samples, deliberately unbalanced (3 / 2 / 1) so that the
# overall and the class-averaged accuracy differ.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])
# Rows = samples, columns = classes.
SCORES = np.array([
    [0.9, 0.05, 0.05],  # true 0
    [0.8, 0.10, 0.10],  # true 0
    [0.3, 0.60, 0.10],  # true 0
    [0.4, 0.50, 0.10],  # true 1
    [0.2, 0.30, 0.50],  # true 1
    [0.1, 0.20, 0.70],  # true 2
])
LABELS = ["cat", "dog", "fox"]


@pytest.fixture(autouse=True)
def _no_warnings():
    """Every metric must be silent, also on absent classes (no warning spam).

    Numeric (RuntimeWarning) and scikit-learn UndefinedMetricWarning (a
    UserWarning) become errors; library deprecation notices do not.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("error", UserWarning)
        yield


# --- confusion matrix and accuracies --------------------------------------------------


def test_confusion_matrix_by_hand():
    # true 0 -> predicted 0, 0, 1 ; true 1 -> 1, 2 ; true 2 -> 2
    expected = np.array([
        [2, 1, 0],
        [0, 1, 1],
        [0, 0, 1],
    ])
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, expected)
    assert np.issubdtype(cm.dtype, np.integer)


def test_confusion_matrix_keeps_unused_classes():
    cm = confusion_matrix(np.array([0, 0]), np.array([0, 2]), 4)
    assert cm.shape == (4, 4)
    assert cm.sum() == 2 and cm[0, 0] == 1 and cm[0, 2] == 1


def test_accuracies_by_hand():
    # per class: 2/3, 1/2, 1/1
    np.testing.assert_allclose(per_class_accuracy(Y_TRUE, Y_PRED, 3), [2 / 3, 1 / 2, 1.0])
    # overall: 4 right out of 6
    assert overall_accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    # class-averaged: (2/3 + 1/2 + 1) / 3 = (4/6 + 3/6 + 6/6) / 3 = 13/18 = 0.7222
    assert class_averaged_accuracy(Y_TRUE, Y_PRED, 3) == pytest.approx(13 / 18)


def test_accuracy_with_a_class_missing_from_the_test_set():
    y_true = np.array([0, 0, 2, 2])
    y_pred = np.array([0, 1, 2, 2])
    acc = per_class_accuracy(y_true, y_pred, 3)
    assert acc[0] == pytest.approx(0.5)
    assert math.isnan(acc[1])  # no samples of class 1: undefined, not 0
    assert acc[2] == pytest.approx(1.0)
    # mean over the classes present only: (0.5 + 1) / 2
    assert class_averaged_accuracy(y_true, y_pred, 3) == pytest.approx(0.75)


def test_integral_float_labels_are_accepted():
    assert overall_accuracy(np.array([0.0, 1.0]), np.array([0, 1])) == 1.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: confusion_matrix(np.array([0, 1]), np.array([0]), 2), "same length"),
        (lambda: confusion_matrix(np.array([[0, 1]]), np.array([0, 1]), 2), "1-D"),
        (lambda: confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3), "0..2"),
        (lambda: confusion_matrix(np.array([0, -1]), np.array([0, 1]), 3), "0..2"),
        (lambda: confusion_matrix(np.array([0.5, 1]), np.array([0, 1]), 2), "integer"),
        (lambda: confusion_matrix(np.array([0, 1]), np.array([0, 1]), 0), "at least 1"),
        (lambda: overall_accuracy(np.array([], dtype=int), np.array([], dtype=int)), "empty"),
        (lambda: class_averaged_accuracy(np.array([], dtype=int), np.array([], dtype=int), 2), "empty"),
    ],
)
def test_label_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- ROC curves -----------------------------------------------------------------------


def test_roc_auc_by_hand():
    curves = roc_curves(Y_TRUE, SCORES, 3)
    assert isinstance(curves, RocCurves)
    assert curves.n_classes == 3
    # class 0: positives {0.9, 0.8, 0.3}, negatives {0.4, 0.2, 0.1};
    #   pairs won: 3 + 3 + 2 = 8 of 9 -> 8/9
    # class 1: positives {0.5, 0.3}, negatives {0.05, 0.1, 0.6, 0.2};
    #   pairs won: 3 + 3 = 6 of 8 -> 0.75
    # class 2: positive {0.7} above every negative -> 1
    np.testing.assert_allclose(curves.auc, [8 / 9, 0.75, 1.0])
    # macro: mean of the three = (32/36 + 27/36 + 36/36) / 3 = 95/108 = 0.8796
    assert curves.auc_macro == pytest.approx(95 / 108)
    # micro: 6 positives vs 12 negatives (all one-hot cells pooled).
    #   negatives sorted: .05 .05 .1 .1 .1 .1 .1 .2 .2 .4 .5 .6
    #   positives 0.9, 0.8, 0.7 beat all 12; 0.5 beats 10 and ties 1 -> 10.5;
    #   0.3 (twice) beats 9 -> 9 + 9.  (3*12 + 10.5 + 18) / 72 = 64.5/72 = 0.8958
    assert curves.auc_micro == pytest.approx(64.5 / 72)


def test_roc_curve_shapes():
    curves = roc_curves(Y_TRUE, SCORES, 3)
    for fpr, tpr in zip(curves.fpr, curves.tpr):
        assert fpr.shape == tpr.shape
        assert fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    for fpr, tpr in [(curves.fpr_micro, curves.tpr_micro), (curves.fpr_macro, curves.tpr_macro)]:
        assert fpr.shape == tpr.shape
        assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == pytest.approx(1)
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= -1e-12)
    with pytest.raises(ValueError):  # results are read-only
        curves.auc[0] = 0.0


def test_roc_perfect_and_worst_scorers():
    y = np.array([0, 1, 2, 0, 1, 2, 2])
    onehot = np.eye(3)[y]
    best = roc_curves(y, onehot, 3)  # true class always scores highest
    np.testing.assert_allclose(best.auc, [1, 1, 1])
    assert best.auc_micro == pytest.approx(1.0)
    assert best.auc_macro == pytest.approx(1.0)
    worst = roc_curves(y, 1 - onehot, 3)  # true class always scores lowest
    np.testing.assert_allclose(worst.auc, [0, 0, 0])
    assert worst.auc_micro == pytest.approx(0.0)
    assert worst.auc_macro == pytest.approx(0.0)


def test_roc_with_a_class_absent_from_y_true():
    y = np.array([0, 0, 2, 2])
    scores = np.array([
        [0.8, 0.1, 0.1],
        [0.3, 0.3, 0.4],
        [0.2, 0.1, 0.7],
        [0.5, 0.2, 0.3],
    ])
    curves = roc_curves(y, scores, 3)  # the autouse fixture turns warnings into errors
    # class 0: positives {0.8, 0.3} vs negatives {0.2, 0.5}: 2 + 1 = 3 of 4 -> 0.75
    # class 2: positives {0.7, 0.3} vs negatives {0.1, 0.4}: 2 + 1 = 3 of 4 -> 0.75
    assert curves.auc[0] == pytest.approx(0.75)
    assert math.isnan(curves.auc[1])
    assert curves.auc[2] == pytest.approx(0.75)
    assert curves.fpr[1].size == 0 and curves.tpr[1].size == 0
    # macro over the classes present only: (0.75 + 0.75) / 2
    assert curves.auc_macro == pytest.approx(0.75)
    assert 0.0 <= curves.auc_micro <= 1.0


def test_roc_when_every_sample_has_the_same_class():
    curves = roc_curves(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), 2)
    assert np.all(np.isnan(curves.auc))
    assert math.isnan(curves.auc_macro)
    assert curves.fpr_macro.size == 0
    # micro is still defined: the true-class cells {0.8, 0.4} vs the others {0.2, 0.6}: 3 of 4
    assert curves.auc_micro == pytest.approx(0.75)


def test_roc_binary_one_dimensional_scores():
    # classic example: class-1 scores 0.35 and 0.8 vs class-0 scores 0.1 and 0.4;
    # pairs won: 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4 -> 3 of 4 = 0.75
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    curves = roc_curves(y, s, 2)
    # class 0 is scored by -s: the same ranking read the other way, also 0.75
    np.testing.assert_allclose(curves.auc, [0.75, 0.75])
    assert curves.auc_macro == pytest.approx(0.75)
    # the 1-D vector means the same as the matrix [-s, s]
    two_column = roc_curves(y, np.column_stack([-s, s]), 2)
    assert curves.auc_micro == pytest.approx(two_column.auc_micro)


def test_macro_auc_is_the_mean_of_the_per_class_aucs():
    """The macro curve keeps the vertical steps, so no area is lost or invented."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 4, size=25)
        s = np.round(rng.random((25, 4)), 1)  # rounding creates ties
        curves = roc_curves(y, s, 4)
        present = ~np.isnan(curves.auc)
        assert curves.auc_macro == pytest.approx(np.mean(curves.auc[present]))


@pytest.mark.parametrize(
    "y, scores, k, match",
    [
        (np.array([0, 1, 2]), np.zeros((3, 2)), 3, r"\(3, 3\)"),
        (np.array([0, 1, 2]), np.zeros((2, 3)), 3, r"\(3, 3\)"),
        (np.array([0, 1, 2]), np.zeros(3), 3, "1-D score vector"),
        (np.array([0, 1]), np.zeros((2, 2, 1)), 2, "shape"),
        (np.array([0, 1]), np.array([0.1, np.nan]), 2, "finite"),
        (np.array([0, 1]), np.zeros((2, 2)), 1, "at least 2"),
        (np.array([], dtype=int), np.zeros((0, 2)), 2, "empty"),
        (np.array([0, 5]), np.zeros((2, 2)), 2, "0..1"),
    ],
)
def test_roc_shape_errors(y, scores, k, match):
    with pytest.raises(ValueError, match=match):
        roc_curves(y, scores, k)


# --- summary ---------------------------------------------------------------------------


def test_summarize_is_json_ready_and_matches_hand_numbers():
    summary = summarize(Y_TRUE, Y_PRED, SCORES, LABELS)
    assert set(summary) == {
        "labels", "n_test_images", "per_class_counts", "overall_accuracy",
        "class_averaged_accuracy", "per_class_accuracy", "auc_macro", "auc_micro",
        "auc_per_class", "confusion_matrix",
    }
    assert summary["labels"] == LABELS
    assert summary["n_test_images"] == 6
    assert summary["per_class_counts"] == {"cat": 3, "dog": 2, "fox": 1}
    assert summary["overall_accuracy"] == pytest.approx(4 / 6)
    assert summary["class_averaged_accuracy"] == pytest.approx(13 / 18)
    assert summary["per_class_accuracy"] == pytest.approx({"cat": 2 / 3, "dog": 0.5, "fox": 1.0})
    assert summary["auc_per_class"] == pytest.approx({"cat": 8 / 9, "dog": 0.75, "fox": 1.0})
    assert summary["auc_macro"] == pytest.approx(95 / 108)
    assert summary["auc_micro"] == pytest.approx(64.5 / 72)
    assert summary["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # plain Python types only, strict JSON (no NaN) round-trips unchanged
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert type(summary["overall_accuracy"]) is float
    assert type(summary["confusion_matrix"][0][0]) is int


def test_summarize_turns_nan_into_none():
    summary = summarize(np.array([0, 0, 2, 2]), np.array([0, 1, 2, 2]),
                        np.eye(3)[[0, 1, 2, 2]], ["a", "b", "c"])
    assert summary["per_class_accuracy"]["b"] is None
    assert summary["auc_per_class"]["b"] is None
    assert summary["per_class_counts"]["b"] == 0
    json.dumps(summary, allow_nan=False)


def test_summarize_errors():
    with pytest.raises(ValueError, match="unique"):
        summarize(Y_TRUE, Y_PRED, SCORES, ["cat", "cat", "fox"])
    with pytest.raises(ValueError, match="0..1"):
        summarize(Y_TRUE, Y_PRED, SCORES, ["cat", "dog"])  # labels do not cover class 2
