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

A training set of N rows costs ``len(Cs) x folds`` fits for the search,
``len(Cs)`` refits and ``folds`` more for the calibration: fine for thousands of
images, the bottleneck of the pipeline for hundreds of thousands (liblinear
runs on one core and holds its own float64 copy of the rows). Above
``max_rows_for_cv`` rows, :class:`LinearSvmCV` therefore chooses C (and fits
the per-C models) on a stratified subsample of that many rows, fits the
chosen C once on all rows but a held-out stratified sample, and fits the
calibration's sigmoids on that sample (``LinearSvm(calibration_rows=...)``):
one large fit instead of ``len(Cs) x (folds + 1) + folds + 1``. Its accuracy
cost is measured in BENCHMARKS.md (``benchmarks/spark.py``).

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


def _class_rows(y: np.ndarray) -> list[np.ndarray]:
    """The row indices of each distinct value of ``y``, in sorted order of the values."""
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])


def stratified_subsample(y: np.ndarray, size: int, min_per_class: int = 1, random_state: int = 0) -> np.ndarray:
    """Sorted indices of about ``size`` rows of ``y``: each class in proportion, and at least ``min_per_class``
    rows of it (all of a smaller class), so that every class is in every fold of a search on them."""
    y = np.asarray(y)
    if size >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(random_state)
    chosen = [rng.choice(rows, min(len(rows), max(min_per_class, round(len(rows) * size / len(y)))), replace=False)
              for rows in _class_rows(y)]
    return np.sort(np.concatenate(chosen))


