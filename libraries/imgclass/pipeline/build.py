"""Step 2: the network step 3 runs, saved as ``featurizer.pth`` (the pretrained backbone, or refined).

With ``rf_pretrained=False`` the network starts from random weights and is
trained from scratch by the same refinement code (:func:`from_scratch`), with
the ``'original'`` recipe: LP-FT's linear probe presumes features worth
probing, and random ones are not.

With ``classifier='auto'`` step 2 also chooses the classifier and backbone
(:mod:`imgclass.pipeline.select`) and records the choice; steps 3-5 then
follow it (:func:`imgclass.pipeline.select.effective_classifier`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from imgclass.data.splits import TRAIN
from imgclass.errors import ImgClassError
from imgclass.io.atomic import write_csv
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.pipeline.artifacts import read_labels, read_split_rows

if TYPE_CHECKING:
    from imgclass.model.featurizer import Featurizer
    from imgclass.model.runtime import Runtime
    from imgclass.model.refine import RefineConfig, RefineResult, TrainingImages
    from imgclass.pipeline.select import ModelChoice

STEP = StepSpec("build", "scripts/2_refineDNN.py", "build the DNN for step 3: the pretrained backbone, or refined",
                ("datasetName", "rootDir", "classifier", "rf_pretrainedModelFilename", "rf_pretrained",
                 "rf_inputResolution", "rf_resizeMode", "rf_dropoutRate", "rf_mbSize", "rf_maxEpochs",
                 "rf_maxTrainImages", "rf_lrPerMb", "rf_momentumPerMb", "rf_l2RegWeight", "rf_boFreezeWeights",
                 "rf_backboneLrFactor", "rf_boBalanceTrainingSet", "rf_validationFraction", "rf_augRandomCrop",
                 "rf_augHorizontalFlip", "rf_augColorJitter", "rf_recipe", "rf_ftEpochs", "rf_ftLearningRate",
                 "rf_ftBackboneLrFactor", "rf_warmupEpochs", "rf_earlyStopPatience", "rf_optimizer", "run_tta",
                 "auto_classifiers", "svm_CVals", "svm_boL2Normalize", "svm_cvFolds", "svm_nJobs", "randomSeed",
                 "run_device", "run_workers", "run_precision", "run_mbSize"))

#: 'lpft' clips the gradient's norm to this: the trained head's gradients can be large for a backbone that
#: sees augmented images for the first time, and one such step is enough to wreck the pretrained features.
LPFT_MAX_GRAD_NORM = 1.0

TRAINING_LOG_COLUMNS = ("epoch", "learning_rate", "train_loss", "train_error", "validation_loss", "validation_error",
                        "seconds")


@dataclass
class BuildReport:
    """What step 2 built: the featurizer (saved), and the refinement run if there was one."""

    layout: DatasetLayout
    featurizer: "Featurizer"
    refinement: "RefineResult | None" = None
    #: ``classifier='auto'``: the candidates tried and the one chosen
    choice: "ModelChoice | None" = None

    def summary(self) -> str:
        """What ``scripts/2_refineDNN.py`` prints."""
        lines = [self.choice.table(), ""] if self.choice is not None else []
        if self.refinement is not None:
            result = self.refinement
            best = result.best
            probe = " (0 = the linear probe)" if result.history and result.history[0]["epoch"] == 0 else ""
            stop = ", stopped early" if result.stopped_early else ""
            trained = "Trained from scratch" if "trained from scratch" in self.featurizer.source else "Refined"
            lines.append(f"{trained} {len(result.fine_tuning_epochs)} epochs{stop}; best epoch {result.best_epoch}"
                         f"{probe} (validation loss {best['validation_loss']:.3f}, "
                         f"error {best['validation_error']:.3f}; training error {best['train_error']:.3f})")
            lines.append(f"Training curves: {self.layout.training_csv}, {self.layout.training_png}")
        info = self.featurizer.describe()
        output = "class scores" if info["output"] == "logits" else "features"
        tta = f", {info['tta']} TTA" if info["tta"] != "none" else ""
        lines.append(f"DNN: {info['backbone']} at {info['resolution']} px ({info['resize_mode']}{tta}), "
                     f"{info['output_dim']} {output} per image")
        lines.append(f"Weights: {info['source']}")
        lines.append(f"Wrote {self.layout.featurizer_pth}")
        return "\n".join(lines)


def refine_config(params: Parameters) -> "RefineConfig":
    """The ``rf_*`` parameters of the chosen ``rf_recipe`` as the refinement's config object.

    ``'lpft'`` trains for ``rf_ftEpochs`` on its own schedule (``rf_ft*``,
    ``rf_warmupEpochs``); ``'original'`` for ``rf_maxEpochs`` at ``rf_lrPerMb``
    with ``rf_backboneLrFactor``, as before the recipes existed.
    """
    from imgclass.model.refine import RefineConfig

    lpft = params.rf_recipe == "lpft"
    return RefineConfig(
        dropout=params.rf_dropoutRate, batch_size=params.rf_mbSize,
        max_epochs=params.rf_ftEpochs if lpft else params.rf_maxEpochs,
        max_train_images=params.rf_maxTrainImages, lr_per_epoch=tuple(params.rf_lrPerMb),
        momentum=params.rf_momentumPerMb, weight_decay=params.rf_l2RegWeight,
        freeze_backbone=params.rf_boFreezeWeights,
        backbone_lr_factor=params.rf_ftBackboneLrFactor if lpft else params.rf_backboneLrFactor,
        balance_classes=params.rf_boBalanceTrainingSet, validation_fraction=params.rf_validationFraction,
        aug_random_crop=params.rf_augRandomCrop, aug_flip=params.rf_augHorizontalFlip,
        aug_color_jitter=params.rf_augColorJitter, seed=params.randomSeed, resize_mode=params.rf_resizeMode,
        recipe=params.rf_recipe, peak_lr=params.rf_ftLearningRate, warmup_epochs=params.rf_warmupEpochs,
        early_stop_patience=params.rf_earlyStopPatience, tta=params.run_tta,
        max_grad_norm=LPFT_MAX_GRAD_NORM if lpft else 0.0, normalize_features=lpft, optimizer=params.rf_optimizer,
        best_by="loss" if lpft else "error")


def from_scratch(params: Parameters, log: Callable[[str], None] | None = None) -> Parameters:
    """The parameters step 2 trains with: for ``rf_pretrained=False``, ``rf_recipe='original'``.

    LP-FT fits its first head on the frozen network's features and then
    fine-tunes gently from it; random features give that probe nothing to
    work with, and its schedule is sized for adapting pretrained weights, not
    learning them. From scratch the original recipe is the natural one: a
    random head and every layer trained together for up to ``rf_maxEpochs``
    at ``rf_lrPerMb``, with early stopping. ``log`` (if given) is told when
    the recipe is switched.
    """
    if params.rf_pretrained or params.rf_recipe == "original":
        return params
    if log is not None:
        log("rf_pretrained=False: training from scratch with rf_recipe='original' (rf_maxEpochs, rf_lrPerMb, "
            "rf_optimizer) instead of 'lpft', whose linear probe needs pretrained features")
    return params.replace(rf_recipe="original")


def backbone_names(params: Parameters) -> list[str]:
    """``rf_pretrainedModelFilename`` as a list; more than one only for ``classifier='auto'``."""
    value = params.rf_pretrainedModelFilename
    names = [value] if isinstance(value, str) else list(value)
    if len(names) > 1 and params.classifier != "auto":
        raise ImgClassError(f"rf_pretrainedModelFilename lists {len(names)} backbones: only classifier='auto' "
                            "chooses among several; name one backbone for classifier="
                            f"'{params.classifier}'")
    return names


def training_images(layout: DatasetLayout) -> "TrainingImages":
    """Step 1's training images with their class ids."""
    from imgclass.model.refine import TrainingImages

    rows = [r for r in read_split_rows(layout) if r.split == TRAIN]
    labels = read_labels(layout)
    label_ids = {label: i for i, label in enumerate(labels)}
    return TrainingImages(tuple(layout.images_dir / r.path for r in rows), tuple(label_ids[r.label] for r in rows),
                          tuple(labels))


