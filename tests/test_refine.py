"""DNN refinement: learning, frozen backbone, resume, balanced sampling, LP-FT's stages, early stopping,
every classifier mode end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.errors import ImgClassError
from imgclass.layout import DatasetLayout
from imgclass.model.backbones import build_feature_extractor
from imgclass.model.refine import (RefineConfig, TrainingImages, fit_linear_probe, make_sampler, refine,
                                   split_validation)
from imgclass.model.transforms import EvalTransform
from imgclass.model.runtime import Runtime
from imgclass.parameters import load_parameters
from imgclass.pipeline import build_featurizer, evaluate, featurize_dataset, prepare_data, train_classifier
from imgclass.pipeline.build import refine_config

from conftest import DEMO_IMAGES, PROJECT_DIR, PYTHON


def _coloured_images(folder: Path, per_class: int = 12) -> TrainingImages:
    """Two easy classes: reddish and bluish noisy squares."""
    rng = np.random.default_rng(0)
    paths, targets = [], []
    for target, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        for i in range(per_class):
            array = np.clip(np.array(colour) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            path = folder / f"c{target}_{i}.png"
            Image.fromarray(array).save(path)
            paths.append(path)
            targets.append(target)
    return TrainingImages(tuple(paths), tuple(targets), ("red", "blue"))


def _config(**changes) -> RefineConfig:
    """A sane recipe for a random ResNet-18 on a learnable problem: batches of 8, a small rate, fp32.

    (A rate of 0.05 on batches of 4 made the training loss jump around by seed and machine.)
    The original recipe unless ``rf_recipe='lpft'`` is passed.
    """
    params = load_parameters(rf_mbSize=8, rf_maxEpochs=3, rf_lrPerMb=[0.002], rf_dropoutRate=0.0,
                             rf_validationFraction=0.0, rf_augColorJitter=0.0, rf_recipe="original")
    return refine_config(params.replace(**changes) if changes else params)


def _run(tmp_path: Path, config: RefineConfig, seed: int = 0, log=lambda message: None):  # type: ignore[no-untyped-def]
    images = _coloured_images(tmp_path)
    torch.manual_seed(seed)
    extractor = build_feature_extractor("resnet18", 32)
    return extractor, refine(extractor, images, config, tmp_path / "checkpoint.pth",
                             Runtime(torch.device("cpu"), torch.float32, 0), log=log)


@pytest.mark.parametrize("seed", [0, 6])
def test_training_loss_goes_down(tmp_path: Path, seed: int) -> None:
    """Over 8 seeds the last epoch's loss was at most 0.25 of the first's: a margin of 2 against noise."""
    _, result = _run(tmp_path, _config(rf_maxEpochs=6, randomSeed=seed), seed)
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    assert result.history[-1]["train_error"] <= 0.25


def test_frozen_backbone_stays_bit_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in build_feature_extractor("resnet18", 32).state_dict().items()}
    _, result = _run(tmp_path, _config(rf_boFreezeWeights=True, rf_maxEpochs=2))
    after = result.model.extractor.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and batch-norm statistics
    torch.manual_seed(0)  # refine() seeds with randomSeed=0 before creating the head
    untrained_head = torch.nn.Linear(512, 2)
    assert not torch.equal(result.model.head.weight, untrained_head.weight)  # while the head did train


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_lpft_trains_the_head_first_with_the_backbone_bit_identical_then_moves_every_layer(tmp_path: Path) -> None:
    images = _coloured_images(tmp_path)
    torch.manual_seed(0)
    extractor = build_feature_extractor("resnet18", 32)
    before = _state(extractor)
    runtime = Runtime(torch.device("cpu"), torch.float32, 0)
    probe = fit_linear_probe(extractor, images, EvalTransform(32), batch_size=8, runtime=runtime, seed=0)
    assert all(torch.equal(before[k], v) for k, v in extractor.state_dict().items())  # stage 1 reads only
    assert probe.train_error <= 0.1 and probe.head.weight.shape == (2, 512)  # the head alone separates them

    messages: list[str] = []
    probe_only = refine(extractor, images, _config(rf_recipe="lpft", rf_ftEpochs=0), tmp_path / "lp.pth", runtime,
                        log=messages.append)
    assert [row["epoch"] for row in probe_only.history] == [0] and probe_only.best_epoch == 0
    assert all(torch.equal(before[k], v) for k, v in probe_only.model.extractor.state_dict().items())
    assert probe_only.history[0]["train_error"] <= 0.1 and messages[0].startswith("linear probe (epoch 0)")

    tuned = refine(extractor, images, _config(rf_recipe="lpft", rf_ftEpochs=2, rf_ftLearningRate=0.05),
                   tmp_path / "lpft.pth", runtime, log=messages.append)
    assert [row["epoch"] for row in tuned.history] == [0, 1, 2] and tuned.best_epoch == 2  # no validation: last
    after = dict(tuned.model.extractor.named_parameters())
    unmoved = [name for name, parameter in extractor.named_parameters() if torch.equal(before[name], after[name])]
    assert not unmoved, f"fine-tuning left these backbone weights untouched: {unmoved}"
    assert not torch.equal(tuned.model.head.weight, probe_only.model.head.weight)  # the head moved on too
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(before[k], tuned.model.extractor.state_dict()[k]) for k in statistics)


def test_lpft_stops_early_when_validation_does_not_improve_and_stays_stopped(tmp_path: Path) -> None:
    """A rate too small to change any weight: the validation result stays the linear probe's exactly.

    Patience 2 would stop after epoch 2; 'lpft' does not stop in the first half of its schedule (3 of 6 epochs).
    """
    config = _config(rf_recipe="lpft", rf_ftEpochs=6, rf_ftLearningRate=1e-30, rf_validationFraction=0.25,
                     rf_earlyStopPatience=2, rf_l2RegWeight=0.0)
    assert config.earliest_stop() == 3
    messages: list[str] = []
    _, result = _run(tmp_path, config, log=messages.append)
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3]  # not 6 epochs, and not 2
    assert result.stopped_early and result.best_epoch == 0
    assert any("stopping early" in m for m in messages)
    assert "refit as the linear probe on all 24 training images with the backbone of epoch 0" in messages[-1]
    _, again = _run(tmp_path, config, log=messages.append)  # re-running step 2 does not train on
    assert [row["epoch"] for row in again.history] == [0, 1, 2, 3] and "stopped early" in messages[-2]
    _, never = _run(tmp_path, _config(rf_recipe="lpft", rf_ftEpochs=2, rf_ftLearningRate=1e-30,
                                      rf_validationFraction=0.25, rf_earlyStopPatience=0, rf_l2RegWeight=0.0))
    assert len(never.fine_tuning_epochs) == 2 and not never.stopped_early


def test_lpft_chooses_the_epoch_by_validation_loss_the_original_by_error() -> None:
    """LP-FT's validation error on a dozen images sits still while the loss moves (BENCHMARKS.md)."""
    lpft, original = _config(rf_recipe="lpft"), _config(rf_recipe="original")
    assert (lpft.best_by, original.best_by) == ("loss", "error")
    probe = {"validation_error": 0.10, "validation_loss": 0.90}
    surer = {"validation_error": 0.15, "validation_loss": 0.50}  # one image more wrong, the rest far surer
    assert lpft.improves(surer, probe) and not original.improves(surer, probe)
    assert original.improves(probe, surer) and not lpft.improves(probe, surer)
    tie = {"validation_error": 0.05, "validation_loss": 0.90}  # equal loss: the error decides
    assert lpft.improves(tie, probe) and not lpft.improves(probe, probe) and lpft.improves(probe, None)
    assert lpft.resume_key()["best_by"] == "loss"  # a checkpoint that chose by error starts afresh
    assert "best_by" not in original.resume_key()  # the original's old checkpoints still resume


