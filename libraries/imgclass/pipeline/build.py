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
    from imgclass.model.featurizer import Featurizer
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
    """What step 2 built: the featurizer (saved), and the refinement run if there was one."""

    layout: DatasetLayout
    featurizer: "Featurizer"
    refinement: "RefineResult | None" = None

    def summary(self) -> str:
        """What ``scripts/2_refineDNN.py`` prints."""
        lines = []
        if self.refinement is not None:
            result = self.refinement
            best = result.history[result.best_epoch - 1]
            lines.append(f"Refined {len(result.history)} epochs; best epoch {result.best_epoch} "
                         f"(validation error {best['validation_error']:.3f}, "
                         f"training error {best['train_error']:.3f})")
            lines.append(f"Training curves: {self.layout.training_csv}, {self.layout.training_png}")
        info = self.featurizer.describe()
        output = "class scores" if info["output"] == "logits" else "features"
        lines.append(f"DNN: {info['backbone']} at {info['resolution']} px ({info['resize_mode']}), "
                     f"{info['output_dim']} {output} per image")
        lines.append(f"Weights: {info['source']}")
        lines.append(f"Wrote {self.layout.featurizer_pth}")
        return "\n".join(lines)


def refine_config(params: Parameters) -> "RefineConfig":
    """The ``rf_*`` parameters as the refinement's config object."""
    from imgclass.model.refine import RefineConfig

    return RefineConfig(
        dropout=params.rf_dropoutRate, batch_size=params.rf_mbSize, max_epochs=params.rf_maxEpochs,
        max_train_images=params.rf_maxTrainImages, lr_per_epoch=tuple(params.rf_lrPerMb),
        momentum=params.rf_momentumPerMb, weight_decay=params.rf_l2RegWeight,
        freeze_backbone=params.rf_boFreezeWeights, backbone_lr_factor=params.rf_backboneLrFactor,
        balance_classes=params.rf_boBalanceTrainingSet, validation_fraction=params.rf_validationFraction,
        aug_random_crop=params.rf_augRandomCrop, aug_flip=params.rf_augHorizontalFlip,
        aug_color_jitter=params.rf_augColorJitter, seed=params.randomSeed, resize_mode=params.rf_resizeMode)


def build_featurizer(params: Parameters, pretrained: bool = True, progress: bool = True,
                     log: Callable[[str], None] = print) -> BuildReport:
    """Step 2: the network step 3 runs, saved as ``featurizer.pth``.

    ``classifier='svm'``: the pretrained backbone, fixed. ``'dnn'`` and
    ``'svmDnnRefined'``: the backbone refined on the training images (see
    :mod:`imgclass.model.refine`); ``'dnn'`` then outputs class scores, and
    ``'svmDnnRefined'`` the refined penultimate features for the SVM.
    ``pretrained=False`` starts from random weights (tests, speed benchmarks).
    """
    from imgclass.model.backbones import load_pretrained_extractor
    from imgclass.model.featurizer import Featurizer
    from imgclass.model.refine import TrainingImages, refine
    from imgclass.model.runtime import Runtime

    layout = DatasetLayout.from_parameters(params)
    config = refine_config(params)
    if params.classifier == "dnn" and config.max_epochs == 0:
        raise ImgClassError("classifier='dnn' needs refinement: set rf_maxEpochs >= 1")
    extractor, source = load_pretrained_extractor(params.rf_pretrainedModelFilename, params.rf_inputResolution,
                                                  params.models_dir, pretrained=pretrained)
    if params.classifier == "svm" or config.max_epochs == 0:
        featurizer = Featurizer(extractor, params.rf_resizeMode, source)
        featurizer.save(layout.featurizer_pth)
        return BuildReport(layout, featurizer)

    rows = [r for r in read_split_rows(layout) if r.split == TRAIN]
    labels = read_labels(layout)
    label_ids = {label: i for i, label in enumerate(labels)}
    images = TrainingImages(tuple(layout.images_dir / r.path for r in rows), tuple(label_ids[r.label] for r in rows),
                            tuple(labels))
    runtime = Runtime.resolve(params.run_device, params.run_precision, params.run_workers)
    result = refine(extractor, images, config, layout.refinement_checkpoint, runtime, progress, log)
    _write_training_log(result.history, layout)
    model = result.model
    featurizer = Featurizer(model.extractor, params.rf_resizeMode,
                            f"{source}, refined {len(result.history)} epochs, best epoch {result.best_epoch}",
                            model.head, labels, "logits" if params.classifier == "dnn" else "features")
    featurizer.save(layout.featurizer_pth)
    return BuildReport(layout, featurizer, result)


def _write_training_log(history: list[dict[str, float]], layout: DatasetLayout) -> None:
    from imgclass.evaluation import plots

    write_csv(layout.training_csv, TRAINING_LOG_COLUMNS, ([row[c] for c in TRAINING_LOG_COLUMNS] for row in history))
    plots.plot_training_curves(history, layout.training_png)
