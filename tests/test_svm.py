"""The SVM: C chosen on the training set only, score shapes, calibrated probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from imgclass.errors import DatasetError
from imgclass.model.svm import effective_folds, select_C, train_svm


def _blobs(n_per_class: int, n_classes: int, dim: int = 20, spread: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    X = np.concatenate([c + rng.normal(0, spread, (n_per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(n_classes), n_per_class)
    return X, y


def test_choice_of_C_never_depends_on_the_test_set() -> None:
    X, y = _blobs(20, 3, spread=3.0)
    Xt, yt = _blobs(10, 3, spread=3.0, seed=1)
    labels = ["a", "b", "c"]
    grid = [1e-3, 0.1, 10.0]
    honest = train_svm(X, y, labels, {}, grid, folds=4, n_jobs=1, X_test=Xt, y_test=yt)
    flipped = train_svm(X, y, labels, {}, grid, folds=4, n_jobs=1, X_test=Xt, y_test=(yt + 1) % 3)
    garbage = train_svm(X, y, labels, {}, grid, folds=4, n_jobs=1, X_test=-Xt * 100, y_test=np.zeros_like(yt))
    assert honest.C == flipped.C == garbage.C == select_C(X, y, grid, folds=4, n_jobs=1).best_C
    svm = honest.pipeline[-1]
    assert np.array_equal(svm.coef_, flipped.pipeline[-1].coef_)
    assert [r["test_accuracy"] for r in honest.per_C] != [r["test_accuracy"] for r in flipped.per_C]


def test_ties_prefer_the_smaller_C() -> None:
    X, y = _blobs(10, 2, spread=0.1)  # perfectly separable: every reasonable C scores 1.0
    result = select_C(X, y, [100.0, 1.0, 10.0], folds=3, n_jobs=1)
    assert result.cv_accuracy == [1.0, 1.0, 1.0] and result.best_C == 1.0


def test_folds_adapt_to_the_smallest_class() -> None:
    y = np.array([0] * 10 + [1] * 3)
    assert effective_folds(y, 5) == 3
    assert effective_folds(np.array([0, 0, 1]), 5) == 2
    with pytest.raises(DatasetError, match="at least 2 classes"):
        select_C(np.zeros((4, 2)), np.zeros(4, dtype=int), [1.0])


@pytest.mark.parametrize("n_classes", [2, 4])
def test_scores_and_probabilities(n_classes: int) -> None:
    X, y = _blobs(15, n_classes, spread=0.5)
    model = train_svm(X, y, [f"c{i}" for i in range(n_classes)], {"backbone": "x"}, [0.1, 1.0], folds=3, n_jobs=1)
    scores = model.decision_scores(X)
    assert scores.shape == (len(X), n_classes)
    assert (model.predict(X) == y).mean() > 0.95
    proba = model.probabilities(X)
    assert proba.shape == (len(X), n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (np.argmax(proba, axis=1) == y).mean() > 0.95
    assert model.metadata()["featurizer"] == {"backbone": "x"}


def test_l2_normalisation_makes_scores_scale_invariant() -> None:
    X, y = _blobs(15, 3)
    model = train_svm(X, y, ["a", "b", "c"], {}, [1.0], folds=3, n_jobs=1, l2_normalize=True)
    np.testing.assert_allclose(model.decision_scores(X), model.decision_scores(X * 7), rtol=1e-4, atol=1e-5)