@pytest.mark.parametrize("recipe", ["lpft", "original"])
def test_the_best_epoch_is_the_best_validation_result_of_the_run(tmp_path: Path, recipe: str) -> None:
    config = _config(rf_recipe=recipe, rf_ftEpochs=4, rf_maxEpochs=4, rf_ftLearningRate=0.05,
                     rf_validationFraction=0.25, rf_earlyStopPatience=0)
    _, result = _run(tmp_path, config)
    keys = ("validation_loss", "validation_error") if recipe == "lpft" else ("validation_error", "validation_loss")
    best = min(result.history, key=lambda row: tuple(row[k] for k in keys))  # the first of equals
    assert result.best_epoch == best["epoch"] and len(result.fine_tuning_epochs) == 4


def test_lpft_schedule_warms_up_then_decays_to_zero() -> None:
    config = _config(rf_recipe="lpft", rf_ftEpochs=5, rf_ftLearningRate=0.1, rf_warmupEpochs=1.0)
    rates = [config.learning_rate(epoch / 4) for epoch in range(21)]
    assert rates[4] == pytest.approx(0.1) and rates[2] == pytest.approx(0.05)  # linear warm-up over epoch 1
    assert all(a >= b for a, b in zip(rates[4:], rates[5:])) and rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_the_original_recipe_keeps_its_parameters_and_old_checkpoints() -> None:
    params = load_parameters(rf_recipe="original", rf_maxEpochs=7, rf_lrPerMb=[0.01, 0.001], rf_ftEpochs=2,
                             rf_backboneLrFactor=1.0, rf_ftBackboneLrFactor=0.2)
    config = refine_config(params)
    assert config.max_epochs == 7 and config.learning_rate(5) == 0.001 and config.dropout == 0.5
    key = config.resume_key()  # what a checkpoint written before the recipes existed was made with
    assert not {"recipe", "peak_lr", "warmup_epochs", "tta", "early_stop_patience", "max_epochs"} & set(key)
    lpft = refine_config(params.replace(rf_recipe="lpft"))
    assert lpft.max_epochs == 2 and lpft.backbone_lr_factor == 0.2 and lpft.resume_key()["recipe"] == "lpft"


