"""The backbone registry: names and weights files accepted, close-name hints, no torch import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imgclass.model import registry
from imgclass.model.registry import (BUILTIN_BACKBONES, backbone_name_of_file, check_backbone_value,
                                     torchvision_model_names)

from conftest import PROJECT_DIR, PYTHON


def test_the_source_scan_gives_torchvisions_own_list() -> None:
    import torchvision.models

    assert torchvision_model_names() == tuple(sorted(torchvision.models.list_models(module=torchvision.models)))
    assert {"convnext_tiny", "efficientnet_v2_s", "regnet_y_800mf", "mobilenet_v3_large", "vit_b_16",
            "swin_t"} <= set(torchvision_model_names())
    assert "fasterrcnn_resnet50_fpn" not in torchvision_model_names()  # detection models are not backbones here


def test_without_readable_sources_torchvision_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = torchvision_model_names()
    monkeypatch.setattr(registry, "_scan_torchvision_sources", lambda: ())
    registry.torchvision_model_names.cache_clear()
    try:
        assert registry.torchvision_model_names() == expected
    finally:
        registry.torchvision_model_names.cache_clear()


@pytest.mark.parametrize("value", [*BUILTIN_BACKBONES, "convnext_tiny", "vit_b_16", "swin_v2_t", "squeezenet1_1",
                                   "resnet101", "convnext_tiny-983f1562.pth", "/weights/vit_b_16-c867db91.pth",
                                   "efficientnet-lite0-57934424.pth", "mnasnet0.5_top1_67.823-3ffadce67e.pth",
                                   "resnet18_finetuned.pth", "models/RESNET50-0676ba61.PTH"])
def test_accepted_values(value: str) -> None:
    assert check_backbone_value(value) is None


@pytest.mark.parametrize("file_name, name", [
    ("resnet50-0676ba61.pth", "resnet50"), ("wide_resnet50_2-9ba9bcbe.pth", "wide_resnet50_2"),
    ("vgg11_bn-6002323d.pth", "vgg11_bn"), ("vgg11-8a719046.pth", "vgg11"),
    ("regnet_y_16gf-3e4a00f9.pth", "regnet_y_16gf"), ("regnet_y_1_6gf-0d7bc02a.pth", "regnet_y_1_6gf"),
    ("swin_v2_t-b137f0e2.pth", "swin_v2_t"), ("swin_t-704ceda3.pth", "swin_t"),
    ("efficientnet_b0_rwightman-7f5810bc.pth", "efficientnet_b0"), ("inception_v3_google-0cc3c7bd.pth", "inception_v3"),
    ("efficientnet-lite0-57934424.pth", "efficientnet_lite0"), ("resnet181.pth", None), ("weights.pth", None)])
def test_the_backbone_of_a_file_is_the_longest_name_it_starts_with(file_name: str, name: str | None) -> None:
    assert backbone_name_of_file(file_name) == name


def test_a_typo_gets_close_names() -> None:
    message = check_backbone_value("resnet19")
    assert message is not None and "did you mean 'resnet18'" in message
    assert "efficientnet_lite0" in message and "torchvision" in message and ".pth" in message
    message = check_backbone_value("convnext-tiny")
    assert message is not None and "'convnext_tiny'" in message


def test_a_weights_file_named_after_nothing_says_how_to_name_it() -> None:
    message = check_backbone_value("/tmp/my_weights.pth")
    assert message is not None and "'my_weights.pth'" in message and "name it after the model" in message
    assert "did you mean 'resnet18'" in check_backbone_value("resnet181.pth")


def test_checking_a_value_does_not_import_torch() -> None:
    """parameters.py checks rf_pretrainedModelFilename before any work: it must answer at once."""
    code = ("import sys\n"
            "from imgclass.model.registry import check_backbone_value\n"
            "assert check_backbone_value('convnext_tiny') is None\n"
            "assert check_backbone_value('swin_t-704ceda3.pth') is None\n"
            "assert check_backbone_value('resnet19') is not None\n"
            "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([PYTHON, "-c", code], cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
