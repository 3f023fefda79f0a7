"""Step 2: the network step 3 runs, saved as ``featurizer.pth`` (the pretrained backbone, or refined)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from imgclass.data.splits import TRAIN
from imgclass.errors import ImgClassError
from imgclass.io.atomic import write_csv
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.pipeline.artifacts import read_labels, read_split_rows

if TYPE_CHECKING:
    from imgclass.model.inference import Featurizer
    from imgclass.model.refine import RefineConfig, RefineResult

STEP = StepSpec("build", "scripts/2_refineDNN.py", "build the DNN for step 3: the pretrained backbone, or refined",
                ("datasetName", "rootDir", "classifier", "rf_pretrainedModelFilename", "rf_inputResolution",
                 "rf_resizeMode", "rf_dropoutRate", "rf_mbSize", "rf_maxEpochs", "rf_maxTrainImages", "rf_lrPerMb",
                 "rf_momentumPerMb", "rf_l2RegWeight", "rf_boFreezeWeights", "rf_backboneLrFactor",
                 "rf_boBalanceTrainingSet", "rf_validationFraction", "rf_augRandomCrop", "rf_augHorizontalFlip",
                 "rf_augColorJitter", "randomSeed", "run_device", "run_workers", "run_precision"))

TRAINING_LOG_COLUMNS = ("epoch", "learning_rate", "train_loss", "train_error", "validation_loss", "validation_error",
                        "seconds")


@dataclass
class BuildReport:
    featurizer: "Featurizer"
    refinement: "RefineResult | None" = None


def refine_config(params: Parameters) -> "RefineConfig":
    """The ``rf_*`` parameters as the refinement's config object."""
    from imgclass.model.refine import RefineConfig

    return RefineConfig(params.rf_dropoutRate, params.rf_mbSize, params.rf_maxEpochs, params.rf_maxTrainImages,
                        tuple(params.rf_lrPerMb), params.rf_momentumPerMb, params.rf_l2RegWeight,
                        params.rf_boFreezeWeights, params.rf_backboneLrFactor, params.rf_boBalanceTrainingSet,
                        params.rf_validationFraction, params.rf_augRandomCrop, params.rf_augHorizontalFlip,
                        params.rf_augColorJitter, params.randomSeed)


def build_featurizer(params: Parameters, pretrained: bool = True, progress: bool = True,
                     log: Callable[[str], None] = print,
                     on_epoch_end: Callable[[dict[str, float]], None] | None = None) -> BuildReport:
    """Step 2: the network step 3 runs, saved as ``featurizer.pth``.

    ``classifier='svm'``: the pretrained backbone, fixed. ``'dnn'`` and
    ``'svmDnnRefined'``: the backbone refined on the training images (see
    :mod:`imgclass.model.refine`); ``'dnn'`` then outputs class scores, and
    ``'svmDnnRefined'`` the refined penultimate features for the SVM.
    """
    from imgclass.model.backbones import load_pretrained_extractor
    from imgclass.model.inference import Featurizer
    from imgclass.model.refine import refine
    from imgclass.model.runtime import default_workers, resolve_device, resolve_precision

    layout = DatasetLayout.from_parameters(params)
    config = refine_config(params)
    if params.classifier == "dnn" and config.max_epochs == 0:
        raise ImgClassError("classifier='dnn' needs refinement: set rf_maxEpochs >= 1")
    extractor, source = load_pretrained_extractor(params.rf_pretrainedModelFilename, params.rf_inputResolution,
                                                  params.models_dir, pretrained=pretrained)
    if params.classifier == "svm" or config.max_epochs == 0:
        featurizer = Featurizer(extractor, params.rf_resizeMode, source)
        featurizer.save(layout.featurizer_pth)
        return BuildReport(featurizer)

    rows = [r for r in read_split_rows(layout) if r.split == TRAIN]
    labels = read_labels(layout)
    label_ids = {label: i for i, label in enumerate(labels)}
    device = resolve_device(params.run_device)
    result = refine(extractor, params.rf_resizeMode, config, [layout.images_dir / r.path for r in rows],
                    [label_ids[r.label] for r in rows], labels, layout.refinement_checkpoint, device,
                    resolve_precision(params.run_precision, device),
                    default_workers(params.run_workers, device), progress, log, on_epoch_end)
    _write_training_log(result.history, layout)
    model = result.model
    featurizer = Featurizer(model.extractor, params.rf_resizeMode,
                            f"{source}, refined {len(result.history)} epochs, best epoch {result.best_epoch}",
                            model.head, labels, "logits" if params.classifier == "dnn" else "features")
    featurizer.save(layout.featurizer_pth)
    return BuildReport(featurizer, result)


def _write_training_log(history: list[dict[str, float]], layout: DatasetLayout) -> None:
    from imgclass.evaluation import plots

    write_csv(layout.training_csv, TRAINING_LOG_COLUMNS, ([row[c] for c in TRAINING_LOG_COLUMNS] for row in history))
    plots.plot_training_curves(history, layout.training_png)
