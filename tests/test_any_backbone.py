"""Any torchvision classification model as the backbone: specs from torchvision's weights metadata,
penultimate features by one head rule, the offline rule, fixed input sizes, and steps 1-5 with
ConvNeXt-T read from resources/models/."""

from __future__ import annotations

import json
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from imgclass.errors import ParameterError, WeightsNotFoundError
from imgclass.layout import DatasetLayout
from imgclass.model.backbones import (BackboneSpec, backbone_spec, build_feature_extractor, load_pretrained_extractor,
                                      resolve_weights_file)
from imgclass.model.registry import torchvision_model_names
from imgclass.parameters import load_parameters
from imgclass.pipeline import build_featurizer, evaluate, featurize_dataset, prepare_data, train_classifier

from conftest import make_dataset


def smallest_resolution(spec: BackboneSpec) -> int:
    """The smallest input the network and rf_inputResolution (>= 32) both allow."""
    return spec.fixed_resolution or max(32, spec.min_resolution)


def class_score_layers(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules()
            if (isinstance(m, nn.Linear) and m.out_features == 1000) or (isinstance(m, nn.Conv2d) and m.out_channels == 1000)]


@pytest.mark.parametrize("name, dim", [
    ("convnext_tiny", 768), ("efficientnet_v2_s", 1280), ("regnet_y_800mf", 784), ("mobilenet_v3_large", 1280),
    ("vit_b_16", 768), ("swin_t", 768), ("squeezenet1_1", 512), ("googlenet", 1024)])
def test_penultimate_features_of_each_family(name: str, dim: int) -> None:
    """Random weights, one image at the smallest size each takes (the built-ins: tests/test_backbones.py)."""
    torch.manual_seed(0)
    spec = backbone_spec(name)
    extractor = build_feature_extractor(name, smallest_resolution(spec))
    side = extractor.resolution
    with torch.inference_mode():
        features = extractor(torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8))
    assert features.shape == (1, dim) and features.dtype == torch.float32 and torch.isfinite(features).all()
    assert extractor.feature_dim == spec.feature_dim == dim and extractor.spec is spec
    assert class_score_layers(extractor) == []  # the head is gone
    assert all(key.startswith("body.network.") for key in extractor.state_dict())  # featurizer.pth key layout


def one_model_per_family() -> list[str]:
    """The first model of each torchvision module (one architecture family, one head layout, per file).

    RegNets compute their widths with tensors, so they cannot be built on the
    meta device (their spec is probed with a real build): regnet_y_800mf is
    covered above instead.
    """
    import torchvision.models

    families: dict[str, str] = {}
    for name in torchvision_model_names():
        families.setdefault(torchvision.models.get_model_builder(name).__module__, name)
    return sorted(name for name in families.values() if not name.startswith("regnet_"))


@pytest.mark.parametrize("name", one_model_per_family())
def test_the_head_rule_gives_the_announced_feature_size_in_every_family(name: str) -> None:
    """Shapes only, without memory or arithmetic (meta tensors), at the smallest accepted size."""
    spec = backbone_spec(name)
    side = smallest_resolution(spec)
    with torch.device("meta"):
        body, feature_dim = spec.strip_head(spec.build_classifier(side))
        output = body.eval()(torch.empty(1, 3, side, side))
    assert tuple(output.shape) == (1, feature_dim) == (1, spec.feature_dim)
    assert class_score_layers(body) == []
    assert spec.weights_url is not None and spec.weights_url.endswith("/" + spec.weights_file)
    assert 0.5 < spec.crop_fraction <= 1.0 and len(spec.mean) == len(spec.std) == 3


def test_specs_read_torchvisions_weights_metadata() -> None:
    resnet = backbone_spec("resnet18")  # the built-in keeps the original weights: 224 out of 256
    assert (resnet.weights_file, resnet.crop_fraction, resnet.fixed_resolution) == ("resnet18-f37072fd.pth", 0.875, None)
    assert resnet.mean == pytest.approx((0.485, 0.456, 0.406)) and resnet.std == pytest.approx((0.229, 0.224, 0.225))
    assert backbone_spec("resnet50").weights_file == "resnet50-0676ba61.pth"
    convnext = backbone_spec("convnext_tiny")
    assert convnext.weights_url == "https://download.pytorch.org/models/convnext_tiny-983f1562.pth"
    assert convnext.crop_fraction == pytest.approx(224 / 236)
    v2 = backbone_spec("efficientnet_v2_s")
    assert (v2.native_resolution, v2.crop_fraction, v2.min_resolution) == (384, 1.0, 33)
    assert backbone_spec("vit_b_16").fixed_resolution == 224 and backbone_spec("swin_t").interpolation == "bicubic"
    assert backbone_spec("/anywhere/convnext_tiny-mine.pth") is convnext
    with pytest.raises(WeightsNotFoundError, match="did you mean 'convnext_tiny'"):
        backbone_spec("convnext_tiyn")


