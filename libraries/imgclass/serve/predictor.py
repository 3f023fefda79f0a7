"""Classifying new images with a trained dataset model: what serving and batch scoring use.

:class:`Predictor` loads the artifacts of steps 2 and 4 once (the featurizer
network and the SVM) and classifies decoded PIL images in batches. It holds
no per-request state, and the forward pass runs under a lock, so one
instance can be shared by the threads of a web server.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from imgclass.model.inference import Featurizer
from imgclass.layout import DatasetLayout
from imgclass.model.scores import softmax, top_k
from imgclass.model.svm import TrainedSvm, load_svm
from imgclass.model.runtime import autocast, resolve_device, resolve_precision


@dataclass(frozen=True)
class Predictions:
    """Per image: SVM scores (margins) and calibrated probabilities, ``(N, K)`` each."""

    scores: np.ndarray
    probabilities: np.ndarray
    labels: list[str]

    def top_k(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """For each image, the ``k`` most probable labels with their probabilities."""
        return top_k(self.probabilities, self.labels, k)


class Predictor:
    """Featurizer + SVM of one dataset, ready to classify images."""

    def __init__(self, featurizer: Featurizer, classifier: TrainedSvm | None, device: torch.device,
                 dtype: torch.dtype = torch.float32, model_name: str = "", model_version: str = ""):
        self.featurizer = featurizer
        self.classifier = classifier
        self.device = device
        self.dtype = dtype
        self.transform = featurizer.transform
        self.network = featurizer.network.to(device).eval()
        if classifier is None and featurizer.output != "logits":
            raise ValueError("a Predictor needs an SVM unless the network outputs class scores")
        self.model_name = model_name
        self.model_version = model_version
        self._lock = threading.Lock()

    @classmethod
    def from_layout(cls, layout: DatasetLayout, run_device: str = "auto", run_precision: str = "fp32") -> "Predictor":
        """Load ``featurizer.pth`` and, unless the network is a refined classifier, ``svm.joblib``."""
        featurizer = Featurizer.load(layout.featurizer_pth)
        content = layout.featurizer_pth.read_bytes()
        classifier = None
        if featurizer.output != "logits":
            classifier = load_svm(layout.svm_joblib)
            content += layout.svm_joblib.read_bytes()
        digest = hashlib.sha256(content).hexdigest()[:12]
        device = resolve_device(run_device)
        info = featurizer.describe()
        kind = "dnn" if classifier is None else ("svm" if featurizer.head is None else "svmDnnRefined")
        name = f"{layout.dataset}-{info['backbone']}-{kind}"
        return cls(featurizer, classifier, device, resolve_precision(run_precision, device), name, digest)

    @property
    def labels(self) -> list[str]:
        if self.classifier is None:
            return list(self.featurizer.labels or [])
        return list(self.classifier.labels)

    def network_outputs(self, images: Sequence[Image.Image]) -> np.ndarray:
        """What the network gives for RGB PIL images: features ``(N, D)``, or class scores ``(N, K)``."""
        if not images:
            return np.zeros((0, self.featurizer.output_dim), dtype=np.float32)
        batch = torch.stack([self.transform(image.convert("RGB")) for image in images]).to(self.device)
        with self._lock, torch.inference_mode(), autocast(self.device, self.dtype):
            return self.network(batch).float().cpu().numpy()

    def predict(self, images: Sequence[Image.Image]) -> Predictions:
        """Scores and probabilities for each image.

        SVM modes: scores are SVM margins, probabilities Platt-calibrated.
        ``'dnn'``: scores are the network's logits, probabilities their softmax.
        """
        outputs = self.network_outputs(images)
        if len(outputs) == 0:
            empty = np.zeros((0, len(self.labels)))
            return Predictions(empty, empty, self.labels)
        if self.classifier is None:
            return Predictions(outputs.astype(np.float64), softmax(outputs), self.labels)
        return Predictions(self.classifier.decision_scores(outputs), self.classifier.probabilities(outputs),
                           self.labels)

    def describe(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_version": self.model_version, "labels": self.labels,
                "featurizer": self.featurizer.describe(),
                "C": None if self.classifier is None else self.classifier.C}
