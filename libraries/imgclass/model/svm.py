"""The linear SVM on DNN features, with C chosen by cross-validation on the training set.

The original tutorial picked C by its test-set accuracy, which makes the
reported test accuracy optimistic. Here :func:`select_C` sees only training
features: stratified k-fold cross-validation over ``svm_CVals``; the test set
is used once, afterwards, to report.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from joblib import Parallel, delayed
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import Normalizer
from sklearn.svm import LinearSVC

from imgclass.errors import DatasetError, MissingArtifactError

MAX_ITER = 20000

# joblib's process pool restarts a worker whose memory grew (its leak guard) and says so with this
# warning; the task is simply run again, results are unaffected, and users cannot act on it.
warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor")


def make_svm(C: float, l2_normalize: bool = True, random_state: int = 0) -> Pipeline:
    """Optional per-sample L2 normalisation, then ``LinearSVC(class_weight='balanced')``.

    Balanced class weights keep small classes from being ignored when the
    classes are of very different sizes, as in most scraped datasets.
    """
    steps: list[Any] = [Normalizer(norm="l2")] if l2_normalize else []
    steps.append(LinearSVC(C=C, class_weight="balanced", dual="auto", max_iter=MAX_ITER,
                           random_state=random_state))
    return make_pipeline(*steps)


def effective_folds(y: np.ndarray, requested: int) -> int:
    """Folds for stratified CV: at most the size of the smallest class, at least 2."""
    smallest = min(int(c) for c in np.bincount(y) if c > 0)
    return max(2, min(requested, smallest))


@dataclass(frozen=True)
class CSearchResult:
    """Cross-validation of each C on the training set."""

    C_values: list[float]
    cv_accuracy: list[float]
    cv_accuracy_std: list[float]
    cv_seconds: list[float]
    folds: int
    best_C: float


def _fit_and_score(C: float, l2_normalize: bool, random_state: int, X: np.ndarray, y: np.ndarray,
                   train: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """Accuracy on ``test`` of the SVM fitted on ``train``, and the seconds it took (one CV task)."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        model = make_svm(C, l2_normalize, random_state).fit(X[train], y[train])
    return float(model.score(X[test], y[test])), time.perf_counter() - start


def _fit_timed(C: float, l2_normalize: bool, random_state: int, X: np.ndarray,
               y: np.ndarray) -> tuple[Pipeline, float]:
    """The SVM for ``C`` fitted on all of ``X``, and the seconds it took."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        model = make_svm(C, l2_normalize, random_state).fit(X, y)
    return model, time.perf_counter() - start


def select_C(X_train: np.ndarray, y_train: np.ndarray, C_values: Sequence[float], folds: int = 5,
             l2_normalize: bool = True, random_state: int = 0, n_jobs: int | None = -1) -> CSearchResult:
    """Pick C by stratified k-fold cross-validated accuracy on the training set alone.

    Ties go to the smaller C (stronger regularisation). With a single C the
    cross-validation still runs, so its accuracy is reported.

    All ``len(C_values) x folds`` fits are one pool of tasks for ``n_jobs``
    processes (-1 = all cores), largest C first since those fits take longest:
    no core waits for the slowest fold of one C before the next C starts.
    ``cv_seconds`` per C is the fitting time of its folds, summed over processes.
    """
    X_train = np.asarray(X_train)
    y_train = np.asarray(y_train)
    if len(np.unique(y_train)) < 2:
        raise DatasetError("the SVM needs training images of at least 2 classes")
    n_folds = effective_folds(y_train, folds)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=random_state)
                      .split(X_train, y_train))
    tasks = sorted(((c, f) for c in range(len(C_values)) for f in range(n_folds)),
                   key=lambda task: -C_values[task[0]])
    results = Parallel(n_jobs=n_jobs)(
        delayed(_fit_and_score)(float(C_values[c]), l2_normalize, random_state, X_train, y_train, *splits[f])
        for c, f in tasks)
    scores = np.zeros((len(C_values), n_folds))
    seconds = np.zeros(len(C_values))
    for (c, f), (score, took) in zip(tasks, results):
        scores[c, f] = score
        seconds[c] += took
    means = [float(m) for m in scores.mean(axis=1)]
    stds = [float(s) for s in scores.std(axis=1)]
    best = max(range(len(C_values)), key=lambda i: (round(means[i], 12), -C_values[i]))
    return CSearchResult(list(map(float, C_values)), means, stds, [float(s) for s in seconds], n_folds,
                         float(C_values[best]))


@dataclass
class TrainedSvm:
    """A fitted SVM with what is needed to use it: class names and the featurizer it expects."""

    pipeline: Pipeline
    labels: list[str]
    featurizer: dict[str, Any]
    C: float
    search: CSearchResult
    per_C: list[dict[str, float]] = field(default_factory=list)
    #: the same SVM with sigmoid (Platt) calibration fitted by cross-validation on the training set
    calibrated: CalibratedClassifierCV | None = None

    def decision_scores(self, X: np.ndarray) -> np.ndarray:
        """``(N, K)`` scores, one column per label (higher = more likely), also for K = 2."""
        scores = self.pipeline.decision_function(np.asarray(X, dtype=np.float32))
        if scores.ndim == 1:  # binary LinearSVC returns the score of class 1 only
            scores = np.stack([-scores, scores], axis=1)
        full = np.full((scores.shape[0], len(self.labels)), -np.inf, dtype=np.float64)
        full[:, self.pipeline.classes_] = scores
        return full

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """``(N, K)`` calibrated class probabilities (rows sum to 1).

        SVM scores are margins, not probabilities; Platt scaling fitted on
        cross-validation folds of the training set turns them into numbers a
        service can report as confidence.
        """
        if self.calibrated is None:
            raise ValueError("this SVM was saved without calibration; re-run scripts/4_trainSVM.py")
        proba = self.calibrated.predict_proba(np.asarray(X, dtype=np.float32))
        full = np.zeros((proba.shape[0], len(self.labels)), dtype=np.float64)
        full[:, self.calibrated.classes_] = proba
        return full / full.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class ids ``(N,)``."""
        return np.argmax(self.decision_scores(X), axis=1)

    def metadata(self) -> dict[str, Any]:
        """JSON-ready summary (written beside the model as ``svm.json``)."""
        return {"C": self.C, "labels": self.labels, "featurizer": self.featurizer,
                "cv_folds": self.search.folds,
                "cv": [{"C": c, "cv_accuracy": a, "cv_accuracy_std": s}
                       for c, a, s in zip(self.search.C_values, self.search.cv_accuracy,
                                          self.search.cv_accuracy_std)],
                "per_C": self.per_C}


