"""Saved models keep loading: a featurizer.pth and svm.joblib written by the flat-package imgclass (before
the sub-packages) load and give the numbers they gave then.

The fixture (tests/fixtures/legacy_models_v1, see its make_fixture.py) holds the old files and the
features, SVM scores and probabilities the old code computed for three probe images.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.layout import DatasetLayout
from imgclass.model.dataset import ImageDataset
from imgclass.model.featurizer import Featurizer
from imgclass.model.inference import infer
from imgclass.model.svm import load_svm
from imgclass.serve.predictor import load_predictor

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "legacy_models_v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
PROBES = [FIXTURE / f"probe_{i}.png" for i in range(3)]


@pytest.fixture(scope="module")
def legacy_layout(tmp_path_factory: pytest.TempPathFactory) -> DatasetLayout:
    """A dataset folder holding the old step-2 and step-4 files (and no svm.json: old ones need none)."""
    layout = DatasetLayout(tmp_path_factory.mktemp("legacy"), "old")
    layout.proc_dir.mkdir(parents=True)
    with gzip.open(FIXTURE / "featurizer.pth.gz", "rb") as src, open(layout.featurizer_pth, "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(FIXTURE / "svm.joblib", layout.svm_joblib)
    return layout


def test_the_old_featurizer_gives_the_same_features(legacy_layout: DatasetLayout) -> None:
    featurizer = Featurizer.load(legacy_layout.featurizer_pth)
    assert (featurizer.extractor.backbone_name, featurizer.extractor.resolution) == ("efficientnet_lite0", 64)
    assert featurizer.resize_mode == "pad" and featurizer.output == "features"
    expected = np.array(EXPECTED["features"], dtype=np.float32)
    loop = np.concatenate([b.outputs for b in infer(featurizer.network, ImageDataset(PROBES, featurizer.transform))])
    np.testing.assert_allclose(loop, expected, rtol=1e-5, atol=1e-5)
    images = torch.stack([torch.from_numpy(featurizer.transform.to_array(Image.open(p))).permute(2, 0, 1)
                          for p in PROBES]).contiguous()  # the old code's input: a contiguous NCHW batch
    with torch.inference_mode():
        np.testing.assert_allclose(featurizer.network(images).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_the_old_svm_gives_the_same_scores_and_probabilities(legacy_layout: DatasetLayout) -> None:
    model = load_svm(legacy_layout.svm_joblib, legacy_layout.svm_json)
    assert model.classes_.tolist() == EXPECTED["labels"] and model.C == EXPECTED["C"]
    features = np.array(EXPECTED["features"], dtype=np.float32)
    scores, proba = model.decision_function(features), model.predict_proba(features)
    np.testing.assert_allclose(scores, EXPECTED["decision_scores"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(proba, EXPECTED["probabilities"], rtol=1e-6, atol=1e-9)
    assert model.predict(features).tolist() == [EXPECTED["labels"][i] for i in np.argmax(scores, axis=1)]
    assert "imgclass.svm" not in sys.modules  # the stand-in lived only while loading


def test_the_old_model_serves_images_and_files_as_before(legacy_layout: DatasetLayout) -> None:
    predictor = load_predictor(legacy_layout, "cpu", "fp32")
    assert predictor.labels == EXPECTED["labels"] and predictor.model_name == "old-efficientnet_lite0-svm"
    expected_scores = np.array(EXPECTED["decision_scores"])
    from_images = predictor.predict([Image.open(p) for p in PROBES])
    np.testing.assert_allclose(from_images.scores, expected_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_images.probabilities, EXPECTED["probabilities"], rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.argmax(from_images.scores, 1), np.argmax(expected_scores, 1))
    batches = list(predictor.predict_files(PROBES, batch_size=2))
    assert [len(b.paths) for b in batches] == [2, 1] and not any(b.failures for b in batches)
    from_files = np.concatenate([b.predictions.scores for b in batches])
    np.testing.assert_allclose(from_files, expected_scores, rtol=1e-5, atol=1e-5)  # PNGs: no draft decoding

