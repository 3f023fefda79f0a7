"""``classifier='auto'``: candidates scored on the training set's validation part; the test images never opened."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imgclass.data.splits import TEST
from imgclass.errors import ImgClassError, MissingArtifactError
from imgclass.layout import DatasetLayout
from imgclass.model.dataset import ImageDataset
from imgclass.parameters import load_parameters
from imgclass.pipeline import build_featurizer, evaluate, featurize_dataset, prepare_data, train_classifier
from imgclass.pipeline.artifacts import read_split_rows
from imgclass.pipeline.select import choice_json, effective_classifier

from conftest import DEMO_IMAGES


def _toy(root: Path) -> DatasetLayout:
    layout = DatasetLayout(root, "toy")
    for label in ("birds", "fish", "fruit"):
        (layout.images_dir / label).mkdir(parents=True)
        for source in sorted((DEMO_IMAGES / label).glob("*.jpg"))[:8]:
            shutil.copy(source, layout.images_dir / label / source.name)
    return layout


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetLayout, object, set[Path], list[str]]:
    """Steps 1-2 with classifier='auto' over two backbones, noting every image file opened."""
    root = tmp_path_factory.mktemp("auto")
    layout = _toy(root)
    params = load_parameters(rootDir=str(root), datasetName="toy", classifier="auto",
                             rf_pretrainedModelFilename=["resnet18", "resnet34"], auto_classifiers=["svm", "dnn"],
                             rf_inputResolution=32, rf_ftEpochs=1, rf_mbSize=4, rf_validationFraction=0.3,
                             svm_CVals=[0.1, 1.0], svm_cvFolds=2, svm_nJobs=1, run_workers=0, run_device="cpu",
                             run_precision="fp32")
    prepare_data(params)
    opened: set[Path] = set()
    load = ImageDataset.load

    def recording_load(self: ImageDataset, index: int, out):  # type: ignore[no-untyped-def]
        opened.add(Path(self.paths[index]))
        return load(self, index, out)

    messages: list[str] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(ImageDataset, "load", recording_load)
        report = build_featurizer(params, pretrained=False, progress=False, log=messages.append)
    return layout, (params, report), opened, messages


def test_auto_never_opens_a_test_image(auto_run) -> None:  # type: ignore[no-untyped-def]
    layout, _, opened, _ = auto_run
    test_images = {layout.images_dir / row.path for row in read_split_rows(layout) if row.split == TEST}
    assert test_images and opened  # there is a test set, and images were read
    assert not opened & test_images


def test_auto_scores_every_candidate_and_records_the_choice(auto_run) -> None:  # type: ignore[no-untyped-def]
    layout, (params, report), _, _ = auto_run
    choice = report.choice
    assert [(c.backbone, c.classifier) for c in choice.candidates] == [
        ("resnet18", "svm"), ("resnet18", "dnn"), ("resnet34", "svm"), ("resnet34", "dnn")]
    for dnn in (c for c in choice.candidates if c.classifier == "dnn"):  # scored before its head saw that part
        assert dnn.validation_accuracy == pytest.approx(1 - dnn.refinement.best["validation_error"])
    best = max(c.validation_accuracy for c in choice.candidates)
    assert choice.chosen.validation_accuracy == best
    assert choice.chosen is next(c for c in choice.candidates if c.validation_accuracy == best)  # ties: tried first
    record = json.loads(choice_json(layout).read_text())
    assert record["classifier"] == choice.chosen.classifier and len(record["candidates"]) == 4
    assert effective_classifier(params) == choice.chosen.classifier
    expected_output = "logits" if choice.chosen.classifier == "dnn" else "features"
    assert report.featurizer.output == expected_output and layout.featurizer_pth.is_file()
    table = report.summary()
    assert "val acc" in table and "<- chosen" in table and "the test set is not used" in table


def test_effective_classifier_without_a_choice_says_to_run_step_2(tmp_path: Path) -> None:
    params = load_parameters(rootDir=str(tmp_path), classifier="auto")
    with pytest.raises(MissingArtifactError, match="2_refineDNN"):
        effective_classifier(params)
    assert effective_classifier(params.replace(classifier="svmDnnRefined")) == "svmDnnRefined"


def test_auto_needs_a_validation_part(tmp_path: Path) -> None:
    _toy(tmp_path)
    params = load_parameters(rootDir=str(tmp_path), datasetName="toy", classifier="auto", rf_validationFraction=0.0,
                             rf_pretrainedModelFilename="resnet18", rf_inputResolution=32)
    prepare_data(params)
    with pytest.raises(ImgClassError, match="rf_validationFraction > 0"):
        build_featurizer(params, pretrained=False, log=lambda m: None)


@pytest.mark.parametrize("modes", [["dnn"], ["svm"]])
def test_steps_3_to_5_follow_the_mode_auto_chose(tmp_path: Path, modes: list[str]) -> None:
    """With classifier='auto' steps 3-5 use the chosen mode: logits for 'dnn' (no SVM), features and an SVM else."""
    layout = _toy(tmp_path)
    params = load_parameters(rootDir=str(tmp_path), datasetName="toy", classifier="auto",
                             rf_pretrainedModelFilename="resnet18", auto_classifiers=modes, rf_inputResolution=32,
                             rf_ftEpochs=1, rf_mbSize=4, rf_validationFraction=0.3, svm_CVals=[0.1, 1.0],
                             svm_cvFolds=2, svm_nJobs=1, run_workers=0, run_device="cpu", run_precision="fp32")
    prepare_data(params)
    build_featurizer(params, pretrained=False, progress=False, log=lambda m: None)
    featurize_dataset(params, progress=False)
    trained = train_classifier(params)
    report = evaluate(params)
    metrics = json.loads(layout.metrics_json.read_text())
    assert metrics["classifier"] == modes[0]
    assert json.loads(layout.features_json.read_text())["classifier"] == modes[0]
    assert (trained.model is None) == (modes[0] == "dnn")
    assert report.metrics["classifier"] == modes[0] and 0.0 <= report.metrics["overall_accuracy"] <= 1.0
