"""Step 5: evaluate the classifier on the test set.

Prints overall and class-averaged accuracy, per-class accuracy and AUC, and
writes results/<datasetName>/: metrics.json, predictions.csv, roc_curves.png,
confusion_matrix.png, per_class_accuracy.png and examples.png.
"""

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main
from imgclass.pipeline.evaluate import STEP, evaluate

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    params = parse_step(argv, STEP, __doc__, PROJECT_DIR)
    report = evaluate(params)
    print(report.summary())


if __name__ == "__main__":
    sys.exit(run_main(main))
