"""Step 4: the linear SVM on the training features, C chosen by cross-validation on the training set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgclass.data.splits import TEST, TRAIN
from imgclass.errors import ImgClassError
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.pipeline.artifacts import load_features_for
from imgclass.pipeline.select import effective_classifier

if TYPE_CHECKING:
    import numpy as np

    from imgclass.model.svm import LinearSvmCV

STEP = StepSpec("train", "scripts/4_trainSVM.py", "train the linear SVM, choosing C by cross-validation",
                ("datasetName", "rootDir", "classifier", "svm_CVals", "svm_boL2Normalize", "svm_cvFolds", "svm_nJobs",
                 "svm_maxRowsForCV", "randomSeed"))


@dataclass
class TrainReport:
    """What step 4 did: the SVM of every C with its accuracies, and the chosen one (None for ``'dnn'``)."""

    layout: DatasetLayout
    model: "LinearSvmCV | None"
    #: per C: ``C``, ``cv_accuracy``, ``train_accuracy``, ``fit_seconds`` and (with test images) ``test_accuracy``
    per_C: list[dict[str, float]] = field(default_factory=list)
    #: training images
    n_train: int = 0
    #: when the search saw a sample of them (``svm_maxRowsForCV``): the kept model's own ``train_accuracy``,
    #: ``fit_seconds`` and (with test images) ``test_accuracy``
    final: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """What ``scripts/4_trainSVM.py`` prints."""
        if self.model is None:
            return "classifier='dnn': the refined DNN is the classifier; no SVM to train. Next: scripts/5_evaluate.py"
        search = self.model.cv_results_
        lines = [f"{'C':>10s} {'CV acc':>8s} {'train acc':>10s} {'test acc':>9s} {'time (s)':>9s}"]
        for row, cv_time in zip(self.per_C, search.cv_seconds):
            marker = "  <- chosen" if row["C"] == self.model.C_ else ""
            test = f"{row['test_accuracy']:9.3f}" if "test_accuracy" in row else f"{'-':>9s}"
            lines.append(f"{row['C']:10g} {row['cv_accuracy']:8.3f} {row['train_accuracy']:10.3f} {test} "
                         f"{row['fit_seconds'] + cv_time:9.2f}{marker}")
        if self.final:
            held_out = self.model.best_estimator_.n_held_out_
            test = f", test acc {self.final['test_accuracy']:.3f}" if "test_accuracy" in self.final else ""
            lines.append(f"Chosen C = {self.model.C_:g} by {search.folds}-fold cross-validation on a stratified "
                         f"{self.model.n_search_rows_} of the {self.n_train} training images (svm_maxRowsForCV; "
                         "the table's models were fitted on those)")
            lines.append(f"C = {self.model.C_:g} then fitted once on all {self.n_train} training images but "
                         f"{held_out} held out to calibrate it ({self.final['fit_seconds']:.1f} s): train acc "
                         f"{self.final['train_accuracy']:.3f}{test}")
        else:
            lines.append(f"Chosen C = {self.model.C_:g} by {search.folds}-fold cross-validation on the training set")
        lines.append(f"Wrote {self.layout.svm_joblib}")
        return "\n".join(lines)


def accuracy_per_C(model: "LinearSvmCV", X: "np.ndarray", y: "np.ndarray") -> list[float]:
    """Accuracy on ``(X, y)`` of the model fitted for each C, in the order of ``model.cv_results_.C_values``.

    For information only: step 4 reports the training and test accuracy of
    every C; the choice of C was made by cross-validation before.
    """
    return [float(model.estimators_[C].score(X, y)) for C in model.cv_results_.C_values]


def train_classifier(params: Parameters) -> TrainReport:
    """Step 4: choose C by CV on the training features, fit, save ``svm.joblib`` + ``svm.json``.

    For ``classifier='dnn'`` there is nothing to train (the refined network is
    the classifier): the report's ``model`` is None.
    """
    import numpy as np

    from imgclass.model.svm import LinearSvm, LinearSvmCV, save_svm

    layout = DatasetLayout.from_parameters(params)
    table = load_features_for(params)
    if effective_classifier(params) == "dnn":
        return TrainReport(layout, None)
    X_train, y_train, _ = table.subset(TRAIN)
    X_test, y_test, _ = table.subset(TEST)
    if len(y_train) == 0:
        raise ImgClassError("no readable training images: check the report of scripts/3_runDNN.py")
    labels = np.asarray(table.labels)
    model = LinearSvmCV(params.svm_CVals, params.svm_cvFolds, params.svm_nJobs,
                        LinearSvm(l2_normalize=params.svm_boL2Normalize, random_state=params.randomSeed,
                                  classes=table.labels),
                        max_rows_for_cv=params.svm_maxRowsForCV).fit(X_train, labels[y_train])
    search = model.cv_results_
    per_C: list[dict[str, Any]] = [
        {"C": C, "cv_accuracy": cv, "train_accuracy": train, "fit_seconds": model.fit_seconds_[C]}
        for C, cv, train in zip(search.C_values, search.cv_accuracy, accuracy_per_C(model, X_train, labels[y_train]))]
    if len(y_test):
        for row, test in zip(per_C, accuracy_per_C(model, X_test, labels[y_test])):
            row["test_accuracy"] = test
    final: dict[str, float] = {}
    if model.n_search_rows_ < len(y_train):  # the table's models saw a sample: report the one that is kept
        final = {"train_accuracy": float(model.best_estimator_.score(X_train, labels[y_train])),
                 "fit_seconds": model.best_fit_seconds_}
        if len(y_test):
            final["test_accuracy"] = float(model.best_estimator_.score(X_test, labels[y_test]))
    save_svm(model.best_estimator_, layout.svm_joblib, layout.svm_json, {
        "featurizer": table.featurizer, "cv_folds": search.folds, "cv_rows": model.n_search_rows_,
        "calibration_held_out_rows": model.best_estimator_.n_held_out_,
        "cv": [{"C": c, "cv_accuracy": a, "cv_accuracy_std": s}
               for c, a, s in zip(search.C_values, search.cv_accuracy, search.cv_accuracy_std)],
        "per_C": per_C, **({"final": final} if final else {})})
    return TrainReport(layout, model, per_C, len(y_train), final)
