"""Classifying new images with a trained dataset model: what serving, batch scoring and notebooks use.

:class:`Predictor` loads the artifacts of steps 2 and 4 once (the featurizer
network and the SVM) and classifies

- already-decoded images (:meth:`Predictor.predict`: the service), as one
  batch through the same forward pass as step 3
  (:func:`imgclass.model.inference.run_network`: channels-last, chunked on the
  CPU); it holds no per-request state and runs the network under a lock, so
  one instance can be shared by the threads of a web server;
- image files (:meth:`Predictor.predict_files`: batch scoring), batch by batch
  through step 3's inference loop (:func:`imgclass.model.inference.infer`):
  reduced-scale JPEG decoding, worker processes, unreadable files reported.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from imgclass.model.dataset import ImageDataset
from imgclass.model.featurizer import Featurizer
from imgclass.model.inference import DevicePlan, images_to_batch, infer, run_network
from imgclass.model.runtime import Runtime
from imgclass.model.scores import softmax
from imgclass.model.svm import LinearSvm, load_svm
from imgclass.model.transforms import EvalTransform


@dataclass(frozen=True)
class Predictions:
    """Per image: scores and probabilities, ``(N, K)`` each, columns in ``labels`` order.

    SVM modes: scores are SVM margins, probabilities Platt-calibrated.
    ``'dnn'``: scores are the network's logits, probabilities their softmax.
    """

    scores: np.ndarray
    probabilities: np.ndarray
    labels: list[str]


@dataclass(frozen=True)
class FilePredictions:
    """One batch of :meth:`Predictor.predict_files`: the readable files with their predictions, and the others."""

    #: the files classified, one per row of ``predictions``
    paths: list[str]
    predictions: Predictions
    #: ``(file, why it could not be read)``
    failures: list[tuple[str, str]]


class Predictor:
    """Featurizer + classifier of one dataset, ready to classify images."""

    def __init__(self, featurizer: Featurizer, classifier: LinearSvm | None, runtime: Runtime | None = None,
                 model_name: str = "", model_version: str = ""):
        if classifier is None and featurizer.output != "logits":
            raise ValueError("a Predictor needs an SVM unless the network outputs class scores")
        self.featurizer = featurizer
        self.classifier = classifier
        self.runtime = runtime or Runtime()
        self.transform: EvalTransform = featurizer.transform
        self._plan = DevicePlan.for_device(self.runtime.device)
        self.network = self._plan.prepare(featurizer.network.eval())
        self.model_name = model_name
        self.model_version = model_version
        self._lock = threading.Lock()

    @classmethod
    def load(cls, featurizer_pth: Path, svm_joblib: Path | None = None, svm_json: Path | None = None,
             runtime: Runtime | None = None, name_prefix: str = "") -> "Predictor":
        """Load step 2's ``featurizer.pth`` and, unless the network is a refined classifier, step 4's
        ``svm.joblib`` + ``svm.json``.

        The model's version is a hash of those files, so results stored by one
        model (batch scoring) are told apart from another's; its name is
        ``<name_prefix>-<backbone>-<svm|dnn|svmDnnRefined>``.
        """
        featurizer = Featurizer.load(featurizer_pth)
        content = Path(featurizer_pth).read_bytes()
        classifier = None
        if featurizer.output != "logits":
            if svm_joblib is None or svm_json is None:
                raise ValueError("this featurizer outputs features: the SVM files are needed too")
            classifier = load_svm(svm_joblib, svm_json)
            content += Path(svm_joblib).read_bytes()
        digest = hashlib.sha256(content).hexdigest()[:12]
        kind = "dnn" if classifier is None else ("svm" if featurizer.head is None else "svmDnnRefined")
        name = "-".join(part for part in (name_prefix, featurizer.extractor.backbone_name, kind) if part)
        return cls(featurizer, classifier, runtime, name, digest)

    @property
    def labels(self) -> list[str]:
        if self.classifier is None:
            return list(self.featurizer.labels or [])
        return [str(label) for label in self.classifier.classes_]

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def _classify(self, outputs: np.ndarray) -> Predictions:
        """Network outputs ``(N, D)`` -> scores and probabilities."""
        if len(outputs) == 0:
            empty = np.zeros((0, len(self.labels)))
            return Predictions(empty, empty, self.labels)
        if self.classifier is None:
            return Predictions(outputs.astype(np.float64), softmax(outputs), self.labels)
        return Predictions(self.classifier.decision_function(outputs), self.classifier.predict_proba(outputs),
                           self.labels)

    def predict(self, images: Sequence[Image.Image | np.ndarray]) -> Predictions:
        """Scores and probabilities for already-decoded images (one batch; thread-safe).

        An image is a PIL image, or an ``(R, R, 3)`` uint8 array the caller has
        already put through :attr:`transform` (the service does, one image at a
        time as each is decoded, so a request never holds all its decoded images).
        """
        if not images:
            return self._classify(np.zeros((0, self.featurizer.output_dim), dtype=np.float32))
        batch = images_to_batch(images, self.transform)
        with self._lock, torch.inference_mode(), self.runtime.autocast():
            outputs = run_network(self.network, batch, self._plan).float().cpu().numpy()
        return self._classify(outputs)

    def predict_files(self, paths: Sequence[str | Path], batch_size: int = 32,
                      progress: bool = False) -> Iterator[FilePredictions]:
        """Classify image files batch by batch, in order, through the inference loop of step 3.

        Each yielded batch can be stored before the next one is computed, so
        an interrupted run loses at most one batch. Worker processes follow
        the runtime's ``run_workers``. Meant for one caller at a time (a
        script), unlike :meth:`predict`.
        """
        names = [str(p) for p in paths]
        dataset = ImageDataset(paths, self.transform)
        for batch in infer(self.network, dataset, batch_size, self.runtime, progress):
            readable = batch.readable
            yield FilePredictions([names[i] for i in batch.indices[readable]],
                                  self._classify(batch.outputs[readable]),
                                  [(names[i], message) for i, message in batch.failures])
