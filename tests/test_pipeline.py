"""End to end: scripts 0-5 on the demo data with the real EfficientNet-Lite0 weights, and the
pipeline's handling of unreadable images and stale artifacts."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclass.errors import MissingArtifactError
from imgclass.layout import DatasetLayout
from imgclass.parameters import load_parameters
from imgclass.pipeline import build_featurizer, evaluate, featurize_dataset, prepare_data, train_classifier

from conftest import PROJECT_DIR, PYTHON, make_dataset

SCRIPTS = ["0_downloadData.py", "1_prepareData.py", "2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py",
           "5_evaluate.py"]


def test_scripts_0_to_5_on_the_demo_data(tmp_path: Path) -> None:
    args = [f"--rootDir={tmp_path}", "--rf_pretrainedModelFilename=efficientnet_lite0"]
    outputs = {}
    for script in SCRIPTS:
        result = subprocess.run([PYTHON, f"scripts/{script}", *args], cwd=PROJECT_DIR, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
        outputs[script] = result.stdout
    layout = DatasetLayout(tmp_path, "tuxpaintStamps")
    assert "179 images" in outputs["3_runDNN.py"] and "1280 floats" in outputs["3_runDNN.py"]
    assert "Chosen C" in outputs["4_trainSVM.py"]
    metrics = json.loads(layout.metrics_json.read_text())
    assert metrics["overall_accuracy"] >= 0.80, metrics
    assert {"overall_accuracy", "class_averaged_accuracy", "per_class_accuracy", "auc_macro"} <= set(metrics)
    assert f"{metrics['overall_accuracy']:.3f}" in outputs["5_evaluate.py"]
    assert np.load(layout.features_npy).shape == (179, 1280)
    for name in ["roc_curves.png", "confusion_matrix.png", "per_class_accuracy.png", "examples.png"]:
        with Image.open(layout.results_dir / name) as image:
            assert image.size[0] > 200
    with open(layout.predictions_csv, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == metrics["n_test_images"] == 46
    svm_info = json.loads(layout.svm_json.read_text())
    assert svm_info["featurizer"]["backbone"] == "efficientnet_lite0" and len(svm_info["labels"]) == 6


def test_unreadable_images_are_reported_and_skipped(tmp_path: Path) -> None:
    params = load_parameters(rootDir=str(tmp_path), datasetName="toy", rf_pretrainedModelFilename="resnet18",
                             rf_inputResolution=32, svm_CVals=[0.1, 1.0], svm_cvFolds=2, run_workers=0)
    layout = DatasetLayout.from_parameters(params)
    make_dataset(layout.images_dir, {"a": 6, "b": 6}, size=(40, 30))
    for name in ("a/img_01.jpg", "b/img_02.jpg"):
        (layout.images_dir / name).write_bytes(b"not a jpeg")
    original = {p: p.read_bytes() for p in layout.images_dir.rglob("*.jpg")}
    prepare_data(params)
    build_featurizer(params, pretrained=False)
    report = featurize_dataset(params, progress=False)
    assert sorted(path for path, _ in report.failures) == ["a/img_01.jpg", "b/img_02.jpg"]
    summary = report.summary().splitlines()
    assert summary[0].startswith("Featurized 12 images -> 512 floats each") and "0 worker processes" in summary[0]
    assert summary[1] == "2 image(s) could not be read and are left out:"
    assert summary[2].startswith("  a/img_01.jpg: cannot decode") and summary[-1].endswith("(+ .csv, .json; 12 images)")
    with open(layout.features_csv, newline="") as handle:
        assert sum(row["ok"] == "0" for row in csv.DictReader(handle)) == 2
    trained = train_classifier(params).summary().splitlines()
    assert trained[0].split() == ["C", "CV", "acc", "train", "acc", "test", "acc", "time", "(s)"]
    assert sum(line.endswith("<- chosen") for line in trained) == 1 and trained[-2].startswith("Chosen C = ")
    result = evaluate(params)
    assert f"Overall accuracy:        {result.metrics['overall_accuracy']:.3f}" in result.summary()
    with open(layout.split_csv, newline="") as handle:
        readable_test = [r for r in csv.DictReader(handle)
                         if r["split"] == "test" and r["path"] not in ("a/img_01.jpg", "b/img_02.jpg")]
    assert result.metrics["n_test_images"] == len(readable_test) > 0
    assert {p: p.read_bytes() for p in layout.images_dir.rglob("*.jpg")} == original  # user images untouched


def test_steps_out_of_order_say_what_to_run(tmp_path: Path) -> None:
    params = load_parameters(rootDir=str(tmp_path), datasetName="toy")
    make_dataset(DatasetLayout.from_parameters(params).images_dir, {"a": 2, "b": 2}, size=(16, 16))
    with pytest.raises(MissingArtifactError, match="1_prepareData"):
        featurize_dataset(params)
    prepare_data(params)
    with pytest.raises(MissingArtifactError, match="2_refineDNN"):
        featurize_dataset(params)
    with pytest.raises(MissingArtifactError, match="3_runDNN"):
        train_classifier(params)


def test_step_1_warns_about_near_duplicates_across_train_and_test(tmp_path: Path) -> None:
    images = tmp_path / "images" / "dups"
    make_dataset(images, {"a": 8, "b": 8}, size=(160, 120))
    for i in range(8):  # a resized, recompressed copy of every 'a' image: some pairs must straddle the split
        with Image.open(images / "a" / f"img_{i:02d}.jpg") as original:
            original.resize((120, 90)).save(images / "a" / f"copy_{i:02d}.jpg", quality=60)
    params = load_parameters(rootDir=str(tmp_path), datasetName="dups")
    report = prepare_data(params)
    assert report.straddling_duplicates
    split_of = {r.path: r.split for r in report.rows}
    for pair in report.straddling_duplicates:
        assert split_of[pair.train_path] == "train" and split_of[pair.test_path] == "test"
        assert {pair.train_path[-6:], pair.test_path[-6:]} == {pair.train_path[-6:]}  # same image number
    result = subprocess.run([PYTHON, "scripts/1_prepareData.py", f"--rootDir={tmp_path}", "--datasetName=dups"],
                            cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "WARNING" in result.stdout and "straddle train and test" in result.stdout
