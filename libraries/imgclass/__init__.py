"""imgclass: image classification with a pretrained DNN as featurizer and a linear SVM.

The numbered scripts (``scripts/``) and ``python -m imgclass run`` drive the
pipeline from ``PARAMETERS.py``. From Python, the small public API::

    from imgclass import ImageClassifier
    classifier = ImageClassifier(backbone="efficientnet_lite0").fit("data/images/myData")
    classifier.predict(["new_photo.jpg"])

Names are imported on first use, so ``import imgclass`` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: public name -> module that defines it
_PUBLIC = {
    "ImageClassifier": "imgclass.api",
    "Predictor": "imgclass.model.predictor",
    "Parameters": "imgclass.parameters",
    "load_parameters": "imgclass.parameters",
    "DatasetLayout": "imgclass.layout",
    "ImgClassError": "imgclass.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'imgclass' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