def calibration_split(y: np.ndarray, size: int, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(rows the SVM is fitted on, rows its sigmoids are fitted on)``: about ``size`` rows held out, stratified.

    Every class is in both: a class of one row has it in both (the sigmoids
    need every class the SVM knows), any other class keeps at least one row
    for the SVM and gives at least one to the calibration.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(random_state)
    held = np.zeros(len(y), dtype=bool)
    fit = np.ones(len(y), dtype=bool)
    for rows in _class_rows(y):
        if len(rows) == 1:
            held[rows] = True
            continue
        picked = rng.choice(rows, min(len(rows) - 1, max(1, round(len(rows) * size / len(y)))), replace=False)
        held[picked] = True
        fit[picked] = False
    return np.flatnonzero(fit), np.flatnonzero(held)


def _calibrate_fitted(pipeline: Pipeline, X: np.ndarray, y: np.ndarray) -> CalibratedClassifierCV:
    """Platt sigmoids for an already fitted SVM, fitted on held-out rows (no further fit of the SVM)."""
    try:
        from sklearn.frozen import FrozenEstimator  # scikit-learn >= 1.6
    except ImportError:  # older releases: the 'prefit' form (deprecated since 1.6)
        return _quiet_fit(CalibratedClassifierCV(pipeline, method="sigmoid", cv="prefit"), X, y)
    every = np.arange(len(y))  # one "fold" holding every row: the frozen SVM is not refitted, so none is needed
    return _quiet_fit(CalibratedClassifierCV(FrozenEstimator(pipeline), method="sigmoid", cv=[(every, every)]), X, y)


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
    calibration_rows:
        0: calibrate by ``cv``-fold cross-validation (``cv`` more fits of the
        SVM). > 0: hold out a stratified sample of about this many rows (see
        :func:`calibration_split`), fit the SVM once on the others and the
        sigmoids on them: for training sets too large to fit ``cv + 1`` times.
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
    n_held_out_:
        Rows held out for the calibration (0: calibrated by cross-validation).
    """

    def __init__(self, C: float = 1.0, l2_normalize: bool = True, probability: bool = True, cv: int = 5,
                 random_state: int = 0, n_jobs: int | None = None, classes: Sequence[Any] | None = None,
                 calibration_rows: int = 0):
        self.C = C
        self.l2_normalize = l2_normalize
        self.probability = probability
        self.cv = cv
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.classes = classes
        self.calibration_rows = calibration_rows

    def fit(self, X: np.ndarray, y: Sequence[Any]) -> "LinearSvm":
        """Fit on features ``X`` (N, D) and classes ``y`` (N,)."""
        X = np.asarray(X)  # dtype kept: float32 features are normalised in float32, as always
        self.classes_, ids = _encode(y, self.classes)
        if len(np.unique(ids)) < 2:
            raise DatasetError("the SVM needs training images of at least 2 classes")
        self.n_held_out_ = 0
        if self.probability and self.calibration_rows > 0:
            fit_rows, held = calibration_split(ids, self.calibration_rows, self.random_state)
            self.pipeline_ = _quiet_fit(make_svm(self.C, self.l2_normalize, self.random_state), X[fit_rows],
                                        ids[fit_rows])
            self.calibrated_ = _calibrate_fitted(self.pipeline_, X[held], ids[held])
            self.n_held_out_ = int(len(held))
            return self
        self.pipeline_ = _quiet_fit(make_svm(self.C, self.l2_normalize, self.random_state), X, ids)
        self.calibrated_ = None
        present_class_sizes = np.bincount(ids)[np.unique(ids)]
        if self.probability and present_class_sizes.min() < 2:
            # A class with one training image cannot be split into calibration folds (tiny datasets: 2
            # images of a class, one trains, one tests). Calibrate the fitted SVM on its own training
            # rows instead: probabilities come out overconfident, but the step does not fail.
            self.calibrated_ = _calibrate_fitted(self.pipeline_, X, ids)
        elif self.probability:
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
        search; ``calibration_rows`` too, unless it sets it); default
        ``LinearSvm()``.
    max_rows_for_cv:
        With more training rows than this (None or 0: no limit), C is chosen,
        and the per-C models fitted, on a stratified subsample of this many
        rows (:func:`stratified_subsample`); the chosen C is then fitted once
        on all rows but ``max_rows_for_cv // cv`` held out for its calibration.

    Attributes
    ----------
    cv_results_:
        :class:`CSearchResult`: CV accuracy of every C (ties go to the smaller C).
    C_:
        The chosen C.
    estimators_:
        ``{C: LinearSvm}`` fitted on the search's rows (the whole training set
        unless it was subsampled) for every C, without calibration, so
        evaluation code can report each C (:attr:`fit_seconds_` are their
        fitting times). The test set plays no part in the choice.
    n_search_rows_:
        Rows the search and :attr:`estimators_` used (all of them, or the subsample).
    best_estimator_:
        The chosen C's model, with calibrated probabilities; what
        ``decision_function``, ``predict`` and ``predict_proba`` use.
    best_fit_seconds_:
        Its fitting time, calibration included.
    """

    def __init__(self, Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0), cv: int = 5, n_jobs: int | None = -1,
                 estimator: LinearSvm | None = None, max_rows_for_cv: int | None = None):
        self.Cs, self.cv, self.n_jobs = Cs, cv, n_jobs  # stored as given (scikit-learn's clone needs it)
        self.estimator, self.max_rows_for_cv = estimator, max_rows_for_cv

    def fit(self, X: np.ndarray, y: Sequence[Any]) -> "LinearSvmCV":
        """Choose C on ``(X, y)`` by cross-validation, then fit every C (in parallel) and the chosen one calibrated.

        Above ``max_rows_for_cv`` rows the search and the per-C fits see a
        stratified subsample, and the chosen C is fitted once on (nearly) all
        rows, its calibration on a held-out sample.
        """
        X = np.asarray(X)
        template = self.estimator if self.estimator is not None else LinearSvm()
        classes_, ids = _encode(y, template.classes)
        limit = self.max_rows_for_cv or 0
        subsampled = 0 < limit < len(ids)
        if subsampled:
            rows = stratified_subsample(ids, limit, self.cv, template.random_state)
            X_search, ids_search = X[rows], ids[rows]
        else:
            X_search, ids_search = X, ids
        search = select_C(X_search, ids_search, list(self.Cs), self.cv, template.l2_normalize, template.random_state,
                          self.n_jobs)
        base = clone(template).set_params(probability=False, cv=self.cv, classes=classes_.tolist())
        y_search = classes_[ids_search]
        order = sorted(search.C_values, key=lambda C: -C)  # longest fits first
        fitted = Parallel(n_jobs=self.n_jobs)(delayed(_fit_timed)(clone(base).set_params(C=C), X_search, y_search)
                                              for C in order)
        self.cv_results_ = search
        self.C_ = search.best_C
        self.estimators_ = {C: fitted[order.index(C)][0] for C in search.C_values}
        self.fit_seconds_ = {C: fitted[order.index(C)][1] for C in search.C_values}
        self.n_search_rows_ = len(ids_search)
        del X_search  # the subsample's copy, before the one large fit
        calibration_rows = template.calibration_rows or (limit // self.cv if subsampled else 0)
        best = clone(base).set_params(C=search.best_C, probability=True, n_jobs=self.n_jobs,
                                      calibration_rows=calibration_rows)
        self.best_estimator_, self.best_fit_seconds_ = _fit_timed(best, X, classes_[ids])
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

