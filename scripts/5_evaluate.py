"""Step 5: evaluate the classifier on the test set.

Prints overall and class-averaged accuracy, per-class accuracy and AUC, and
writes results/<datasetName>/: metrics.json, predictions.csv, roc_curves.png,
confusion_matrix.png, per_class_accuracy.png and examples.png.
"""

import sys
from pathlib import Path

from imgclass.cli import run_main
from imgclass.parameters import parse_command_line
from imgclass.pipeline import evaluate

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]

USED = ["datasetName", "rootDir", "classifier", "eval_numExampleImages", "randomSeed"]


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def main(argv: list[str]) -> None:
    params = parse_command_line(argv, USED, __doc__, project_dir=PROJECT_DIR)
    report = evaluate(params)
    m = report.metrics
    print(f"{'class':24s} {'images':>6s} {'accuracy':>9s} {'AUC':>6s}")
    for label in m["labels"]:
        print(f"{label:24s} {m['per_class_counts'][label]:6d} {_fmt(m['per_class_accuracy'][label]):>9s} "
              f"{_fmt(m['auc_per_class'][label]):>6s}")
    print(f"Overall accuracy:        {_fmt(m['overall_accuracy'])} ({m['n_test_images']} test images)")
    print(f"Class-averaged accuracy: {_fmt(m['class_averaged_accuracy'])}")
    print(f"AUC macro / micro:       {_fmt(m['auc_macro'])} / {_fmt(m['auc_micro'])}")
    print("Wrote:")
    for path in report.written:
        print(f"  {path}")


if __name__ == "__main__":
    sys.exit(run_main(main))
