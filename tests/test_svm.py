"""The SVM: scikit-learn's shape, C chosen on the training set only, score shapes, calibrated probabilities,
the files of step 4, and large training sets (C chosen on a sample, one fit on all)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from imgclass.errors import DatasetError, MissingArtifactError
from imgclass.model.svm import (LinearSvm, LinearSvmCV, calibration_split, effective_folds, load_svm, save_svm,
                                select_C, stratified_subsample)


def _blobs(n_per_class: int, n_classes: int, dim: int = 20, spread: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    X = np.concatenate([c + rng.normal(0, spread, (n_per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(n_classes), n_per_class)
    return X, y


def test_the_choice_of_C_sees_only_the_training_set() -> None:
    X, y = _blobs(20, 3, spread=3.0)
    grid = [1e-3, 0.1, 10.0]
    model = LinearSvmCV(grid, cv=4, n_jobs=1).fit(X, y)
    assert model.C_ == model.cv_results_.best_C == select_C(X, y, grid, folds=4, n_jobs=1).best_C
    assert sorted(model.estimators_) == grid and set(model.fit_seconds_) == set(grid)
    chosen = model.estimators_[model.C_]
    assert np.array_equal(chosen.pipeline_[-1].coef_, model.best_estimator_.pipeline_[-1].coef_)
    assert model.best_estimator_.calibrated_ is not None and chosen.calibrated_ is None


def test_hyper_parameters_are_kept_as_given_so_scikit_learn_can_clone() -> None:
    model = LinearSvmCV(Cs=[0.1, 1.0], cv=3, n_jobs=1,
                        estimator=LinearSvm(l2_normalize=False, random_state=7, classes=["a", "b"]))
    cloned = clone(model)
    assert cloned.estimator is not model.estimator  # a fresh template, with the same values
    drop = lambda params: {k: v for k, v in params.items() if k != "estimator"}  # noqa: E731
    assert drop(cloned.get_params()) == drop(model.get_params())  # deep: estimator__C, ... compared too
    assert LinearSvm(C=2.0, probability=False).get_params()["C"] == 2.0
    with pytest.raises(NotFittedError):
        LinearSvm().decision_function(np.zeros((1, 2)))


def test_ties_prefer_the_smaller_C() -> None:
    X, y = _blobs(10, 2, spread=0.1)  # perfectly separable: every reasonable C scores 1.0
    result = select_C(X, y, [100.0, 1.0, 10.0], folds=3, n_jobs=1)
    assert result.cv_accuracy == [1.0, 1.0, 1.0] and result.best_C == 1.0


def test_folds_adapt_to_the_smallest_class() -> None:
    y = np.array([0] * 10 + [1] * 3)
    assert effective_folds(y, 5) == 3
    assert effective_folds(np.array([0, 0, 1]), 5) == 2
    assert effective_folds(np.array(["a"] * 4 + ["b"] * 2), 5) == 2
    with pytest.raises(DatasetError, match="at least 2 classes"):
        select_C(np.zeros((4, 2)), np.zeros(4, dtype=int), [1.0])
    with pytest.raises(DatasetError, match="at least 2 classes"):
        LinearSvm().fit(np.zeros((4, 2)), ["a"] * 4)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_scores_and_probabilities(n_classes: int) -> None:
    X, y = _blobs(15, n_classes, spread=0.5)
    labels = np.array([f"c{i}" for i in range(n_classes)])
    model = LinearSvmCV([0.1, 1.0], cv=3, n_jobs=1).fit(X, labels[y])
    assert model.classes_.tolist() == labels.tolist()
    scores = model.decision_function(X)
    assert scores.shape == (len(X), n_classes)
    assert (model.predict(X) == labels[y]).mean() > 0.95 and model.score(X, labels[y]) > 0.95
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (np.argmax(proba, axis=1) == y).mean() > 0.95


def test_a_class_without_training_images_keeps_its_column() -> None:
    X, y = _blobs(10, 2, spread=0.5)
    model = LinearSvm(C=1.0, cv=3, classes=["a", "empty", "b"]).fit(X, np.array(["a", "b"])[y])
    scores, proba = model.decision_function(X), model.predict_proba(X)
    assert scores.shape == proba.shape == (len(X), 3)
    assert np.isneginf(scores[:, 1]).all() and (proba[:, 1] == 0).all()
    assert set(model.predict(X)) == {"a", "b"}
    with pytest.raises(ValueError, match="not in classes"):
        LinearSvm(classes=["a", "b"]).fit(X, np.array(["a", "c"])[y])


def test_l2_normalisation_makes_scores_scale_invariant() -> None:
    X, y = _blobs(15, 3)
    model = LinearSvm(C=1.0, cv=3, l2_normalize=True).fit(X, y)
    np.testing.assert_allclose(model.decision_function(X), model.decision_function(X * 7), rtol=1e-4, atol=1e-5)


def test_saved_models_are_scikit_learn_objects_and_json_and_load_back(tmp_path: Path) -> None:
    import joblib

    X, y = _blobs(12, 3, spread=0.5)
    labels = np.array(["red", "green", "blue"])
    model = LinearSvm(C=0.5, cv=3, classes=labels.tolist()).fit(X, labels[y])
    joblib_path, json_path = tmp_path / "svm.joblib", tmp_path / "svm.json"
    save_svm(model, joblib_path, json_path, {"featurizer": {"backbone": "x"}})
    raw = joblib.load(joblib_path)
    assert set(raw) == {"format", "pipeline", "calibrated"}
    assert all(type(v).__module__.startswith(("sklearn.", "builtins")) for v in raw.values())
    info = json.loads(json_path.read_text())
    assert (info["labels"], info["C"], info["featurizer"]) == (labels.tolist(), 0.5, {"backbone": "x"})
    loaded = load_svm(joblib_path, json_path)
    assert loaded.classes_.tolist() == labels.tolist() and loaded.C == 0.5
    assert np.array_equal(loaded.decision_function(X), model.decision_function(X))
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_broken_or_mismatched_files_are_one_line_errors_saying_how_to_rebuild(tmp_path: Path) -> None:
    X, y = _blobs(12, 2, spread=0.5)
    joblib_path, json_path = tmp_path / "svm.joblib", tmp_path / "svm.json"
    with pytest.raises(MissingArtifactError, match="run scripts/4_trainSVM.py first"):
        load_svm(joblib_path, json_path)
    save_svm(LinearSvm(cv=3).fit(X, y), joblib_path, json_path)
    first_json = json_path.read_text()
    save_svm(LinearSvm(C=0.01, cv=3).fit(X, y), tmp_path / "other.joblib", tmp_path / "other.json")
    json_path.write_text((tmp_path / "other.json").read_text())  # a JSON of another model
    with pytest.raises(MissingArtifactError, match="does not belong to svm.joblib.*4_trainSVM"):
        load_svm(joblib_path, json_path)
    json_path.write_text(first_json)
    assert load_svm(joblib_path, json_path).C == 1.0
    json_path.unlink()
    with pytest.raises(MissingArtifactError, match="missing or unreadable.*4_trainSVM"):
        load_svm(joblib_path, json_path)
    joblib_path.write_bytes(joblib_path.read_bytes()[:100])
    with pytest.raises(MissingArtifactError, match="cannot be read.*4_trainSVM") as error:
        load_svm(joblib_path, json_path)
    assert "\n" not in str(error.value)
    import joblib

    joblib.dump({"something": "else"}, joblib_path)
    with pytest.raises(MissingArtifactError, match="not an imgclass SVM"):
        load_svm(joblib_path, json_path)


def test_samples_keep_every_class_in_proportion() -> None:
    y = np.array([0] * 600 + [1] * 300 + [2] * 6 + [3])
    rows = stratified_subsample(y, 100, min_per_class=4, random_state=1)
    assert np.all(np.diff(rows) > 0) and np.bincount(y[rows]).tolist() == [66, 33, 4, 1]
    assert np.array_equal(stratified_subsample(y, 5000), np.arange(len(y)))  # no more rows than there are
    fit, held = calibration_split(y, 90, random_state=1)
    assert np.bincount(y[held]).tolist() == [60, 30, 1, 1]  # at least one of each class
    assert np.bincount(y[fit]).tolist() == [540, 270, 5, 1]  # ... and one left for the SVM: 3's only row is in both
    assert set(fit) & set(held) == {len(y) - 1} and set(fit) | set(held) == set(range(len(y)))


def test_above_max_rows_for_cv_C_is_chosen_on_a_sample_then_fitted_once_on_all_rows(tmp_path: Path) -> None:
    X, y = _blobs(200, 3, spread=3.0)
    labels = np.array(["a", "b", "c"])[y]
    grid = [1e-3, 0.1, 10.0]
    model = LinearSvmCV(grid, cv=3, n_jobs=1, max_rows_for_cv=150).fit(X, labels)
    sample = stratified_subsample(np.unique(labels, return_inverse=True)[1], 150, 3, 0)
    assert model.n_search_rows_ == len(sample) == 150
    alone = select_C(X[sample], y[sample], grid, folds=3, n_jobs=1)  # the same search, on the sample
    assert (model.cv_results_.cv_accuracy, model.C_) == (alone.cv_accuracy, alone.best_C)
    best = model.best_estimator_
    assert abs(best.n_held_out_ - 150 // 3) <= 3 and best.calibrated_ is not None  # sigmoids on held-out rows
    assert not np.array_equal(model.estimators_[model.C_].pipeline_[-1].coef_, best.pipeline_[-1].coef_)
    assert model.score(X, labels) > 0.9 and model.best_fit_seconds_ > 0
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (model.classes_[proba.argmax(axis=1)] == labels).mean() > 0.9
    save_svm(best, tmp_path / "svm.joblib", tmp_path / "svm.json")
    assert np.array_equal(load_svm(tmp_path / "svm.joblib", tmp_path / "svm.json").predict_proba(X), proba)
    small = LinearSvmCV(grid, cv=3, n_jobs=1, max_rows_for_cv=600).fit(X, labels)  # at the limit: as before
    assert small.n_search_rows_ == 600 and small.best_estimator_.n_held_out_ == 0


def test_step_4_says_when_C_was_chosen_on_a_sample(tmp_path: Path) -> None:
    from imgclass.data.splits import TEST, TRAIN, SplitRow, write_split
    from imgclass.layout import DatasetLayout
    from imgclass.parameters import load_parameters
    from imgclass.pipeline import train_classifier

    X, y = _blobs(100, 2, spread=3.0)
    layout = DatasetLayout(tmp_path, "big")
    rows = [SplitRow(f"c{label}/{i}.jpg", f"c{label}", TEST if i % 4 == 0 else TRAIN) for i, label in enumerate(y)]
    write_split(rows, ["c0", "c1"], layout.split_csv, layout.labels_json)
    np.save(layout.features_npy, X)
    layout.features_csv.write_text("row,path,label,split,ok\n" + "".join(
        f"{i},{r.path},{r.label},{r.split},1\n" for i, r in enumerate(rows)), encoding="utf-8")
    params = load_parameters(rootDir=str(tmp_path), datasetName="big", svm_CVals=[0.01, 1.0], svm_cvFolds=3,
                             svm_nJobs=1, svm_maxRowsForCV=60)
    report = train_classifier(params)
    summary = report.summary()
    assert "on a stratified 60 of the 150 training images (svm_maxRowsForCV" in summary
    assert "fitted once on all 150 training images but 20 held out to calibrate it" in summary
    assert report.final["test_accuracy"] > 0.8
    info = json.loads(layout.svm_json.read_text())
    assert (info["cv_rows"], info["calibration_held_out_rows"], info["final"]) == (60, 20, report.final)


def test_a_class_with_one_training_image_still_gets_probabilities() -> None:
    """Two images of a class split one-one: one training image, too few for calibration folds."""
    X, y = _blobs(6, 3, spread=0.5)
    keep = np.concatenate([np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:1]])
    model = LinearSvmCV([0.1, 1.0], cv=5, n_jobs=1).fit(X[keep], y[keep])
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert model.predict(X[keep]).tolist() == y[keep].tolist()
