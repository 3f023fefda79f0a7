"""The backbone registry: the one place that knows which backbones exist.

Importing this module is cheap (no torch): the parameters are checked against
it before any work starts. Building a network is :mod:`imgclass.model.backbones`.
"""

from __future__ import annotations

import re
from pathlib import Path

#: Backbones with their own entry (weights, normalisation, feature size): see :mod:`imgclass.model.backbones`.
BUILTIN_BACKBONES = ("resnet18", "resnet34", "resnet50", "efficientnet_lite0")


def backbone_name_of_file(file_name: str) -> str | None:
    """Return the backbone a weights file is for, from its name (``resnet50-0676ba61.pth``)."""
    normalised = file_name.lower().replace("-", "_")  # 'efficientnet-lite0-57934424.pth' too
    for name in sorted(BUILTIN_BACKBONES, key=len, reverse=True):
        if re.match(rf"{re.escape(name)}(?![0-9a-z])", normalised):
            return name
    return None


def check_backbone_value(value: str) -> str | None:
    """Why ``value`` names no backbone (a message for the parameter error), or None if it does."""
    if value in BUILTIN_BACKBONES:
        return None
    name = Path(value).name
    if name.endswith(".pth") and backbone_name_of_file(name) is not None:
        return None
    return (f"must be one of {', '.join(repr(n) for n in BUILTIN_BACKBONES)} or a path to a .pth "
            "state-dict file whose name starts with one of them (e.g. 'resnet18-f37072fd.pth')")
