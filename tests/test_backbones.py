"""Backbones: the built-ins' feature sizes, weights resolution order, clear errors, safe loading, and
real ImageNet features from EfficientNet-Lite0 (its weights ship offline).

Any other torchvision model: tests/test_any_backbone.py; the names: tests/test_registry.py."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.model import backbones
from imgclass.model.backbones import (build_feature_extractor, load_pretrained_extractor, load_state_dict_file,
                                resolve_weights_file)
from imgclass.errors import WeightsNotFoundError
from imgclass.model.transforms import EvalTransform, mean_fill

from conftest import DEMO_IMAGES


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
                                       ("efficientnet_lite0", 1280)])
def test_feature_size_of_each_backbone(name: str, dim: int) -> None:
    torch.manual_seed(0)
    extractor = build_feature_extractor(name, 64)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        features = extractor(images)
    assert features.shape == (2, dim) and features.dtype == torch.float32
    assert extractor.feature_dim == dim and torch.isfinite(features).all()
    assert all(key.startswith("body.network.") for key in extractor.state_dict())  # featurizer.pth key layout


def _resnet18_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return backbones.backbone_spec("resnet18").build_classifier(224).state_dict()


def _fail_download(spec: backbones.BackboneSpec) -> Path:
    raise urllib.error.URLError("no network")


@pytest.fixture
def isolated_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_explicit_path_is_loaded_with_its_weights(tmp_path: Path, isolated_hub: Path) -> None:
    state = _resnet18_state_dict()
    path = tmp_path / "resnet18-custom.pth"
    torch.save(state, path)
    extractor, source = load_pretrained_extractor(str(path), 64, models_dir=tmp_path / "none")
    assert source == str(path)
    assert torch.equal(extractor.body.network.conv1.weight, state["conv1.weight"])


def test_resolution_order_models_dir_then_hub_cache_then_download(tmp_path: Path, isolated_hub: Path) -> None:
    models_dir = tmp_path / "models"
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights_file("resnet18", models_dir, download=_fail_download)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(models_dir) in message
    assert "efficientnet_lite0" in message and "offline" in message
    isolated_hub.mkdir(parents=True)
    torch.save(_resnet18_state_dict(), isolated_hub / "resnet18-f37072fd.pth")
    assert resolve_weights_file("resnet18", models_dir, download=_fail_download) == \
        isolated_hub / "resnet18-f37072fd.pth"
    models_dir.mkdir()
    torch.save(_resnet18_state_dict(), models_dir / "resnet18-mine.pth")
    assert resolve_weights_file("resnet18", models_dir, download=_fail_download) == models_dir / "resnet18-mine.pth"
    assert resolve_weights_file("resnet34", models_dir, download=lambda spec: Path("downloaded")) == \
        Path("downloaded")


def test_missing_explicit_file_and_wrong_architecture(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="not found"):
        resolve_weights_file(str(tmp_path / "resnet18-x.pth"), tmp_path / "none")
    torch.save(_resnet18_state_dict(), tmp_path / "resnet50-wrong.pth")
    with pytest.raises(WeightsNotFoundError, match="do not fit resnet50"):
        load_pretrained_extractor(str(tmp_path / "resnet50-wrong.pth"), 64, tmp_path / "none")


class _Payload:
    def __reduce__(self):  # what a malicious pickle does: run code on load
        return (print, ("pwned",))


def test_loading_never_runs_pickled_code(tmp_path: Path) -> None:
    torch.save({"evil": _Payload()}, tmp_path / "resnet18-evil.pth")
    with pytest.raises(WeightsNotFoundError, match="cannot load"):
        load_state_dict_file(tmp_path / "resnet18-evil.pth")
    torch.save([1, 2], tmp_path / "resnet18-list.pth")
    with pytest.raises(WeightsNotFoundError, match="not a state dict"):
        load_state_dict_file(tmp_path / "resnet18-list.pth")


def test_checkpoint_wrappers_are_unwrapped(tmp_path: Path) -> None:
    state = _resnet18_state_dict()
    torch.save({"model": state, "epoch": 3}, tmp_path / "resnet18-ckpt.pth")
    assert set(load_state_dict_file(tmp_path / "resnet18-ckpt.pth")) == set(state)


def test_efficientnet_lite0_works_offline_with_imagenet_weights(tmp_path: Path) -> None:
    extractor, source = load_pretrained_extractor("efficientnet_lite0", 224, tmp_path / "none")
    assert source.endswith("efficientnet-lite0-57934424.pth")
    random_extractor = build_feature_extractor("efficientnet_lite0", 224)
    assert not torch.equal(extractor.body.network._conv_stem.weight, random_extractor.body.network._conv_stem.weight)


def _demo_features(pretrained: bool, resolution: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length Lite0 features of the first 6 demo images of each of the 6 classes, and their labels."""
    rows = [(folder.name, path) for folder in sorted(p for p in DEMO_IMAGES.iterdir() if p.is_dir())
            for path in sorted(folder.glob("*.jpg"))[:6]]
    torch.manual_seed(0)
    extractor, _ = load_pretrained_extractor("efficientnet_lite0", resolution, Path("/nonexistent"), pretrained)
    transform = EvalTransform(resolution, "pad", mean_fill(extractor.spec.mean))
    images = []
    for _, path in rows:
        with Image.open(path) as image:
            images.append(torch.from_numpy(transform.to_array(image.convert("RGB"))).permute(2, 0, 1))
    with torch.inference_mode():
        features = torch.nn.functional.normalize(extractor(torch.stack(images)), dim=1)
    return features.numpy(), np.array([label for label, _ in rows])


def _nearest_neighbour_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)  # leave one out
    return float((labels[similarity.argmax(axis=1)] == labels).mean())


def test_pretrained_lite0_features_group_the_demo_classes() -> None:
    """ImageNet features put same-class demo images next to each other; random weights do not (chance: 1/6)."""
    pretrained = _nearest_neighbour_accuracy(*_demo_features(pretrained=True))
    random = _nearest_neighbour_accuracy(*_demo_features(pretrained=False))
    assert pretrained >= 0.5 and pretrained >= random + 0.25, (pretrained, random)
