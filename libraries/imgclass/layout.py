"""Where every artifact of a dataset lives: one place that names the files.

Each pipeline step reads its inputs and writes its outputs through a
:class:`DatasetLayout`, so the next step, a notebook or a user's own code can
find them. The formats are documented in the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgclass.errors import MissingArtifactError
from imgclass.parameters import Parameters


@dataclass(frozen=True)
class DatasetLayout:
    """Folders and files of one dataset under a root directory."""

    root: Path
    dataset: str

    @classmethod
    def from_parameters(cls, params: Parameters) -> "DatasetLayout":
        """The layout of ``params.datasetName`` under ``params.rootDir``."""
        return cls(params.root_path, params.datasetName)

    @property
    def images_dir(self) -> Path:
        """``<root>/images/<dataset>/<class>/...``: the user's images (never modified)."""
        return self.root / "images" / self.dataset

    @property
    def proc_dir(self) -> Path:
        return self.root / "proc" / self.dataset

    @property
    def results_dir(self) -> Path:
        return self.root / "results" / self.dataset

    # --- step 1: split --------------------------------------------------------
    @property
    def split_csv(self) -> Path:
        """CSV ``path,label,split``; paths relative to :attr:`images_dir`."""
        return self.proc_dir / "split.csv"

    @property
    def labels_json(self) -> Path:
        """JSON list of class names; a label's index is its class id."""
        return self.proc_dir / "labels.json"

    @property
    def dedicated_test_tsv(self) -> Path:
        """Optional ``dedicatedTestImages.tsv`` inside the image folder (see splits)."""
        return self.images_dir / "dedicatedTestImages.tsv"

    # --- step 2: featurizer -----------------------------------------------------
    @property
    def featurizer_pth(self) -> Path:
        """Checkpoint of the network used by step 3 (torch state dict + its recipe)."""
        return self.proc_dir / "featurizer.pth"

    @property
    def refinement_checkpoint(self) -> Path:
        """Refinement state after the last finished epoch (model, optimizer, history, best weights)."""
        return self.proc_dir / "refinement_checkpoint.pth"

    @property
    def training_csv(self) -> Path:
        """Per refinement epoch: learning rate, training loss/error, validation loss/error, seconds."""
        return self.results_dir / "dnnTraining.csv"

    @property
    def training_png(self) -> Path:
        return self.results_dir / "dnnTraining.png"

    # --- step 3: features -------------------------------------------------------
    @property
    def features_npy(self) -> Path:
        """float32 array, one row per line of :attr:`features_csv`."""
        return self.proc_dir / "features.npy"

    @property
    def features_csv(self) -> Path:
        """CSV ``row,path,label,split,ok``; ``ok=0`` rows could not be read (NaN features)."""
        return self.proc_dir / "features.csv"

    @property
    def features_json(self) -> Path:
        """How the features were made (backbone, resolution, precision, ...)."""
        return self.proc_dir / "features.json"

    # --- step 4: classifier -------------------------------------------------------
    @property
    def svm_joblib(self) -> Path:
        return self.proc_dir / "svm.joblib"

    @property
    def svm_json(self) -> Path:
        """Human-readable summary of the SVM: chosen C, CV table, labels, featurizer."""
        return self.proc_dir / "svm.json"

    # --- step 5: evaluation -------------------------------------------------------
    @property
    def metrics_json(self) -> Path:
        return self.results_dir / "metrics.json"

    @property
    def predictions_csv(self) -> Path:
        return self.results_dir / "predictions.csv"


def require(path: Path, made_by: str) -> Path:
    """Return ``path`` if it exists, else raise an error naming the step that makes it."""
    if not path.exists():
        raise MissingArtifactError(f"{path} does not exist: run {made_by} first")
    return path
