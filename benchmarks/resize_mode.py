"""Compare the two resize modes ('pad' vs 'crop') on a dataset: which default is better?

For each mode the images are featurized once; then, for several split seeds,
C is chosen by CV on the training part and the test accuracy recorded.

    python benchmarks/resize_mode.py [--datasetName=...] [--rf_pretrainedModelFilename=efficientnet_lite0]
"""

import sys

import numpy as np

from imgclass.data.splits import TRAIN, list_dataset, split_dataset
from imgclass.layout import DatasetLayout
from imgclass.model.backbones import load_pretrained_extractor
from imgclass.model.dataset import ImageDataset
from imgclass.model.featurizer import Featurizer
from imgclass.model.inference import infer
from imgclass.model.runtime import Runtime
from imgclass.model.svm import LinearSvm, LinearSvmCV
from imgclass.parameters import parse_command_line

SEEDS = range(5)


def main(argv: list[str]) -> None:
    params = parse_command_line(argv or ["--rf_pretrainedModelFilename=efficientnet_lite0"])
    layout = DatasetLayout.from_parameters(params)
    listing = list_dataset(layout.images_dir)
    paths = [p for label in listing.labels for p in listing.images_by_label[label]]
    label_of = {p: i for i, label in enumerate(listing.labels) for p in listing.images_by_label[label]}
    print(f"{params.datasetName}: {len(paths)} images, backbone {params.rf_pretrainedModelFilename}, "
          f"{params.rf_inputResolution} px, seeds {list(SEEDS)}")
    print(f"{'mode':6s} {'CV acc (mean)':>14s} {'test acc (mean ± sd)':>22s}")
    for mode in ("pad", "crop"):
        extractor, source = load_pretrained_extractor(params.rf_pretrainedModelFilename, params.rf_inputResolution,
                                                       params.models_dir)
        featurizer = Featurizer(extractor, mode, source)
        features = np.zeros((len(paths), extractor.feature_dim), dtype=np.float32)
        dataset = ImageDataset([layout.images_dir / p for p in paths], featurizer.transform)
        for batch in infer(extractor, dataset, 32, Runtime()):  # the CPU, fp32, in this process
            features[batch.indices] = batch.outputs
        row_of = {p: i for i, p in enumerate(paths)}
        cv, test = [], []
        for seed in SEEDS:
            rows = split_dataset(listing, params.ratioTrainTest, seed)
            train = [row_of[r.path] for r in rows if r.split == TRAIN]
            held = [row_of[r.path] for r in rows if r.split != TRAIN]
            y = np.array([label_of[p] for p in paths])
            model = LinearSvmCV(params.svm_CVals, params.svm_cvFolds, -1,
                                LinearSvm(l2_normalize=params.svm_boL2Normalize, random_state=seed)
                                ).fit(features[train], y[train])
            cv.append(max(model.cv_results_.cv_accuracy))
            test.append(float(np.mean(model.predict(features[held]) == y[held])))
        print(f"{mode:6s} {np.mean(cv):14.3f} {np.mean(test):14.3f} ± {np.std(test):.3f}   "
              f"(per seed: {', '.join(f'{t:.3f}' for t in test)})")


if __name__ == "__main__":
    main(sys.argv[1:])
