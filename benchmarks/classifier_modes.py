"""Compare classifier = 'svm', 'dnn' and 'svmDnnRefined' on one dataset, same split, same backbone.

Runs steps 1-5 for each mode in a scratch root (the images are linked, not
copied) and prints test accuracy and wall time of each. 'svmDnnRefined'
reuses the refinement checkpoint of the 'dnn' run (the training is the same),
so its time adds the refinement time of 'dnn'.

    python benchmarks/classifier_modes.py [--rf_recipe=original --rf_maxEpochs=15 ...any parameter override]
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

from imgclass.layout import DatasetLayout
from imgclass.parameters import load_parameters
from imgclass.pipeline import build_featurizer, evaluate, featurize_dataset, prepare_data, train_classifier

#: Issue 3's runs used the original recipe: --rf_recipe=original --rf_maxEpochs=15 --rf_lrPerMb=[0.01]*10+[0.001]
#: (5 split seeds and every setup, with TTA: benchmarks/refinement_recipes.py).
DEFAULTS = ["--rf_pretrainedModelFilename=efficientnet_lite0"]


def main(argv: list[str]) -> None:
    base = load_parameters([a for a in DEFAULTS if a.split("=")[0] not in {b.split("=")[0] for b in argv}] + argv)
    source = DatasetLayout.from_parameters(base).images_dir
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        shutil.copytree(source, DatasetLayout(root, base.datasetName).images_dir, copy_function=shutil.copy)
        schedule = (f"{base.rf_ftEpochs} epochs, lr {base.rf_ftLearningRate} (backbone x{base.rf_ftBackboneLrFactor})"
                    if base.rf_recipe == "lpft" else
                    f"{base.rf_maxEpochs} epochs, lr {base.rf_lrPerMb[0]}..{base.rf_lrPerMb[-1]}")
        print(f"{base.datasetName}: backbone {base.rf_pretrainedModelFilename}, {base.rf_inputResolution} px, "
              f"recipe {base.rf_recipe}: {schedule}, mbSize {base.rf_mbSize}, freeze {base.rf_boFreezeWeights}")
        print(f"{'classifier':14s} {'test acc':>8s} {'class-avg':>9s} {'AUC macro':>9s} {'refine s':>9s} "
              f"{'featurize s':>11s} {'svm s':>6s} {'best epoch':>10s}")
        refine_seconds = 0.0
        for mode in ("svm", "dnn", "svmDnnRefined"):
            params = base.replace(rootDir=str(root), classifier=mode)
            prepare_data(params)
            start = time.perf_counter()
            built = build_featurizer(params, progress=False, log=lambda message: None)
            seconds = time.perf_counter() - start
            if mode == "dnn":
                refine_seconds = seconds
            start = time.perf_counter()
            featurize_dataset(params, progress=False)
            featurize_seconds = time.perf_counter() - start
            start = time.perf_counter()
            train_classifier(params)
            svm_seconds = time.perf_counter() - start
            m = evaluate(params).metrics
            refined = refine_seconds if mode != "svm" else 0.0
            best = built.refinement.best_epoch if built.refinement else "-"
            print(f"{mode:14s} {m['overall_accuracy']:8.3f} {m['class_averaged_accuracy']:9.3f} "
                  f"{m['auc_macro']:9.3f} {refined:9.1f} {featurize_seconds:11.1f} {svm_seconds:6.1f} {best!s:>10s}")


if __name__ == "__main__":
    main(sys.argv[1:])
