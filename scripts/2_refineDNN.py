"""Step 2: build the DNN used in step 3, and save it to proc/<datasetName>/featurizer.pth.

classifier='svm': the pretrained backbone (rf_pretrainedModelFilename) at
rf_inputResolution with its fixed ImageNet weights.
classifier='dnn' or 'svmDnnRefined': the backbone refined on the training
images (new dropout + linear head, SGD with the rf_* parameters, augmentation,
best epoch by a validation part of the TRAINING set). A checkpoint after
every epoch lets an interrupted run resume. Progress goes to
results/<datasetName>/dnnTraining.csv and dnnTraining.png.
"""

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main, run_step
from imgclass.pipeline.build import STEP
from imgclass.tracking import tracked

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    step = tracked(STEP)  # step 2 and the run-tracking parameters (the step runs inside its MLflow run)
    params = parse_step(argv, step, __doc__, PROJECT_DIR)
    report = run_step(step, params, progress=sys.stderr.isatty())
    print(report.summary())


if __name__ == "__main__":
    sys.exit(run_main(main))
