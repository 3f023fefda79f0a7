"""Step 4: the linear SVM on the training features, C chosen by cross-validation on the training set."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclass.data.splits import TEST, TRAIN
from imgclass.errors import ImgClassError
from imgclass.io.atomic import atomic_path, write_json
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.pipeline.artifacts import load_features_for

if TYPE_CHECKING:
    from imgclass.model.svm import TrainedSvm

STEP = StepSpec("train", "scripts/4_trainSVM.py", "train the linear SVM, choosing C by cross-validation",
                ("datasetName", "rootDir", "classifier", "svm_CVals", "svm_boL2Normalize", "svm_cvFolds", "svm_nJobs",
                 "randomSeed"))


def train_classifier(params: Parameters) -> "TrainedSvm | None":
    """Step 4: choose C by CV on the training features, fit, save ``svm.joblib`` + ``svm.json``.

    Returns None for ``classifier='dnn'``: the refined network is the classifier.
    """
    import joblib

    from imgclass.model.svm import train_svm

    layout = DatasetLayout.from_parameters(params)
    table = load_features_for(params)
    if params.classifier == "dnn":
        return None
    X_train, y_train, _ = table.subset(TRAIN)
    X_test, y_test, _ = table.subset(TEST)
    if len(y_train) == 0:
        raise ImgClassError("no readable training images: check the report of scripts/3_runDNN.py")
    model = train_svm(X_train, y_train, table.labels, table.featurizer, params.svm_CVals, params.svm_cvFolds,
                      params.svm_boL2Normalize, params.randomSeed, params.svm_nJobs, X_test, y_test)
    with atomic_path(layout.svm_joblib) as tmp:
        joblib.dump(model, tmp)
    write_json(layout.svm_json, model.metadata())
    return model