def train_svm(X_train: np.ndarray, y_train: np.ndarray, labels: Sequence[str], featurizer: dict[str, Any],
              C_values: Sequence[float], folds: int = 5, l2_normalize: bool = True, random_state: int = 0,
              n_jobs: int | None = -1, X_test: np.ndarray | None = None,
              y_test: np.ndarray | None = None) -> TrainedSvm:
    """Choose C on the training set, then fit every C on the whole training set (``n_jobs`` in parallel).

    Fitting every C (not only the chosen one) gives the per-C table of
    training and test accuracy the original printed; the test columns are
    reported only and play no part in choosing C.
    """
    search = select_C(X_train, y_train, C_values, folds, l2_normalize, random_state, n_jobs)
    chosen: Pipeline | None = None
    per_C: list[dict[str, float]] = []
    order = sorted(range(len(search.C_values)), key=lambda i: -search.C_values[i])  # longest fits first
    fitted = dict(zip(order, Parallel(n_jobs=n_jobs)(
        delayed(_fit_timed)(search.C_values[i], l2_normalize, random_state, X_train, y_train) for i in order)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        for i, (C, cv_acc) in enumerate(zip(search.C_values, search.cv_accuracy)):
            model, fit_seconds = fitted[i]
            row = {"C": C, "cv_accuracy": cv_acc, "train_accuracy": float(model.score(X_train, y_train)),
                   "fit_seconds": fit_seconds}
            if X_test is not None and y_test is not None and len(y_test):
                row["test_accuracy"] = float(model.score(X_test, y_test))
            per_C.append(row)
            if C == search.best_C:
                chosen = model
    assert chosen is not None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        calibrated = CalibratedClassifierCV(
            make_svm(search.best_C, l2_normalize, random_state), method="sigmoid",
            cv=StratifiedKFold(search.folds, shuffle=True, random_state=random_state),
            n_jobs=n_jobs).fit(X_train, y_train)
    return TrainedSvm(chosen, list(labels), dict(featurizer), search.best_C, search, per_C, calibrated)


def load_svm(path: Path) -> TrainedSvm:
    """Load step 4's ``svm.joblib``; a clear error if it is missing or not an imgclass SVM."""
    import joblib

    if not Path(path).is_file():
        raise MissingArtifactError(f"{path} does not exist: run scripts/4_trainSVM.py first")
    model = joblib.load(path)
    if not isinstance(model, TrainedSvm):
        raise MissingArtifactError(f"{path} is not an imgclass SVM; re-run scripts/4_trainSVM.py")
    return model