def test_a_fixed_size_backbone_names_both_sizes() -> None:
    with pytest.raises(ParameterError, match=r"vit_b_16.*224 x 224.*rf_inputResolution is 160"):
        build_feature_extractor("vit_b_16", 160)
    with pytest.raises(ParameterError, match=r"vit_b_16.*rf_inputResolution=224"):
        load_pretrained_extractor("vit_b_16", 384, Path("/nonexistent"))  # before looking for weights
    with pytest.raises(ParameterError, match=r"inception_v3.*at least 75.*rf_inputResolution is 64"):
        build_feature_extractor("inception_v3", 64)


def test_googlenet_loads_its_weights_layout_and_trains_without_aux_heads() -> None:
    """GoogLeNet's weights file holds auxiliary heads and expects transform_input: built like torchvision does."""
    spec = backbone_spec("googlenet")
    torch.manual_seed(0)
    classifier = spec.build_classifier(64)
    assert classifier.transform_input and any(k.startswith("aux1.") for k in classifier.state_dict())
    extractor = build_feature_extractor("googlenet", 64, classifier.state_dict())
    assert not any(".aux" in k for k in extractor.state_dict())
    extractor.train()  # refinement runs it in training mode: one tensor out, no auxiliary outputs
    assert extractor(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)).shape == (2, 1024)


def test_an_extractor_survives_pickling_for_worker_processes() -> None:
    torch.manual_seed(0)
    extractor = build_feature_extractor("mobilenet_v3_large", 32)
    copy = pickle.loads(pickle.dumps(extractor))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(copy(images), extractor(images))
    assert copy.spec == extractor.spec


def test_a_saved_extractor_reloads_into_a_fresh_build() -> None:
    """What Featurizer.load does with featurizer.pth: build from the recipe, load the state dict strictly."""
    torch.manual_seed(0)
    extractor = build_feature_extractor("swin_t", 224)
    fresh = build_feature_extractor(extractor.backbone_name, extractor.resolution)
    fresh.load_state_dict(extractor.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), extractor.state_dict().values()))


def _fail_download(spec: BackboneSpec) -> Path:
    raise urllib.error.URLError("no network")


@pytest.fixture
def isolated_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_offline_without_a_file_says_which_file_to_get_and_where(tmp_path: Path, isolated_hub: Path) -> None:
    models_dir = tmp_path / "resources" / "models"
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights_file("convnext_tiny", models_dir, download=_fail_download)
    message = str(info.value)
    assert "https://download.pytorch.org/models/convnext_tiny-983f1562.pth" in message
    assert "'convnext_tiny-983f1562.pth' into " + str(models_dir) in message
    assert "efficientnet_lite0" in message


def test_a_file_in_the_models_folder_is_used(tmp_path: Path, isolated_hub: Path) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    spec = backbone_spec("squeezenet1_1")
    torch.manual_seed(3)
    state = spec.build_classifier(32).state_dict()
    torch.save(state, models_dir / "squeezenet1_1_mine.pth")  # any .pth named after the model
    extractor, source = load_pretrained_extractor("squeezenet1_1", 32, models_dir)
    assert source == str(models_dir / "squeezenet1_1_mine.pth")
    assert torch.equal(extractor.body.network.features[0].weight, state["features.0.weight"])
    torch.save(state, models_dir / spec.weights_file)  # the official name comes first
    assert resolve_weights_file("squeezenet1_1", models_dir, download=_fail_download) == models_dir / spec.weights_file
    with pytest.raises(WeightsNotFoundError, match="do not fit convnext_tiny"):
        build_feature_extractor("convnext_tiny", 32, state)


def test_steps_1_to_5_with_convnext_tiny_from_resources_models(tmp_path: Path, isolated_hub: Path) -> None:
    """--rf_pretrainedModelFilename=convnext_tiny with its official weights file placed in resources/models/."""
    project = tmp_path / "project"
    models_dir = project / "resources" / "models"
    models_dir.mkdir(parents=True)
    spec = backbone_spec("convnext_tiny")
    torch.manual_seed(0)
    torch.save(spec.build_classifier(32).state_dict(), models_dir / spec.weights_file)
    params = load_parameters(project_dir=project, rootDir=str(tmp_path / "data"), datasetName="toy",
                             rf_pretrainedModelFilename="convnext_tiny", rf_inputResolution=32,
                             svm_CVals=[0.1, 1.0], svm_cvFolds=2, run_workers=0)
    layout = DatasetLayout.from_parameters(params)
    make_dataset(layout.images_dir, {"a": 6, "b": 6}, size=(40, 30))
    prepare_data(params)
    report = build_featurizer(params, progress=False)
    assert report.featurizer.source == str(models_dir / spec.weights_file)
    featurize_dataset(params, progress=False)
    assert np.load(layout.features_npy).shape == (12, 768)
    train_classifier(params)
    result = evaluate(params)
    assert 0.0 <= result.metrics["overall_accuracy"] <= 1.0
    assert json.loads(layout.svm_json.read_text())["featurizer"]["backbone"] == "convnext_tiny"