def build_featurizer(params: Parameters, pretrained: bool = True, progress: bool = True,
                     log: Callable[[str], None] = print) -> BuildReport:
    """Step 2: the network step 3 runs, saved as ``featurizer.pth``.

    ``classifier='svm'``: the pretrained backbone, fixed. ``'dnn'`` and
    ``'svmDnnRefined'``: the backbone refined on the training images (see
    :mod:`imgclass.model.refine`); ``'dnn'`` then outputs class scores, and
    ``'svmDnnRefined'`` the refined penultimate features for the SVM.
    ``'auto'``: every candidate tried on the training set, the best one
    kept (:func:`imgclass.pipeline.select.choose_model`). The network carries
    ``run_tta``. ``params.rf_pretrained=False`` trains from random weights
    (:func:`from_scratch`); ``pretrained=False`` also starts from random
    weights but keeps the recipe (tests, speed benchmarks).
    """
    from imgclass.model.runtime import Runtime

    params = from_scratch(params, log)
    layout = DatasetLayout.from_parameters(params)
    names = backbone_names(params)
    if params.classifier == "auto":
        from imgclass.pipeline.select import choose_model

        choice = choose_model(params, names, pretrained, log)
        choice.featurizer.save(layout.featurizer_pth)
        if choice.chosen.refinement is not None:
            _write_training_log(choice.chosen.refinement.history, layout)
        return BuildReport(layout, choice.featurizer, choice.chosen.refinement, choice)
    config = refine_config(params)
    if params.classifier == "dnn" and config.recipe == "original" and config.max_epochs == 0:
        raise ImgClassError("classifier='dnn' needs refinement: set rf_maxEpochs >= 1")
    runtime = Runtime.resolve(params.run_device, params.run_precision, params.run_workers)
    featurizer, result = make_featurizer(params, names[0], params.classifier, layout, runtime, pretrained, progress,
                                         log)
    featurizer.save(layout.featurizer_pth)
    if result is not None:
        _write_training_log(result.history, layout)
    return BuildReport(layout, featurizer, result)


