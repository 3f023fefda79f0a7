"""Step 5: test-set metrics, ``predictions.csv`` and plots in ``results/<ds>/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclass.data.splits import TEST
from imgclass.errors import ImgClassError, MissingArtifactError
from imgclass.io.atomic import write_csv, write_json
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.pipeline.artifacts import load_features_for

if TYPE_CHECKING:
    import numpy as np

STEP = StepSpec("evaluate", "scripts/5_evaluate.py", "evaluate the classifier on the test set",
                ("datasetName", "rootDir", "classifier", "eval_numExampleImages", "randomSeed"))


@dataclass
class EvaluationReport:
    metrics: dict[str, Any]
    written: list[Path]


def evaluate(params: Parameters) -> EvaluationReport:
    """Step 5: test-set metrics, ``predictions.csv`` and plots in ``results/<ds>/``."""
    import numpy as np

    from imgclass.evaluation import metrics as M
    from imgclass.evaluation import plots
    from imgclass.model.scores import softmax
    from imgclass.model.svm import load_svm

    layout = DatasetLayout.from_parameters(params)
    table = load_features_for(params)
    X_test, y_test, test_rows = table.subset(TEST)
    if len(y_test) == 0:
        raise ImgClassError("no readable test images to evaluate")
    if params.classifier == "dnn":
        if table.featurizer.get("labels") != table.labels:
            raise MissingArtifactError("the refined DNN was trained on other labels than the current split; "
                                       "re-run scripts 2 and 3")
        scores = softmax(X_test)
        C = None
    else:
        model = load_svm(layout.svm_joblib)
        if model.labels != table.labels:
            raise MissingArtifactError("the SVM was trained on other labels than the current split; "
                                       "re-run scripts/4_trainSVM.py")
        scores = model.decision_scores(X_test)
        C = model.C
    y_pred = np.argmax(scores, axis=1)
    labels = table.labels
    K = len(labels)
    summary = M.summarize(y_test, y_pred, scores, labels)
    summary.update({"classifier": params.classifier, "C": C, "featurizer": table.featurizer})
    write_json(layout.metrics_json, summary)
    write_csv(layout.predictions_csv, ["path", "label", "predicted", "correct", "score"]
              + [f"score_{name}" for name in labels],
              ([row.path, row.label, labels[pred], int(labels[pred] == row.label), f"{s[pred]:.6g}"]
               + [f"{v:.6g}" for v in s] for row, pred, s in zip(test_rows, y_pred, scores)))

    curves = M.roc_curves(y_test, scores, K)
    plots.plot_roc_curves(curves, labels, layout.roc_curves_png)
    plots.plot_confusion_matrix(M.confusion_matrix(y_test, y_pred, K), labels, layout.confusion_matrix_png)
    plots.plot_per_class_accuracy(M.per_class_accuracy(y_test, y_pred, K), labels, layout.per_class_accuracy_png)
    examples = _example_indices(y_test, y_pred, params.eval_numExampleImages, params.randomSeed)
    plots.plot_example_images([layout.images_dir / test_rows[i].path for i in examples],
                              [labels[y_test[i]] for i in examples], [labels[y_pred[i]] for i in examples],
                              [float(scores[i, y_pred[i]]) for i in examples], layout.examples_png)
    return EvaluationReport(summary, [layout.metrics_json, layout.predictions_csv, *layout.evaluation_plots])


def _example_indices(y_true: "np.ndarray", y_pred: "np.ndarray", count: int, seed: int) -> list[int]:
    """Up to ``count`` test images: every wrong one first (up to half), the rest right ones, seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    wrong = rng.permutation(np.flatnonzero(y_true != y_pred)).tolist()
    right = rng.permutation(np.flatnonzero(y_true == y_pred)).tolist()
    n_wrong = min(len(wrong), max(count // 2, count - len(right)))
    chosen = wrong[:n_wrong] + right[:count - n_wrong]
    return sorted(chosen)
