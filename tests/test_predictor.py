"""The Predictor: decoded images and files go through the same forward pass; every classifier mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.model.backbones import build_feature_extractor
from imgclass.model.dataset import ImageDataset
from imgclass.model.featurizer import Featurizer
from imgclass.model.inference import infer
from imgclass.model.svm import LinearSvm
from imgclass.model.predictor import Predictor

from conftest import make_photo


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    return [make_photo(folder / f"{i}.png", (60, 45), seed=i) for i in range(6)]


@pytest.fixture(scope="module")
def svm_predictor(photos: list[Path]) -> Predictor:
    torch.manual_seed(0)
    featurizer = Featurizer(build_feature_extractor("resnet18", 32), "pad", "random initialisation")
    features = np.concatenate([b.outputs for b in infer(featurizer.network, ImageDataset(photos,
                                                                                          featurizer.transform))])
    svm = LinearSvm(C=1.0, cv=2, classes=["even", "odd"]).fit(features, ["even", "odd"] * 3)
    return Predictor(featurizer, svm, model_name="toy", model_version="1")


def test_images_and_files_give_the_same_scores(svm_predictor: Predictor, photos: list[Path]) -> None:
    from_images = svm_predictor.predict([Image.open(p) for p in photos])
    batches = list(svm_predictor.predict_files(photos, batch_size=4))
    assert [b.paths for b in batches] == [[str(p) for p in photos[:4]], [str(p) for p in photos[4:]]]
    np.testing.assert_allclose(np.concatenate([b.predictions.scores for b in batches]), from_images.scores,
                               rtol=1e-5, atol=1e-5)
    assert from_images.scores.shape == from_images.probabilities.shape == (6, 2)
    np.testing.assert_allclose(from_images.probabilities.sum(axis=1), 1.0)
    assert svm_predictor.labels == from_images.labels == ["even", "odd"]


def test_unreadable_files_are_reported_and_the_rest_classified(svm_predictor: Predictor, photos: list[Path],
                                                              tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    (batch,) = svm_predictor.predict_files([photos[0], broken, photos[1]], batch_size=8)
    assert batch.paths == [str(photos[0]), str(photos[1])] and batch.predictions.scores.shape == (2, 2)
    assert [path for path, _ in batch.failures] == [str(broken)] and "cannot decode" in batch.failures[0][1]
    assert svm_predictor.predict([]).scores.shape == (0, 2)


def test_a_refined_network_classifies_by_itself(photos: list[Path]) -> None:
    torch.manual_seed(0)
    extractor = build_feature_extractor("resnet18", 32)
    featurizer = Featurizer(extractor, "pad", "refined", torch.nn.Linear(512, 3), ["a", "b", "c"], "logits")
    predictor = Predictor(featurizer, None)
    result = predictor.predict([Image.open(p).convert("L") for p in photos[:2]])  # any mode: converted to RGB
    assert result.labels == ["a", "b", "c"] and result.scores.shape == (2, 3)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="needs an SVM"):
        Predictor(Featurizer(extractor, "pad", "x"), None)
