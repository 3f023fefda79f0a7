"""Step 4: train a linear SVM on the training features, choosing C by cross-validation.

C is picked by stratified k-fold cross-validation on the TRAINING set only;
the test accuracy per C is printed for information and plays no part in the
choice. Writes proc/<datasetName>/svm.joblib and svm.json.
"""

import sys
from pathlib import Path

from imgclass.cli import run_main
from imgclass.layout import DatasetLayout
from imgclass.parameters import parse_command_line
from imgclass.pipeline import train_classifier

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]

USED = ["datasetName", "rootDir", "classifier", "svm_CVals", "svm_boL2Normalize", "svm_cvFolds", "svm_nJobs", "randomSeed"]


def main(argv: list[str]) -> None:
    params = parse_command_line(argv, USED, __doc__, project_dir=PROJECT_DIR)
    model = train_classifier(params)
    if model is None:
        print("classifier='dnn': the refined DNN is the classifier; no SVM to train. Next: scripts/5_evaluate.py")
        return
    print(f"{'C':>10s} {'CV acc':>8s} {'train acc':>10s} {'test acc':>9s} {'time (s)':>9s}")
    for row, cv_time in zip(model.per_C, model.search.cv_seconds):
        marker = "  <- chosen" if row["C"] == model.C else ""
        test = f"{row['test_accuracy']:9.3f}" if "test_accuracy" in row else f"{'-':>9s}"
        print(f"{row['C']:10g} {row['cv_accuracy']:8.3f} {row['train_accuracy']:10.3f} {test} "
              f"{row['fit_seconds'] + cv_time:9.2f}{marker}")
    print(f"Chosen C = {model.C:g} by {model.search.folds}-fold cross-validation on the training set")
    print(f"Wrote {DatasetLayout.from_parameters(params).svm_joblib}")


if __name__ == "__main__":
    sys.exit(run_main(main))
