"""Step 2: build the DNN used to featurize images, and save it to proc/<datasetName>/featurizer.pth.

For classifier='svm' this is the pretrained backbone (rf_pretrainedModelFilename)
at rf_inputResolution with its fixed ImageNet weights.
"""

import sys

from imgclass.cli import run_main
from imgclass.layout import DatasetLayout
from imgclass.parameters import parse_command_line
from imgclass.pipeline import build_featurizer

USED = ["datasetName", "rootDir", "classifier", "rf_pretrainedModelFilename", "rf_inputResolution",
        "rf_resizeMode"]


def main(argv: list[str]) -> None:
    params = parse_command_line(argv, USED, __doc__)
    featurizer = build_featurizer(params)
    info = featurizer.describe()
    print(f"Featurizer: {info['backbone']} at {info['resolution']} px ({info['resize_mode']}), "
          f"{info['feature_dim']} features per image")
    print(f"Weights from {info['source']}")
    print(f"Wrote {DatasetLayout.from_parameters(params).featurizer_pth}")


if __name__ == "__main__":
    sys.exit(run_main(main))
