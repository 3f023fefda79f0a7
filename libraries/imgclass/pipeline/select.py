"""``classifier = 'auto'``: choose the classifier mode and the backbone on the training set alone.

Every candidate (each backbone in ``rf_pretrainedModelFilename`` with each mode
in ``auto_classifiers``) is scored the same way: trained on the training images
less the validation part (``rf_validationFraction``, stratified, the part
refinement holds out anyway), then its accuracy on that validation part.

- ``svm``: the pretrained features, C by cross-validation on the rest, as step 4;
- ``dnn``: the refined network's accuracy on the validation part at its best
  epoch, as refinement measured it before the final head was refit on all
  training images (``'lpft'``); the epoch was chosen on the same part, so the
  score is slightly optimistic, as the SVM's cross-validated accuracy of the
  C it chose would be;
- ``svmDnnRefined``: the SVM on the features of that same refined network.

Ties go to the candidate tried first (backbones in the order given; ``svm``,
then ``dnn``, then ``svmDnnRefined``): the cheaper one. The test images are
never opened: step 5 uses them once, at the end, for the chosen model. The
choice is printed as a table (score and seconds of every candidate) and
recorded in ``proc/<ds>/model_choice.json``; steps 3-5 follow it through
:func:`effective_classifier`.

With a validation part of a few dozen images the scores move in steps of a
few points: the choice is only as good as that part is large.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from imgclass.errors import ImgClassError, MissingArtifactError
from imgclass.io.atomic import write_json
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters

if TYPE_CHECKING:
    from imgclass.model.featurizer import Featurizer
    from imgclass.model.refine import RefineResult, TrainingImages
    from imgclass.model.runtime import Runtime

#: The record of the choice, beside the model files.
CHOICE_FILE_NAME = "model_choice.json"
CHOICE_FORMAT = "imgclass-model-choice-1"


def choice_json(layout: DatasetLayout) -> Path:
    """``proc/<ds>/model_choice.json``: the candidates of ``classifier='auto'``, their scores, the one chosen."""
    return layout.proc_dir / CHOICE_FILE_NAME


@dataclass
class Candidate:
    """One backbone + classifier mode, with its validation accuracy and the seconds it took."""

    backbone: str
    classifier: str
    validation_accuracy: float
    seconds: float
    featurizer: "Featurizer" = field(repr=False)
    refinement: "RefineResult | None" = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "classifier": self.classifier,
                "validation_accuracy": self.validation_accuracy, "seconds": round(self.seconds, 2)}


@dataclass
class ModelChoice:
    """The candidates in the order tried, the chosen one, and the size of the validation part."""

    candidates: list[Candidate]
    chosen: Candidate
    n_validation: int
    n_fit: int

    @property
    def featurizer(self) -> "Featurizer":
        return self.chosen.featurizer

    def table(self) -> str:
        """The candidates with their scores and times, the chosen one marked."""
        width = max(len("backbone"), *(len(c.backbone) for c in self.candidates))
        lines = [f"classifier='auto': {len(self.candidates)} candidates, trained on {self.n_fit} training images, "
                 f"scored on the other {self.n_validation} (the validation part; the test set is not used)",
                 f"{'backbone':<{width}s} {'classifier':<14s} {'val acc':>8s} {'time (s)':>9s}"]
        for c in self.candidates:
            mark = "  <- chosen" if c is self.chosen else ""
            lines.append(f"{c.backbone:<{width}s} {c.classifier:<14s} {c.validation_accuracy:8.3f} "
                         f"{c.seconds:9.1f}{mark}")
        return "\n".join(lines)

    def record(self) -> dict[str, Any]:
        """What :data:`CHOICE_FILE_NAME` holds."""
        return {"format": CHOICE_FORMAT, "classifier": self.chosen.classifier, "backbone": self.chosen.backbone,
                "n_fit": self.n_fit, "n_validation": self.n_validation,
                "candidates": [c.record() for c in self.candidates]}


def effective_classifier(params: Parameters) -> str:
    """The classifier mode steps 3-5 use: ``params.classifier``, or for ``'auto'`` the one step 2 chose."""
    if params.classifier != "auto":
        return params.classifier
    path = choice_json(DatasetLayout.from_parameters(params))
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        classifier = record["classifier"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MissingArtifactError(f"classifier='auto' but {path} cannot be read ({type(exc).__name__}): "
                                   "run scripts/2_refineDNN.py first") from exc
    if record.get("format") != CHOICE_FORMAT or classifier not in ("svm", "dnn", "svmDnnRefined"):
        raise MissingArtifactError(f"{path} is not a model choice of this version: re-run scripts/2_refineDNN.py")
    return classifier


def _svm_accuracy(params: Parameters, featurizer: "Featurizer", fit: "TrainingImages", held: "TrainingImages",
                  runtime: "Runtime") -> float:
    """Accuracy on ``held`` of the SVM (C by CV, as step 4) trained on ``fit``'s features."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning

    from imgclass.model.dataset import ImageDataset
    from imgclass.model.inference import readable_outputs
    from imgclass.model.svm import effective_folds, make_svm, select_C

    def outputs(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
        return readable_outputs(featurizer.network, ImageDataset(paths, featurizer.transform), featurizer.output_dim,
                                params.run_mbSize, runtime)

    X_fit, i_fit = outputs(fit.paths)
    X_held, i_held = outputs(held.paths)
    y_fit, y_held = np.asarray(fit.targets)[i_fit], np.asarray(held.targets)[i_held]
    if len(np.unique(y_fit)) < 2 or not len(y_held):
        return float("nan")
    search = select_C(X_fit, y_fit, params.svm_CVals, effective_folds(y_fit, params.svm_cvFolds),
                      params.svm_boL2Normalize, params.randomSeed, params.svm_nJobs)
    with warnings.catch_warnings():  # as step 4: a C that does not converge is simply scored lower
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_svm(search.best_C, params.svm_boL2Normalize, params.randomSeed).fit(X_fit, y_fit)
    return float((model.predict(X_held) == y_held).mean())


def choose_model(params: Parameters, backbones: Sequence[str], pretrained: bool = True,
                 log: Callable[[str], None] = print) -> ModelChoice:
    """Try every backbone x ``auto_classifiers``; score each on the validation part; record the best.

    Reads only step 1's training images. Each backbone is refined once
    (``rf_recipe``), for ``dnn`` and ``svmDnnRefined`` alike, with its own
    checkpoint (``refinement_checkpoint_auto<i>.pth``), so an interrupted
    choice resumes.
    """
    import dataclasses

    from imgclass.model.refine import split_validation
    from imgclass.model.runtime import Runtime
    from imgclass.pipeline.build import make_featurizer, training_images

    layout = DatasetLayout.from_parameters(params)
    images = training_images(layout)
    fit_idx, held_idx = split_validation(images.targets, params.rf_validationFraction, params.randomSeed)
    if not held_idx:
        raise ImgClassError("classifier='auto' scores the candidates on the validation part of the training set: "
                            "set rf_validationFraction > 0 (e.g. 0.2)")
    fit, held = images.subset(fit_idx), images.subset(held_idx)
    runtime = Runtime.resolve(params.run_device, params.run_precision, params.run_workers)
    modes = list(params.auto_classifiers)
    candidates: list[Candidate] = []
    for number, backbone in enumerate(backbones):
        if "svm" in modes:
            started = time.perf_counter()
            featurizer, _ = make_featurizer(params, backbone, "svm", layout, runtime, pretrained, log=log)
            accuracy = _svm_accuracy(params, featurizer, fit, held, runtime)
            candidates.append(Candidate(backbone, "svm", accuracy, time.perf_counter() - started, featurizer))
        if not {"dnn", "svmDnnRefined"} & set(modes):
            continue
        started = time.perf_counter()
        checkpoint = layout.refinement_checkpoint.with_name(f"refinement_checkpoint_auto{number}.pth")
        dnn, result = make_featurizer(params, backbone, "dnn", layout, runtime, pretrained, log=log,
                                      checkpoint=checkpoint)
        refine_seconds = time.perf_counter() - started
        if "dnn" in modes:
            # Not the final network on the held part: 'lpft' refits its head on all training images at the end.
            accuracy = 1.0 - result.best["validation_error"] if result is not None else float("nan")
            candidates.append(Candidate(backbone, "dnn", accuracy, time.perf_counter() - started, dnn, result))
        if "svmDnnRefined" in modes:
            started = time.perf_counter()
            features = dataclasses.replace(dnn, output="features")
            accuracy = _svm_accuracy(params, features, fit, held, runtime)
            candidates.append(Candidate(backbone, "svmDnnRefined", accuracy,
                                        refine_seconds + time.perf_counter() - started, features, result))
    scored = [c for c in candidates if c.validation_accuracy == c.validation_accuracy]  # not NaN
    if not scored:
        raise ImgClassError("classifier='auto': no candidate could be scored (no readable validation images?)")
    chosen = max(scored, key=lambda c: c.validation_accuracy)  # the first of equals: tried first, cheaper
    choice = ModelChoice(candidates, chosen, len(held.paths), len(fit.paths))
    write_json(choice_json(layout), choice.record())
    return choice
