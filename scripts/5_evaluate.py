"""Step 5: evaluate the classifier on the test set.

Prints overall and class-averaged accuracy, per-class accuracy and AUC, and
writes results/<datasetName>/: metrics.json, predictions.csv, roc_curves.png,
confusion_matrix.png, per_class_accuracy.png and examples.png.
"""

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main, run_step
from imgclass.pipeline.evaluate import STEP
from imgclass.tracking import tracked

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    step = tracked(STEP)  # step 5 and the run-tracking parameters (the step runs inside its MLflow run)
    params = parse_step(argv, step, __doc__, PROJECT_DIR)
    report = run_step(step, params)
    print(report.summary())


if __name__ == "__main__":
    sys.exit(run_main(main))
