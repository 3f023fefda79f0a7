"""The toolkit as a Python object: train on a folder of images, classify new ones, save, load.

For users who want the method without the numbered scripts (the scikit-learn /
fastai habit)::

    from imgclass import ImageClassifier

    classifier = ImageClassifier(backbone="efficientnet_lite0").fit("data/images/myData")
    classifier.predict(["new_photo.jpg"])          # ['cats']
    classifier.save("models/myData")               # featurizer.pth + svm.joblib + svm.json
    classifier = ImageClassifier.load("models/myData")

It is the same method as scripts 2-4 with ``classifier='svm'``: the pretrained
backbone's penultimate features of every image, then a linear SVM whose C is
chosen by cross-validation on those images. There is no train/test split here:
every image of the folder trains the model; evaluate on images it has not seen
(scripts 1-5 do that for you). The saved folder holds the same files as
``proc/<ds>/``, so ``imgclass.model.predictor.Predictor.load`` and the service read it too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

from imgclass.errors import DatasetError
from imgclass.io.images import UnreadableImageError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from imgclass.model.predictor import Predictions, Predictor
    from imgclass.model.runtime import Runtime

#: An image to classify: a file path, or an already-decoded PIL image.
ImageInput = Union[str, os.PathLike, "Image.Image"]

FEATURIZER_FILE = "featurizer.pth"
SVM_JOBLIB_FILE = "svm.joblib"
SVM_JSON_FILE = "svm.json"


@dataclass
class ImageClassifier:
    """A pretrained backbone as featurizer + a linear SVM, trained on a folder with one sub-folder per class.

    Parameters
    ----------
    backbone:
        A backbone name (``'efficientnet_lite0'`` works offline; ``'resnet18'``, any torchvision
        classification model such as ``'convnext_tiny'``) or a ``.pth`` file named after one.
    resolution, resize_mode:
        Network input size in pixels, and ``'pad'`` (keep the whole image) or ``'crop'``.
    C_values, cv:
        The SVM's C values, chosen among by ``cv``-fold cross-validation on the training images.
    models_dir:
        Where weight files are looked for before a download (default ``resources/models``).
    run_device, run_precision, run_workers, batch_size:
        As the ``run_*`` parameters of the pipeline.
    random_state:
        Seeds the cross-validation folds.
    """

    backbone: str = "efficientnet_lite0"
    resolution: int = 224
    resize_mode: str = "pad"
    C_values: Sequence[float] = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
    cv: int = 5
    models_dir: str | os.PathLike[str] = Path("resources") / "models"
    run_device: str = "auto"
    run_precision: str = "auto"
    run_workers: int = -1
    batch_size: int = 32
    random_state: int = 0
    #: after :meth:`fit`: ``(path, why)`` of the images that could not be read (left out)
    skipped_: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False)
    _predictor: "Predictor | None" = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ training
    def fit(self, folder: str | os.PathLike[str]) -> "ImageClassifier":
        """Train on ``folder/<class>/**/<image>``: every readable image, its class from its folder."""
        import numpy as np

        from imgclass.data.splits import list_dataset
        from imgclass.model.backbones import load_pretrained_extractor
        from imgclass.model.dataset import ImageDataset
        from imgclass.model.featurizer import Featurizer
        from imgclass.model.inference import infer
        from imgclass.model.predictor import Predictor
        from imgclass.model.svm import LinearSvm, LinearSvmCV

        folder = Path(folder)
        listing = list_dataset(folder)
        paths = [folder / path for label in listing.labels for path in listing.images_by_label[label]]
        labels = [label for label in listing.labels for _ in listing.images_by_label[label]]
        extractor, source = load_pretrained_extractor(self.backbone, self.resolution, Path(self.models_dir))
        featurizer = Featurizer(extractor, self.resize_mode, source)
        runtime = self._runtime()
        features = np.zeros((len(paths), featurizer.output_dim), dtype=np.float32)
        readable = np.ones(len(paths), dtype=bool)
        self.skipped_ = []
        for batch in infer(featurizer.network, ImageDataset(paths, featurizer.transform), self.batch_size, runtime):
            features[batch.indices] = batch.outputs
            for index, message in batch.failures:
                readable[index] = False
                self.skipped_.append((str(paths[index]), message))
        kept = [label for label, ok in zip(labels, readable) if ok]
        if len(set(kept)) < 2:
            raise DatasetError(f"fewer than 2 classes with readable images in {folder}")
        search = LinearSvmCV(tuple(self.C_values), self.cv,
                             estimator=LinearSvm(random_state=self.random_state, classes=listing.labels)
                             ).fit(features[readable], kept)
        self._predictor = Predictor(featurizer, search.best_estimator_, runtime, model_name=folder.name)
        return self

    # ------------------------------------------------------------------ using it
    @property
    def predictor(self) -> "Predictor":
        """The trained model (featurizer + SVM); :class:`~imgclass.model.predictor.Predictor`."""
        if self._predictor is None:
            raise DatasetError("this ImageClassifier is not trained yet: call fit(folder) or load(folder)")
        return self._predictor

    @property
    def classes_(self) -> list[str]:
        """The class names, in the order of :meth:`predict_proba`'s columns."""
        return self.predictor.labels

    def _predictions(self, images: Sequence[ImageInput]) -> "Predictions":
        """Scores and probabilities of ``images`` in order; an unreadable file is an error naming it."""
        import numpy as np
        from PIL import Image

        from imgclass.model.predictor import Predictions

        files = [i for i, image in enumerate(images) if not isinstance(image, Image.Image)]
        decoded = [i for i, image in enumerate(images) if isinstance(image, Image.Image)]
        n_classes = len(self.classes_)
        scores = np.zeros((len(images), n_classes))
        probabilities = np.zeros((len(images), n_classes))
        if decoded:
            result = self.predictor.predict([images[i] for i in decoded])
            scores[decoded], probabilities[decoded] = result.scores, result.probabilities
        done = 0
        for batch in self.predictor.predict_files([images[i] for i in files], self.batch_size):
            if batch.failures:
                path, message = batch.failures[0]
                raise UnreadableImageError(message if path in message else f"{path}: {message}")
            rows = [files[done + j] for j in range(len(batch.paths))]
            scores[rows], probabilities[rows] = batch.predictions.scores, batch.predictions.probabilities
            done += len(batch.paths)
        return Predictions(scores, probabilities, self.classes_)

    def predict(self, images: Sequence[ImageInput]) -> list[str]:
        """The most probable class of each image (file paths or PIL images)."""
        probabilities = self._predictions(images).probabilities
        return [self.classes_[i] for i in probabilities.argmax(axis=1)] if len(images) else []

    def predict_proba(self, images: Sequence[ImageInput]) -> "np.ndarray":
        """Calibrated probabilities ``(N, K)``, columns in :attr:`classes_` order (rows sum to 1)."""
        return self._predictions(images).probabilities

    # ------------------------------------------------------------------ files
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``featurizer.pth``, ``svm.joblib`` and ``svm.json`` into ``folder`` (atomically each)."""
        from imgclass.model.svm import save_svm

        folder = Path(folder)
        predictor = self.predictor
        predictor.featurizer.save(folder / FEATURIZER_FILE)
        if predictor.classifier is not None:  # a refined network ('dnn') is its own classifier
            save_svm(predictor.classifier, folder / SVM_JOBLIB_FILE, folder / SVM_JSON_FILE,
                     {"featurizer": predictor.featurizer.describe()})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], run_device: str = "auto", run_precision: str = "auto",
             run_workers: int = -1) -> "ImageClassifier":
        """A classifier saved by :meth:`save` (or a pipeline's ``proc/<ds>/`` folder)."""
        from imgclass.model.predictor import Predictor

        folder = Path(folder)
        classifier = cls(run_device=run_device, run_precision=run_precision, run_workers=run_workers)
        classifier._predictor = Predictor.load(folder / FEATURIZER_FILE, folder / SVM_JOBLIB_FILE,
                                               folder / SVM_JSON_FILE, classifier._runtime(), folder.name)
        extractor = classifier._predictor.featurizer.extractor
        classifier.backbone, classifier.resolution = extractor.backbone_name, extractor.resolution
        classifier.resize_mode = classifier._predictor.featurizer.resize_mode
        return classifier

    def _runtime(self) -> "Runtime":
        from imgclass.model.runtime import Runtime

        return Runtime.resolve(self.run_device, self.run_precision, self.run_workers)
