"""Step 4: train a linear SVM on the training features, choosing C by cross-validation.

C is picked by stratified k-fold cross-validation on the TRAINING set only;
the test accuracy per C is printed for information and plays no part in the
choice. Writes proc/<datasetName>/svm.joblib and svm.json.
"""

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main, run_step
from imgclass.pipeline.train import STEP
from imgclass.tracking import tracked

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    step = tracked(STEP)  # step 4 and the run-tracking parameters (the step runs inside its MLflow run)
    params = parse_step(argv, step, __doc__, PROJECT_DIR)
    report = run_step(step, params)
    print(report.summary())


if __name__ == "__main__":
    sys.exit(run_main(main))
