"""Featurization: transforms, unreadable images, per-batch writing, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.backbones import build_feature_extractor
from imgclass.featurize import FeatureWriter, Featurizer, ImageFileDataset, extract_features
from imgclass.preprocessing import EvalTransform

from conftest import make_photo


@pytest.fixture
def featurizer() -> Featurizer:
    torch.manual_seed(0)
    return Featurizer(build_feature_extractor("resnet18", 32), "pad", "random initialisation")


def test_pad_keeps_the_whole_image_and_crop_fills_the_square() -> None:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    padded = EvalTransform(64, "pad", (0, 0, 255))(image)
    assert padded.shape == (3, 64, 64) and padded.dtype == torch.uint8
    assert padded[:, 32, 32].tolist() == [255, 0, 0] and padded[:, 2, 32].tolist() == [0, 0, 255]
    cropped = EvalTransform(64, "crop")(image)
    assert cropped.shape == (3, 64, 64) and (cropped[0] == 255).all()
    with pytest.raises(ValueError):
        EvalTransform(64, "stretch")


def test_unreadable_images_are_reported_as_nan_rows(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (40, 30), seed=i) for i in range(4)]
    (tmp_path / "bad.jpg").write_bytes(b"broken")
    paths.insert(2, tmp_path / "bad.jpg")
    dataset = ImageFileDataset(paths, featurizer.transform)
    out = np.zeros((5, 512), dtype=np.float32)
    calls: list[int] = []

    def store(rows: np.ndarray, values: np.ndarray) -> None:
        calls.append(len(rows))
        out[rows] = values

    failures = extract_features(featurizer.extractor, dataset, store, batch_size=2, progress=False)
    assert calls == [2, 2, 1]  # the callback gets each batch as it comes: nothing waits for the whole set
    assert [i for i, _ in failures] == [2] and "bad.jpg" in failures[0][1]
    assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, axis=0)).all()


def test_fp32_features_are_bit_stable(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.png", (50, 40), seed=i) for i in range(3)]
    results = []
    for batch_size in (1, 3):
        out = np.zeros((3, 512), dtype=np.float32)
        extract_features(featurizer.extractor, ImageFileDataset(paths, featurizer.transform),
                         lambda rows, values: out.__setitem__(rows, values), batch_size=batch_size, progress=False)
        results.append(out)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4, atol=1e-5)
    again = np.zeros((3, 512), dtype=np.float32)
    extract_features(featurizer.extractor, ImageFileDataset(paths, featurizer.transform),
                     lambda rows, values: again.__setitem__(rows, values), batch_size=3, progress=False)
    assert np.array_equal(again, results[1])


def test_bf16_precision_gives_float32_features_close_to_fp32(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.png", (50, 40), seed=i) for i in range(2)]
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        out = np.zeros((2, 512), dtype=np.float32)
        extract_features(featurizer.extractor, ImageFileDataset(paths, featurizer.transform),
                         lambda rows, values: out.__setitem__(rows, values), dtype=dtype, progress=False)
        outs[dtype] = out
    assert outs[torch.bfloat16].dtype == np.float32
    cosine = np.sum(outs[torch.float32] * outs[torch.bfloat16], 1) / (
        np.linalg.norm(outs[torch.float32], axis=1) * np.linalg.norm(outs[torch.bfloat16], axis=1))
    assert (cosine > 0.98).all()


def test_feature_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "features.npy"
    with pytest.raises(RuntimeError):
        with FeatureWriter(target, 4, 3) as writer:
            writer(np.array([0, 1]), np.ones((2, 3), dtype=np.float32))
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with FeatureWriter(target, 4, 3) as writer:
        writer(np.array([2, 3]), np.full((2, 3), 2, dtype=np.float32))
        writer(np.array([0, 1]), np.ones((2, 3), dtype=np.float32))
    assert np.array_equal(np.load(target), np.array([[1] * 3, [1] * 3, [2] * 3, [2] * 3], dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["features.npy"]


def test_featurizer_checkpoint_round_trip(tmp_path: Path, featurizer: Featurizer) -> None:
    featurizer.save(tmp_path / "featurizer.pth")
    loaded = Featurizer.load(tmp_path / "featurizer.pth")
    assert loaded.describe() == featurizer.describe()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(loaded.extractor(images), featurizer.extractor(images))
