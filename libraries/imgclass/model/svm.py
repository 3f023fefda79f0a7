"""The linear SVM on DNN features, with C chosen by cross-validation on the training set.

Shaped like scikit-learn's own estimators (hyper-parameters in the
constructor, ``fit(X, y)``, ``decision_function``, ``predict``,
``predict_proba``), so it composes with scikit-learn's tools:

- :class:`LinearSvm`: one C; ``LinearSVC(class_weight='balanced')`` on
  L2-normalised features, and a Platt-calibrated copy for probabilities;
- :class:`LinearSvmCV`: picks C by stratified k-fold cross-validation on the
  training set alone (:func:`select_C`), as scikit-learn's
  ``LogisticRegressionCV`` does, and keeps the fitted model of every C so
  evaluation code can report each one. The original tutorial picked C by its
  test-set accuracy, which makes the reported test accuracy optimistic.

On disk (step 4): ``svm.joblib`` holds only scikit-learn objects (a dict of the
fitted ``Pipeline`` and ``CalibratedClassifierCV``), ``svm.json`` the metadata
(labels, C, featurizer recipe, CV table) and the SHA-256 of the joblib file it
belongs to. Files written by older versions (a pickled ``imgclass.svm.TrainedSvm``)
still load (see :func:`load_svm`).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import Normalizer
from sklearn.svm import LinearSVC

from imgclass.errors import DatasetError, MissingArtifactError

MAX_ITER = 20000
#: ``format`` of svm.joblib and svm.json written by this version
SVM_FORMAT = "imgclass-svm-2"
REBUILD_HINT = "re-run scripts/4_trainSVM.py to rebuild it"

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
    smallest = min(int(c) for c in np.unique(np.asarray(y), return_counts=True)[1])
    return max(2, min(requested, smallest))


def _quiet_fit(estimator: Any, X: np.ndarray, y: np.ndarray) -> Any:
    """``estimator.fit(X, y)`` without ConvergenceWarnings (a capped liblinear run is still a usable model)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        return estimator.fit(X, y)


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
    model = _quiet_fit(make_svm(C, l2_normalize, random_state), X[train], y[train])
    return float(model.score(X[test], y[test])), time.perf_counter() - start


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