def test_an_interrupted_run_resumes_at_the_next_epoch(tmp_path: Path) -> None:
    config = _config(rf_maxEpochs=3)

    def interrupt_after_epoch_1(message: str) -> None:  # Ctrl-C right after epoch 1 was saved
        if message.lstrip().startswith("epoch   1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, config, log=interrupt_after_epoch_1)
    first_epoch = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["history"][0]
    messages: list[str] = []
    _, result = _run(tmp_path, config, log=messages.append)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    kept = ("train_loss", "train_error", "seconds")  # validation values are NaN here (no validation part)
    assert [result.history[0][k] for k in kept] == [first_epoch[k] for k in kept]  # epoch 1 was not redone
    assert any("Resuming refinement after epoch 1" in m for m in messages)
    assert sum(m.lstrip().startswith("epoch") for m in messages) == 2
    _, longer = _run(tmp_path, _config(rf_maxEpochs=4), log=messages.append)  # more epochs: same run, extended
    assert [row["epoch"] for row in longer.history] == [1, 2, 3, 4] and "after epoch 3" in messages[-2]
    _, again = _run(tmp_path, _config(rf_maxEpochs=3, rf_l2RegWeight=0.001), log=messages.append)
    assert any("another setup" in m for m in messages) and len(again.history) == 3
    (tmp_path / "checkpoint.pth").write_bytes(b"truncated")
    _, fresh = _run(tmp_path, config, log=messages.append)
    assert any("cannot be read" in m for m in messages) and len(fresh.history) == 3


def test_unreadable_training_images_are_left_out_not_fatal(tmp_path: Path) -> None:
    images = _coloured_images(tmp_path, per_class=6)
    images.paths[0].write_bytes(b"broken")
    config = _config(rf_validationFraction=0.3, rf_maxEpochs=1)
    torch.manual_seed(0)
    result = refine(build_feature_extractor("resnet18", 32), images, config, tmp_path / "checkpoint.pth",
                    log=lambda message: None)
    assert np.isfinite(result.history[0]["train_loss"]) and np.isfinite(result.history[0]["validation_loss"])


def test_balanced_sampling_draws_classes_evenly() -> None:
    targets = [0] * 90 + [1] * 10
    drawn = Counter(targets[i] for i in make_sampler(targets, True, 2000, seed=0))
    assert abs(drawn[1] / 2000 - 0.5) < 0.05
    assert make_sampler(targets, False, 0, 0) is None
    assert len(list(make_sampler(targets, False, 30, 0))) == 30


def test_validation_is_held_out_per_class_from_training() -> None:
    targets = [0] * 20 + [1] * 5 + [2] * 2
    train, validation = split_validation(targets, 0.1, seed=0)
    assert not set(train) & set(validation) and sorted(train + validation) == list(range(27))
    assert Counter(targets[i] for i in validation) == {0: 2, 1: 1}
    assert split_validation(targets, 0.0, 0)[1] == []


def test_bad_refinement_setups_fail_before_any_work(tmp_path: Path) -> None:
    params = load_parameters(rootDir=str(tmp_path), classifier="dnn", rf_maxEpochs=0, rf_recipe="original")
    with pytest.raises(ImgClassError, match="rf_maxEpochs >= 1"):
        build_featurizer(params, pretrained=False)
    with pytest.raises(ImgClassError, match="only classifier='auto'"):
        build_featurizer(params.replace(rf_pretrainedModelFilename=["resnet18", "resnet34"]), pretrained=False)


def _toy_dataset(root: Path, datasetName: str = "toy") -> DatasetLayout:
    layout = DatasetLayout(root, datasetName)
    for label in ("birds", "fish", "fruit"):
        (layout.images_dir / label).mkdir(parents=True)
        for source in sorted((DEMO_IMAGES / label).glob("*.jpg"))[:6]:
            shutil.copy(source, layout.images_dir / label / source.name)
    return layout


@pytest.mark.parametrize("classifier", ["svm", "dnn", "svmDnnRefined"])
def test_each_classifier_mode_runs_steps_2_to_5(tmp_path: Path, classifier: str) -> None:
    layout = _toy_dataset(tmp_path)
    params = load_parameters(rootDir=str(tmp_path), datasetName="toy", classifier=classifier,
                             rf_pretrainedModelFilename="resnet18", rf_inputResolution=32, rf_ftEpochs=2,
                             rf_mbSize=4, svm_CVals=[0.1, 1.0], svm_cvFolds=2, run_workers=0)
    prepare_data(params)
    built = build_featurizer(params, pretrained=False, progress=False, log=lambda m: None)
    assert (built.refinement is None) == (classifier == "svm")
    assert built.featurizer.head_input == ("raw" if classifier == "svm" else "l2")  # LP-FT's head reads unit length
    report = featurize_dataset(params, progress=False)
    assert report.feature_dim == (3 if classifier == "dnn" else 512)
    trained = train_classifier(params)
    assert (trained.model is None) == (classifier == "dnn")
    assert ("no SVM to train" in trained.summary()) == (classifier == "dnn")
    metrics = evaluate(params).metrics
    assert 0 <= metrics["overall_accuracy"] <= 1 and metrics["classifier"] == classifier
    if classifier != "svm":
        assert layout.training_png.is_file()
        assert layout.training_csv.read_text().startswith("epoch,learning_rate,train_loss")


def test_dnn_scripts_end_to_end_with_pretrained_lite0(tmp_path: Path) -> None:
    _toy_dataset(tmp_path)
    args = [f"--rootDir={tmp_path}", "--datasetName=toy", "--classifier=dnn", "--rf_ftEpochs=2",
            "--rf_inputResolution=64", "--rf_mbSize=8",
            "--rf_pretrainedModelFilename=efficientnet_lite0"]
    for script in ["1_prepareData.py", "2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py", "5_evaluate.py"]:
        result = subprocess.run([PYTHON, f"scripts/{script}", *args], cwd=PROJECT_DIR, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"{script}:\n{result.stdout}\n{result.stderr}"
    metrics = json.loads((tmp_path / "results" / "toy" / "metrics.json").read_text())
    assert metrics["classifier"] == "dnn" and metrics["C"] is None
    result = subprocess.run([PYTHON, "scripts/4_trainSVM.py", *args[:2], "--classifier=svm"], cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "re-run scripts 2 and 3" in result.stderr
