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

from imgclass.cli import run_main
from imgclass.layout import DatasetLayout
from imgclass.parameters import parse_command_line
from imgclass.pipeline import build_featurizer

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]

USED = ["datasetName", "rootDir", "classifier", "rf_pretrainedModelFilename", "rf_inputResolution",
        "rf_resizeMode", "rf_dropoutRate", "rf_mbSize", "rf_maxEpochs", "rf_maxTrainImages", "rf_lrPerMb",
        "rf_momentumPerMb", "rf_l2RegWeight", "rf_boFreezeWeights", "rf_backboneLrFactor", "rf_boBalanceTrainingSet",
        "rf_validationFraction", "rf_augRandomCrop", "rf_augHorizontalFlip", "rf_augColorJitter", "randomSeed",
        "run_device", "run_workers", "run_precision"]


def main(argv: list[str]) -> None:
    params = parse_command_line(argv, USED, __doc__, project_dir=PROJECT_DIR)
    layout = DatasetLayout.from_parameters(params)
    report = build_featurizer(params, progress=sys.stderr.isatty())
    info = report.featurizer.describe()
    if report.refinement is not None:
        result = report.refinement
        best = result.history[result.best_epoch - 1]
        print(f"Refined {len(result.history)} epochs; best epoch {result.best_epoch} "
              f"(validation error {best['validation_error']:.3f}, training error {best['train_error']:.3f})")
        print(f"Training curves: {layout.training_csv}, {layout.training_png}")
    output = "class scores" if info["output"] == "logits" else "features"
    print(f"DNN: {info['backbone']} at {info['resolution']} px ({info['resize_mode']}), "
          f"{info['output_dim']} {output} per image")
    print(f"Weights: {info['source']}")
    print(f"Wrote {layout.featurizer_pth}")


if __name__ == "__main__":
    sys.exit(run_main(main))