def make_featurizer(params: Parameters, backbone: str, classifier: str, layout: DatasetLayout, runtime: "Runtime",
                    pretrained: bool = True, progress: bool = False, log: Callable[[str], None] = print,
                    checkpoint: "Path | None" = None) -> tuple["Featurizer", "RefineResult | None"]:
    """The featurizer of ``backbone`` for ``classifier`` ('svm', 'dnn' or 'svmDnnRefined'), refined if needed.

    Refinement resumes from ``checkpoint`` (default: the dataset's
    ``refinement_checkpoint.pth``). With ``params.rf_pretrained=False`` (or
    ``pretrained=False``) no weights file is looked for: the network starts
    from random weights, and with ``rf_pretrained=False`` it is trained from
    scratch by the same :func:`~imgclass.model.refine.refine`.
    """
    import torch

    from imgclass.model.backbones import load_pretrained_extractor
    from imgclass.model.featurizer import Featurizer
    from imgclass.model.refine import refine

    params = from_scratch(params)
    scratch = not params.rf_pretrained
    config = refine_config(params)
    with torch.random.fork_rng(devices=[], enabled=scratch):  # from scratch: the initial weights follow randomSeed
        if scratch:
            torch.manual_seed(params.randomSeed)
        extractor, source = load_pretrained_extractor(backbone, params.rf_inputResolution, params.models_dir,
                                                      pretrained=pretrained and not scratch)
    if scratch:
        log(f"{extractor.backbone_name}: random initialisation (rf_pretrained=False), no pretrained weights loaded")
    no_refinement = config.recipe == "original" and config.max_epochs == 0
    if classifier == "svm" or no_refinement:
        if scratch:
            log("Warning: the network is not trained (classifier 'svm' or rf_maxEpochs=0): the SVM learns from the "
                "features of random weights, a baseline rather than a model; classifier 'dnn' or 'svmDnnRefined' "
                "trains the network from scratch first")
        return Featurizer(extractor, params.rf_resizeMode, source, tta=params.run_tta), None
    images = training_images(layout)
    result = refine(extractor, images, config, checkpoint or layout.refinement_checkpoint, runtime, progress, log)
    model = result.model
    how = f"{config.recipe}, {len(result.fine_tuning_epochs)} epochs, best epoch {result.best_epoch}"
    trained = "trained from scratch" if scratch else "refined"
    featurizer = Featurizer(model.extractor, params.rf_resizeMode, f"{source}, {trained} ({how})", model.head,
                            list(images.labels), "logits" if classifier == "dnn" else "features", params.run_tta,
                            "l2" if model.normalize else "raw")
    return featurizer, result


def _write_training_log(history: list[dict[str, float]], layout: DatasetLayout) -> None:
    from imgclass.evaluation import plots

    write_csv(layout.training_csv, TRAINING_LOG_COLUMNS, ([row[c] for c in TRAINING_LOG_COLUMNS] for row in history))
    plots.plot_training_curves(history, layout.training_png)
