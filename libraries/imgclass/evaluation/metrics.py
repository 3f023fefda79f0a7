"""Classification metrics: pure functions of label and score arrays.

Nothing here reads files, models or parameters: every function takes numpy
arrays (labels are integer class ids ``0..K-1``) and returns plain values or
arrays, so the evaluation step, a notebook and the tests all compute the same
numbers. Plotting lives in :mod:`imgclass.evaluation.plots`.

Two accuracies are reported because test sets are rarely balanced: the
*overall* accuracy is dominated by the large classes, the *class-averaged*
accuracy (mean per-class recall) weighs every class equally, so a classifier
that ignores a small class is visible in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import auc as _trapezoid_auc
from sklearn.metrics import roc_curve as _roc_curve

__all__ = [
    "RocCurves",
    "class_averaged_accuracy",
    "confusion_matrix",
    "overall_accuracy",
    "per_class_accuracy",
    "roc_curves",
    "summarize",
]


# --- validation ------------------------------------------------------------------


def _check_n_classes(n_classes: int, minimum: int = 1) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
        raise ValueError(f"n_classes must be an integer, got {n_classes!r}")
    if n_classes < minimum:
        raise ValueError(f"n_classes must be at least {minimum}, got {n_classes}")
    return int(n_classes)


def _as_labels(y: Any, name: str, n_classes: int | None = None) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array, checking it holds class ids in ``0..n_classes-1``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class ids, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class ids, got non-integer values")
    arr = arr.astype(np.int64)
    if n_classes is not None:
        bad = (arr < 0) | (arr >= n_classes)
        if bad.any():
            raise ValueError(
                f"{name} must hold class ids in 0..{n_classes - 1}, got {int(arr[bad][0])}"
            )
    return arr


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same length, got {a.shape[0]} and {b.shape[0]}")


def _as_scores(scores: Any, n_samples: int, n_classes: int) -> np.ndarray:
    """Return ``scores`` as an (N, K) float array; a 1-D vector is allowed when K = 2.

    A 1-D vector is read as the decision value of class 1 and class 0 gets its
    negation, which is what a binary linear SVM's ``decision_function`` means
    (the threshold is 0 and ``argmax([-s, s])`` is its prediction). This keeps
    the micro average meaningful for decision values; pass an (N, 2) matrix for
    probabilities.
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim == 1:
        if n_classes != 2:
            raise ValueError(
                f"a 1-D score vector is only accepted for 2 classes (score of class 1); "
                f"got n_classes={n_classes}, pass an (N, {n_classes}) matrix instead"
            )
        arr = np.column_stack([-arr, arr])
    if arr.ndim != 2 or arr.shape != (n_samples, n_classes):
        raise ValueError(
            f"scores must have shape (n_samples, n_classes) = ({n_samples}, {n_classes}), "
            f"got {np.shape(scores)}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("scores must be finite (found NaN or infinity)")
    return arr


# --- accuracies --------------------------------------------------------------------


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Count how often each true class was predicted as each class.

    Parameters
    ----------
    y_true, y_pred:
        1-D arrays of class ids in ``0..n_classes-1``, same length.
    n_classes:
        Number of classes K. Passed explicitly so that a class absent from both
        arrays still gets its (all-zero) row and column.

    Returns
    -------
    numpy.ndarray
        (K, K) int64 array; ``cm[i, j]`` = number of samples of true class ``i``
        predicted as class ``j`` (rows are true classes, columns predictions).
    """
    n_classes = _check_n_classes(n_classes)
    t = _as_labels(y_true, "y_true", n_classes)
    p = _as_labels(y_pred, "y_pred", n_classes)
    _check_same_length(t, p, "y_true", "y_pred")
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Fraction of each class's samples that were classified correctly (its recall).

    Returns
    -------
    numpy.ndarray
        (K,) float array; NaN for a class with no samples in ``y_true``, because
        its accuracy is undefined, not zero.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    correct = np.diag(cm).astype(np.float64)
    out = np.full(cm.shape[0], np.nan)
    np.divide(correct, support, out=out, where=support > 0)
    return out


def overall_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of all samples classified correctly.

    Raises
    ------
    ValueError
        If there are no samples (the accuracy would be undefined).
    """
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    _check_same_length(t, p, "y_true", "y_pred")
    if t.size == 0:
        raise ValueError("cannot compute an accuracy without samples (y_true is empty)")
    return float(np.mean(t == p))


def class_averaged_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean of the per-class accuracies over the classes present in ``y_true``.

    Every class counts equally whatever its size; classes without test samples
    are left out rather than counted as 0 or 1.

    Raises
    ------
    ValueError
        If there are no samples.
    """
    acc = per_class_accuracy(y_true, y_pred, n_classes)
    present = ~np.isnan(acc)
    if not present.any():
        raise ValueError("cannot compute an accuracy without samples (y_true is empty)")
    return float(np.mean(acc[present]))


# --- ROC curves --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RocCurves:
    """One-vs-rest ROC curves of every class, plus their micro and macro averages.

    Attributes
    ----------
    fpr, tpr:
        Per class, the false- and true-positive rates of its ROC curve
        (read-only 1-D arrays); empty for a class whose AUC is undefined.
    auc:
        (K,) per-class areas under the curve; NaN where undefined (the class has
        no samples in ``y_true``, or every sample is of that class).
    fpr_micro, tpr_micro, auc_micro:
        ROC of all (sample, class) pairs pooled: the one-hot truth flattened
        against the flattened scores. Dominated by the large classes.
    fpr_macro, tpr_macro, auc_macro:
        Average of the per-class curves over the classes with a defined AUC;
        every class counts equally. NaN / empty if no class has one.
    """

    fpr: tuple[np.ndarray, ...]
    tpr: tuple[np.ndarray, ...]
    auc: np.ndarray
    fpr_micro: np.ndarray
    tpr_micro: np.ndarray
    auc_micro: float
    fpr_macro: np.ndarray
    tpr_macro: np.ndarray
    auc_macro: float

    @property
    def n_classes(self) -> int:
        """Number of classes K."""
        return len(self.fpr)


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=np.float64)
    arr.setflags(write=False)
    return arr


def _tpr_left_right(grid: np.ndarray, fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate a ROC curve at ``grid``: the values just before and just after each point.

    A ROC curve has vertical segments (several points with the same fpr). At
    such an fpr the curve takes every tpr between the first and last of them,
    so both ends are returned; elsewhere ``left == right`` is the linear
    interpolation.
    """
    values = np.interp(grid, fpr, tpr)
    last = len(fpr) - 1
    first_ge = np.searchsorted(fpr, grid, side="left")
    last_le = np.searchsorted(fpr, grid, side="right") - 1
    exact = (first_ge <= last) & (fpr[np.minimum(first_ge, last)] == grid)
    left = np.where(exact, tpr[np.minimum(first_ge, last)], values)
    right = np.where(exact, tpr[np.clip(last_le, 0, last)], values)
    return left, right


def _macro_average(fprs: Sequence[np.ndarray], tprs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Average ROC curves vertically on the pooled fpr points of all of them.

    As in the scikit-learn ROC example, the fpr points of all curves are pooled
    and each curve's tpr is interpolated there and averaged. Unlike the
    example, both ends of vertical segments are kept, so the averaged curve is
    exactly the mean of the piecewise-linear curves and its AUC equals the mean
    of the per-class AUCs (the example's right-hand values overestimate it).
    """
    grid = np.unique(np.concatenate(fprs))
    lefts, rights = zip(*(_tpr_left_right(grid, f, t) for f, t in zip(fprs, tprs)))
    mean_left = np.mean(lefts, axis=0)
    mean_right = np.mean(rights, axis=0)
    x = np.repeat(grid, 2)
    y = np.column_stack([mean_left, mean_right]).ravel()
    keep = np.ones(x.size, dtype=bool)
    keep[1:] = (x[1:] != x[:-1]) | (y[1:] != y[:-1])  # drop the repeated points
    return x[keep], y[keep]


def roc_curves(y_true: np.ndarray, scores: np.ndarray, n_classes: int) -> RocCurves:
    """One-vs-rest ROC curves and AUCs per class, with micro and macro averages.

    Parameters
    ----------
    y_true:
        1-D array of N class ids in ``0..n_classes-1``.
    scores:
        (N, K) array, higher meaning more likely that class (SVM decision
        values or probabilities). For K = 2 a 1-D vector (the score of class 1)
        is accepted; class 0 then gets its negation, the meaning of a binary
        linear SVM's ``decision_function`` (pass an (N, 2) matrix for
        probabilities, as the micro average compares scores across classes).
    n_classes:
        Number of classes K >= 2.

    Returns
    -------
    RocCurves
        A class absent from ``y_true`` (or one that every sample belongs to)
        has no ROC curve: its AUC is NaN, its curve empty, and it is left out
        of the macro average. No warning is emitted for it.
    """
    n_classes = _check_n_classes(n_classes, minimum=2)
    t = _as_labels(y_true, "y_true", n_classes)
    if t.size == 0:
        raise ValueError("cannot compute ROC curves without samples (y_true is empty)")
    s = _as_scores(scores, t.size, n_classes)
    onehot = t[:, None] == np.arange(n_classes)[None, :]

    fprs: list[np.ndarray] = []
    tprs: list[np.ndarray] = []
    aucs = np.full(n_classes, np.nan)
    empty = _readonly(np.empty(0))
    for k in range(n_classes):
        positives = int(onehot[:, k].sum())
        if positives == 0 or positives == t.size:
            # roc_curve would warn and return NaN rates: the curve is undefined.
            fprs.append(empty)
            tprs.append(empty)
            continue
        fpr, tpr, _ = _roc_curve(onehot[:, k], s[:, k])
        fprs.append(_readonly(fpr))
        tprs.append(_readonly(tpr))
        aucs[k] = _trapezoid_auc(fpr, tpr)

    # Flattened one-hot always holds N positives and N*(K-1) >= 1 negatives.
    fpr_micro, tpr_micro, _ = _roc_curve(onehot.ravel(), s.ravel())
    auc_micro = float(_trapezoid_auc(fpr_micro, tpr_micro))

    defined = [k for k in range(n_classes) if not math.isnan(aucs[k])]
    if defined:
        fpr_macro, tpr_macro = _macro_average([fprs[k] for k in defined], [tprs[k] for k in defined])
        auc_macro = float(_trapezoid_auc(fpr_macro, tpr_macro))
    else:
        fpr_macro, tpr_macro, auc_macro = np.empty(0), np.empty(0), math.nan

    aucs.setflags(write=False)
    return RocCurves(
        fpr=tuple(fprs),
        tpr=tuple(tprs),
        auc=aucs,
        fpr_micro=_readonly(fpr_micro),
        tpr_micro=_readonly(tpr_micro),
        auc_micro=auc_micro,
        fpr_macro=_readonly(fpr_macro),
        tpr_macro=_readonly(tpr_macro),
        auc_macro=auc_macro,
    )


# --- summary -----------------------------------------------------------------------


def _json_float(value: float) -> float | None:
    """A plain Python float, or None for NaN (JSON has no NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def summarize(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
) -> dict[str, Any]:
    """All evaluation numbers of a test set as a JSON-ready dict.

    Parameters
    ----------
    y_true, y_pred:
        1-D arrays of class ids, same length N >= 1.
    scores:
        (N, K) scores (or a 1-D vector for K = 2), see :func:`roc_curves`.
    labels:
        The K class names, in class-id order; they key the per-class dicts, so
        they must be unique.

    Returns
    -------
    dict
        Plain Python ints, floats, strings, lists and dicts only (``json.dumps``
        works on it); undefined values (NaN) are ``None``. Keys:

        - ``labels``: list of class names.
        - ``n_test_images``: N.
        - ``per_class_counts``: {label: number of test samples of that class}.
        - ``overall_accuracy``, ``class_averaged_accuracy``: floats.
        - ``per_class_accuracy``: {label: float or None}.
        - ``auc_macro``, ``auc_micro``: float (``auc_macro`` None if undefined).
        - ``auc_per_class``: {label: float or None}.
        - ``confusion_matrix``: K lists of K ints, rows = true class.
    """
    labels = [str(label) for label in labels]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {labels}")
    n_classes = len(labels)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    n_samples = int(cm.sum())
    if n_samples == 0:
        raise ValueError("cannot summarize an empty test set (y_true is empty)")
    acc = per_class_accuracy(y_true, y_pred, n_classes)
    curves = roc_curves(y_true, scores, n_classes)
    return {
        "labels": labels,
        "n_test_images": n_samples,
        "per_class_counts": {label: int(n) for label, n in zip(labels, cm.sum(axis=1))},
        "overall_accuracy": overall_accuracy(y_true, y_pred),
        "class_averaged_accuracy": class_averaged_accuracy(y_true, y_pred, n_classes),
        "per_class_accuracy": {label: _json_float(a) for label, a in zip(labels, acc)},
        "auc_macro": _json_float(curves.auc_macro),
        "auc_micro": _json_float(curves.auc_micro),
        "auc_per_class": {label: _json_float(a) for label, a in zip(labels, curves.auc)},
        "confusion_matrix": cm.tolist(),
    }
