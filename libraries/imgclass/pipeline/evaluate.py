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
from imgclass.pipeline.select import effective_classifier

if TYPE_CHECKING:
    import numpy as np

STEP = StepSpec("evaluate", "scripts/5_evaluate.py", "evaluate the classifier on the test set",
                ("datasetName", "rootDir", "classifier", "eval_numExampleImages", "randomSeed"))


@dataclass
class EvaluationReport:
    """Step 5's metrics (as in ``metrics.json``) and the files it wrote."""

    metrics: dict[str, Any]
    written: list[Path]

    def summary(self) -> str:
        """What ``scripts/5_evaluate.py`` prints."""
        m = self.metrics
        lines = [f"{'class':24s} {'images':>6s} {'accuracy':>9s} {'AUC':>6s}"]
        lines += [f"{label:24s} {m['per_class_counts'][label]:6d} {_fmt(m['per_class_accuracy'][label]):>9s} "
                  f"{_fmt(m['auc_per_class'][label]):>6s}" for label in m["labels"]]
        lines.append(f"Overall accuracy:        {_fmt(m['overall_accuracy'])} ({m['n_test_images']} test images)")
        lines.append(f"Class-averaged accuracy: {_fmt(m['class_averaged_accuracy'])}")
        lines.append(f"AUC macro / micro:       {_fmt(m['auc_macro'])} / {_fmt(m['auc_micro'])}")
        lines.append("Wrote:")
        lines += [f"  {path}" for path in self.written]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


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
    classifier = effective_classifier(params)
    if classifier == "dnn":
        if table.featurizer.get("labels") != table.labels:
            raise MissingArtifactError("the refined DNN was trained on other labels than the current split; "
                                       "re-run scripts 2 and 3")
        scores = softmax(X_test)
        C = None
    else:
        model = load_svm(layout.svm_joblib, layout.svm_json)
        if [str(label) for label in model.classes_] != table.labels:
            raise MissingArtifactError("the SVM was trained on other labels than the current split; "
                                       "re-run scripts/4_trainSVM.py")
        scores = model.decision_function(X_test)
        C = float(model.C)
    y_pred = np.argmax(scores, axis=1)
    labels = table.labels
    K = len(labels)
    summary = M.summarize(y_test, y_pred, scores, labels)
    summary.update({"classifier": classifier, "C": C, "featurizer": table.featurizer})
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