def _encode(y: Any, classes: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(classes_, class ids of y)``: ``classes`` (all, in column order) or the sorted values of ``y``."""
    y = np.asarray(y)
    classes_ = np.unique(y) if classes is None else np.asarray(list(classes))
    index = {value: i for i, value in enumerate(classes_.tolist())}
    unknown = sorted({str(v) for v in y.tolist() if v not in index})
    if unknown:
        raise ValueError(f"y has values that are not in classes: {unknown[:5]}")
    return classes_, np.array([index[v] for v in y.tolist()], dtype=np.int64)


class LinearSvm(ClassifierMixin, BaseEstimator):
    """A linear SVM for one C, with Platt-calibrated probabilities.

    Parameters
    ----------
    C:
        Inverse regularisation strength of ``LinearSVC``.
    l2_normalize:
        Scale each feature vector to unit length first (scores are then
        invariant to the features' scale).
    probability:
        Also fit a sigmoid (Platt) calibration by cross-validation on the
        training set, for :meth:`predict_proba`: SVM scores are margins, not
        probabilities a service can report as confidence.
    cv:
        Folds of that calibration (at most the smallest class's size).
    random_state, n_jobs:
        Seed of liblinear and of the folds; processes for the calibration.
    classes:
        Every class, in column order, including any without training samples
        (their scores are ``-inf``, their probabilities 0). Default: the
        sorted values of ``y``.

    Attributes
    ----------
    classes_:
        The classes, one per column of :meth:`decision_function`.
    pipeline_:
        The fitted ``Normalizer`` + ``LinearSVC`` pipeline (on class ids).
    calibrated_:
        The fitted ``CalibratedClassifierCV`` (on class ids), or None.
    """

    def __init__(self, C: float = 1.0, l2_normalize: bool = True, probability: bool = True, cv: int = 5,
                 random_state: int = 0, n_jobs: int | None = None, classes: Sequence[Any] | None = None):
        self.C = C
        self.l2_normalize = l2_normalize
        self.probability = probability
        self.cv = cv
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.classes = classes

    def fit(self, X: np.ndarray, y: Sequence[Any]) -> "LinearSvm":
        """Fit on features ``X`` (N, D) and classes ``y`` (N,)."""
        X = np.asarray(X)  # dtype kept: float32 features are normalised in float32, as always
        self.classes_, ids = _encode(y, self.classes)
        if len(np.unique(ids)) < 2:
            raise DatasetError("the SVM needs training images of at least 2 classes")
        self.pipeline_ = _quiet_fit(make_svm(self.C, self.l2_normalize, self.random_state), X, ids)
        self.calibrated_ = None
        if self.probability:
            folds = StratifiedKFold(effective_folds(ids, self.cv), shuffle=True, random_state=self.random_state)
            self.calibrated_ = _quiet_fit(
                CalibratedClassifierCV(make_svm(self.C, self.l2_normalize, self.random_state), method="sigmoid",
                                       cv=folds, n_jobs=self.n_jobs), X, ids)
        return self

    @classmethod
    def from_fitted(cls, pipeline: Pipeline, calibrated: CalibratedClassifierCV | None, classes: Sequence[Any],
                    **params: Any) -> "LinearSvm":
        """A fitted model from its scikit-learn parts (what :func:`load_svm` reads)."""
        model = cls(probability=calibrated is not None, classes=list(classes), **params)
        model.classes_ = np.asarray(list(classes))
        model.pipeline_ = pipeline
        model.calibrated_ = calibrated
        return model

    def _check_fitted(self) -> None:
        if not hasattr(self, "pipeline_"):
            raise NotFittedError("this LinearSvm is not fitted yet; call fit(X, y) first")

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """``(N, K)`` scores, one column per class (higher = more likely), also for two classes."""
        self._check_fitted()
        scores = self.pipeline_.decision_function(np.asarray(X, dtype=np.float32))
        if scores.ndim == 1:  # binary LinearSVC returns the score of class 1 only
            scores = np.stack([-scores, scores], axis=1)
        full = np.full((scores.shape[0], len(self.classes_)), -np.inf, dtype=np.float64)
        full[:, self.pipeline_.classes_] = scores
        return full

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N, K)`` calibrated class probabilities (rows sum to 1)."""
        self._check_fitted()
        if self.calibrated_ is None:
            raise NotFittedError("this SVM has no calibration (probability=False); refit with probability=True "
                                 "or re-run scripts/4_trainSVM.py")
        proba = self.calibrated_.predict_proba(np.asarray(X, dtype=np.float32))
        full = np.zeros((proba.shape[0], len(self.classes_)), dtype=np.float64)
        full[:, self.calibrated_.classes_] = proba
        return full / full.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The class of each row (an element of ``classes_``)."""
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


def _fit_timed(estimator: LinearSvm, X: np.ndarray, y: np.ndarray) -> tuple[LinearSvm, float]:
    start = time.perf_counter()
    estimator.fit(X, y)
    return estimator, time.perf_counter() - start


class LinearSvmCV(ClassifierMixin, BaseEstimator):
    """:class:`LinearSvm` with C chosen by stratified k-fold cross-validation on the training set.

    The shape of scikit-learn's ``GridSearchCV``: the search's own settings,
    and an ``estimator`` template whose other hyper-parameters every fit uses.

    Parameters
    ----------
    Cs:
        The C values tried.
    cv:
        Folds of the C search and of the chosen model's calibration (at most
        the smallest class's size, at least 2).
    n_jobs:
        Processes for the cross-validation and the fits (-1 = all cores).
    estimator:
        A :class:`LinearSvm` giving ``l2_normalize``, ``random_state`` and
        ``classes`` (its ``C``, ``probability`` and ``cv`` are set by the
        search); default ``LinearSvm()``.

    Attributes
    ----------
    cv_results_:
        :class:`CSearchResult`: CV accuracy of every C (ties go to the smaller C).
    C_:
        The chosen C.
    estimators_:
        ``{C: LinearSvm}`` fitted on the whole training set for every C, without
        calibration, so evaluation code can report each C (:attr:`fit_seconds_`
        are their fitting times). The test set plays no part in the choice.
    best_estimator_:
        The chosen C's model, with calibrated probabilities; what
        ``decision_function``, ``predict`` and ``predict_proba`` use.
    """

    def __init__(self, Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0), cv: int = 5, n_jobs: int | None = -1,
                 estimator: LinearSvm | None = None):
        self.Cs = Cs
        self.cv = cv
        self.n_jobs = n_jobs
        self.estimator = estimator

    def fit(self, X: np.ndarray, y: Sequence[Any]) -> "LinearSvmCV":
        """Choose C on ``(X, y)`` by cross-validation, then fit every C (in parallel) and the chosen one calibrated."""
        X = np.asarray(X)
        template = self.estimator if self.estimator is not None else LinearSvm()
        classes_, ids = _encode(y, template.classes)
        search = select_C(X, ids, list(self.Cs), self.cv, template.l2_normalize, template.random_state, self.n_jobs)
        base = clone(template).set_params(probability=False, cv=self.cv, classes=classes_.tolist())
        y = classes_[ids]
        order = sorted(search.C_values, key=lambda C: -C)  # longest fits first
        fitted = Parallel(n_jobs=self.n_jobs)(delayed(_fit_timed)(clone(base).set_params(C=C), X, y)
                                              for C in order)
        self.cv_results_ = search
        self.C_ = search.best_C
        self.estimators_ = {C: fitted[order.index(C)][0] for C in search.C_values}
        self.fit_seconds_ = {C: fitted[order.index(C)][1] for C in search.C_values}
        best = clone(base).set_params(C=search.best_C, probability=True, n_jobs=self.n_jobs)
        self.best_estimator_ = best.fit(X, y)
        self.classes_ = classes_
        return self

    def _best(self) -> LinearSvm:
        if not hasattr(self, "best_estimator_"):
            raise NotFittedError("this LinearSvmCV is not fitted yet; call fit(X, y) first")
        return self.best_estimator_

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self._best().decision_function(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._best().predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._best().predict(X)


# --------------------------------------------------------------------------- files
def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()  # a model file: read whole anyway when serving


def save_svm(model: LinearSvm, joblib_path: Path, json_path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``svm.joblib`` (scikit-learn objects only) and ``svm.json`` (labels, C, ``metadata``).

    The JSON names the SHA-256 of the joblib file, so a pair that does not
    belong together (one file copied over, an interrupted write) is an error
    on loading rather than a model with the wrong labels.
    """
    import joblib

    from imgclass.io.atomic import atomic_path, write_json

    model._check_fitted()
    with atomic_path(joblib_path) as tmp:
        joblib.dump({"format": SVM_FORMAT, "pipeline": model.pipeline_, "calibrated": model.calibrated_}, tmp)
        digest = _sha256(tmp)
    write_json(json_path, {"format": SVM_FORMAT, "svm_joblib_sha256": digest, "C": float(model.C),
                           "labels": [str(c) for c in model.classes_], "l2_normalize": bool(model.l2_normalize),
                           "random_state": model.random_state, **(metadata or {})})


class _LegacyPickle:
    """Stand-in for the project classes that svm.joblib files of version 1 pickled (attributes only)."""


_LEGACY_MODULE = "imgclass.svm"
_legacy_lock = threading.Lock()


def _load_joblib(path: Path) -> Any:
    """``joblib.load``, with version 1's ``imgclass.svm`` classes read as plain attribute holders.

    The stand-in module exists only during this call (under a lock), so
    nothing else ever sees it.
    """
    import joblib

    with _legacy_lock:
        stand_in = types.ModuleType(_LEGACY_MODULE)
        stand_in.TrainedSvm = type("TrainedSvm", (_LegacyPickle,), {})  # type: ignore[attr-defined]
        stand_in.CSearchResult = type("CSearchResult", (_LegacyPickle,), {})  # type: ignore[attr-defined]
        installed = sys.modules.setdefault(_LEGACY_MODULE, stand_in) is stand_in
        try:
            return joblib.load(path)
        finally:
            if installed:
                del sys.modules[_LEGACY_MODULE]


def load_svm(joblib_path: Path, json_path: Path) -> LinearSvm:
    """Load step 4's model; ``classes_`` are the labels. A one-line error saying how to rebuild it otherwise.

    Reads this version's pair (``svm.joblib`` + ``svm.json``) and version 1's
    ``svm.joblib`` alone (a pickled ``imgclass.svm.TrainedSvm``, written before
    the package was split into sub-packages).
    """
    joblib_path, json_path = Path(joblib_path), Path(json_path)
    if not joblib_path.is_file():
        raise MissingArtifactError(f"{joblib_path} does not exist: run scripts/4_trainSVM.py first")
    try:
        saved = _load_joblib(joblib_path)
    except Exception as exc:  # truncated file, classes of another scikit-learn, not a joblib file
        raise MissingArtifactError(f"{joblib_path} cannot be read ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); {REBUILD_HINT}") from exc
    if isinstance(saved, _LegacyPickle) and isinstance(getattr(saved, "pipeline", None), Pipeline):
        return LinearSvm.from_fitted(saved.pipeline, getattr(saved, "calibrated", None), saved.labels,
                                     C=float(saved.C), l2_normalize="normalizer" in saved.pipeline.named_steps)
    if not (isinstance(saved, dict) and saved.get("format") == SVM_FORMAT
            and isinstance(saved.get("pipeline"), Pipeline)):
        raise MissingArtifactError(f"{joblib_path} is not an imgclass SVM; {REBUILD_HINT}")
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))
        labels, C = [str(label) for label in info["labels"]], float(info["C"])
        belongs = info.get("svm_joblib_sha256") == _sha256(joblib_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MissingArtifactError(f"{json_path} is missing or unreadable; {REBUILD_HINT}") from exc
    if not belongs:
        raise MissingArtifactError(f"{json_path} does not belong to {joblib_path.name}; {REBUILD_HINT}")
    return LinearSvm.from_fitted(saved["pipeline"], saved.get("calibrated"), labels, C=C,
                                 l2_normalize=bool(info.get("l2_normalize", True)),
                                 random_state=info.get("random_state", 0))

