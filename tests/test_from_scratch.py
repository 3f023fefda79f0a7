"""Training from scratch (``rf_pretrained=False``, issue 17): random weights really are random, ``smallcnn``
learns end to end, and the from-scratch path is refinement's own loop (checkpoints, curves, resume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgclass.model.backbones as backbones
import imgclass.model.refine as refine_module
from imgclass.errors import ParameterError, WeightsNotFoundError
from imgclass.layout import DatasetLayout
from imgclass.model.backbones import load_pretrained_extractor
from imgclass.model.featurizer import Featurizer
from imgclass.model.predictor import Predictor
from imgclass.parameters import Parameters, load_parameters
from imgclass.pipeline import build_featurizer, evaluate, featurize_dataset, prepare_data, train_classifier
from imgclass.pipeline.build import STEP, from_scratch, refine_config

COLOURS = {"blue": (40, 40, 200), "red": (200, 40, 40)}


def _make_images(images_dir: Path, per_class: int = 16) -> None:
    """Two learnable classes: reddish and bluish noisy squares with a random bright blob."""
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (images_dir / label).mkdir(parents=True)
        for i in range(per_class):
            array = np.clip(np.array(colour) + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
            y, x = rng.integers(0, 16, 2)
            array[y:y + 8, x:x + 8] = rng.integers(150, 255, 3)
            Image.fromarray(array).save(images_dir / label / f"{label}_{i:02d}.png")


def _parameters(root: Path, **overrides: object) -> Parameters:
    values = dict(rootDir=str(root), datasetName="toy", classifier="dnn", rf_pretrained=False,
                  rf_pretrainedModelFilename="smallcnn", rf_inputResolution=32, rf_maxEpochs=6, rf_mbSize=8,
                  rf_optimizer="adam", rf_lrPerMb=[0.01], rf_earlyStopPatience=0, rf_validationFraction=0.2,
                  svm_CVals=[0.1, 1.0], svm_cvFolds=2, run_workers=0)
    values.update(overrides)
    return load_parameters(project_dir=root, **values)  # models_dir: <root>/resources/models, which is absent


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    _make_images(DatasetLayout(tmp_path, "toy").images_dir)
    return tmp_path


def _weights(featurizer: Featurizer) -> torch.Tensor:
    return torch.cat([t.flatten().float() for t in featurizer.extractor.state_dict().values()])


def test_from_scratch_opens_no_weights_file_and_says_so(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("a weights file was looked for or opened")

    monkeypatch.setattr(backbones, "resolve_weights_file", no_weights)
    monkeypatch.setattr(backbones, "load_state_dict_file", no_weights)
    # A weights file that does not exist and an empty models folder: pretrained=True would fail on both.
    missing = str(toy / "resources" / "models" / "efficientnet_lite0-missing.pth")
    params = _parameters(toy, classifier="svm", rf_pretrainedModelFilename=missing, rf_inputResolution=32)
    prepare_data(params)
    messages: list[str] = []
    first = build_featurizer(params, progress=False, log=messages.append).featurizer
    assert first.source == "random initialisation"
    assert any("random initialisation (rf_pretrained=False)" in m for m in messages), messages
    assert any("random weights" in m for m in messages), messages  # svm on untrained features: warned
    again = build_featurizer(params, progress=False, log=lambda m: None).featurizer
    other_seed = build_featurizer(params.replace(randomSeed=1), progress=False, log=lambda m: None).featurizer
    assert torch.equal(_weights(first), _weights(again))  # seeded by randomSeed: reproducible
    assert not torch.equal(_weights(first), _weights(other_seed))
    monkeypatch.undo()
    pretrained, _ = load_pretrained_extractor("efficientnet_lite0", 32, toy / "resources" / "models")  # ships with pip
    assert not torch.equal(_weights(first), torch.cat([t.flatten().float() for t in pretrained.state_dict().values()]))


def test_from_scratch_switches_lpft_to_the_original_recipe(tmp_path: Path) -> None:
    params = _parameters(tmp_path, rf_recipe="lpft")
    messages: list[str] = []
    switched = from_scratch(params, messages.append)
    assert refine_config(switched).recipe == "original" and refine_config(switched).optimizer == "adam"
    assert "rf_recipe='original'" in messages[0]
    assert from_scratch(params.replace(rf_pretrained=True)).rf_recipe == "lpft"
    assert {"rf_pretrained", "rf_optimizer"} <= set(STEP.reads)


def test_smallcnn_has_no_weights_and_checks_its_resolution(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="rf_pretrained=False"):
        load_pretrained_extractor("smallcnn", 64, tmp_path)
    with pytest.raises(ParameterError, match="at least 16 px"):
        load_pretrained_extractor("smallcnn", 8, tmp_path, pretrained=False)
    extractor, source = load_pretrained_extractor("smallcnn", 40, tmp_path, pretrained=False)
    assert source == "random initialisation"
    assert extractor(torch.zeros(2, 3, 40, 40, dtype=torch.uint8)).shape == (2, extractor.feature_dim)
    with pytest.raises(ParameterError, match="rf_optimizer"):
        load_parameters(rf_optimizer="rmsprop")


def test_smallcnn_learns_from_scratch_through_steps_1_to_5(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    epochs_trained: list[int] = []
    real_epoch = refine_module.train_one_epoch

    def counted(*args: object, **kwargs: object) -> tuple[float, float]:
        epochs_trained.append(1)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(refine_module, "train_one_epoch", counted)  # refine()'s own epoch function, still run
    params = _parameters(toy)
    layout = DatasetLayout.from_parameters(params)
    prepare_data(params)
    messages: list[str] = []
    built = build_featurizer(params, progress=False, log=messages.append)
    assert len(epochs_trained) == 6  # every epoch went through refinement's loop
    assert built.featurizer.source.startswith("random initialisation, trained from scratch (original, 6 epochs")
    assert "Trained from scratch 6 epochs" in built.summary()
    assert layout.refinement_checkpoint.is_file() and layout.training_png.is_file()
    assert len(layout.training_csv.read_text().splitlines()) == 1 + 6
    loaded = Featurizer.load(layout.featurizer_pth)  # as serving, batch scoring, Spark and MLflow load it
    assert loaded.extractor.backbone_name == "smallcnn" and loaded.output == "logits"
    predictor = Predictor.load(layout.featurizer_pth)  # what serving and batch scoring run
    red = Image.fromarray(np.full((24, 24, 3), COLOURS["red"], dtype=np.uint8))
    assert predictor.model_name == "smallcnn-dnn" and predictor.predict([red]).probabilities.shape == (1, 2)
    featurize_dataset(params, progress=False)
    train_classifier(params)
    accuracy = evaluate(params).metrics["overall_accuracy"]
    assert accuracy >= 0.75, accuracy  # two classes: chance is 0.5

    # Resume: more epochs continue after the last one written (the original recipe can be extended).
    messages.clear()
    epochs_trained.clear()
    extended = build_featurizer(params.replace(rf_maxEpochs=8), progress=False, log=messages.append)
    assert any("Resuming refinement after epoch 6" in m for m in messages), messages
    assert len(epochs_trained) == 2 and len(extended.refinement.fine_tuning_epochs) == 8


def test_svm_on_a_network_trained_from_scratch(toy: Path) -> None:
    params = _parameters(toy, classifier="svmDnnRefined", rf_maxEpochs=3)
    prepare_data(params)
    built = build_featurizer(params, progress=False, log=lambda m: None)
    assert built.featurizer.output == "features" and built.featurizer.output_dim == 256
    assert featurize_dataset(params, progress=False).feature_dim == 256
    train_classifier(params)
    assert 0 <= evaluate(params).metrics["overall_accuracy"] <= 1


def test_auto_trains_its_candidates_from_scratch(toy: Path) -> None:
    params = _parameters(toy, classifier="auto", rf_maxEpochs=2, auto_classifiers=["dnn", "svmDnnRefined"])
    prepare_data(params)
    messages: list[str] = []
    report = build_featurizer(params, progress=False, log=messages.append)
    assert report.choice is not None and report.choice.chosen.classifier in ("dnn", "svmDnnRefined")
    assert "trained from scratch (original, 2 epochs" in report.featurizer.source
    assert any("random initialisation (rf_pretrained=False)" in m for m in messages)
