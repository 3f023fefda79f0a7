"""Reading what earlier steps wrote: labels, the split, step 3's feature table.

Shared by steps 2-5 (and the notebooks); each reader names the script to run
when its file is missing.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgclass.data.splits import SplitRow, read_split
from imgclass.errors import MissingArtifactError
from imgclass.layout import DatasetLayout, require
from imgclass.parameters import Parameters
from imgclass.pipeline.select import effective_classifier

if TYPE_CHECKING:
    import numpy as np

PREPARE_SCRIPT = "scripts/1_prepareData.py"
FEATURIZE_SCRIPT = "scripts/3_runDNN.py"
#: key of ``features.json``: ``[size, mtime_ns]`` of the ``features.npy`` written with it
FEATURES_NPY_STAMP = "features_npy_stamp"


def read_labels(layout: DatasetLayout) -> list[str]:
    """Step 1's ``labels.json``: class names in class-id order."""
    return json.loads(require(layout.labels_json, PREPARE_SCRIPT).read_text(encoding="utf-8"))


def read_split_rows(layout: DatasetLayout) -> list[SplitRow]:
    """Step 1's ``split.csv``."""
    return read_split(require(layout.split_csv, PREPARE_SCRIPT))


@dataclass
class FeatureTable:
    """Features of the readable images with their split rows and class ids."""

    features: "np.ndarray"
    rows: list[SplitRow]
    y: "np.ndarray"
    labels: list[str]
    featurizer: dict[str, Any] = field(default_factory=dict)

    def subset(self, split: str) -> tuple["np.ndarray", "np.ndarray", list[SplitRow]]:
        import numpy as np

        mask = np.array([r.split == split for r in self.rows], dtype=bool)
        return self.features[mask], self.y[mask], [r for r, m in zip(self.rows, mask) if m]


def load_features(layout: DatasetLayout) -> FeatureTable:
    """Read step 3's output, dropping the rows of unreadable images."""
    import numpy as np

    features = np.load(require(layout.features_npy, FEATURIZE_SCRIPT), mmap_mode="r")
    with open(require(layout.features_csv, FEATURIZE_SCRIPT), newline="", encoding="utf-8") as handle:
        index = list(csv.DictReader(handle))
    if len(index) != len(features):
        raise MissingArtifactError(f"{layout.features_csv} and {layout.features_npy} disagree; "
                                   f"re-run {FEATURIZE_SCRIPT}")
    labels = read_labels(layout)
    label_ids = {label: i for i, label in enumerate(labels)}
    ok = np.array([r["ok"] == "1" for r in index], dtype=bool)
    rows = [SplitRow(r["path"], r["label"], r["split"]) for r, good in zip(index, ok) if good]
    unknown = sorted({r.label for r in rows} - set(label_ids))
    if unknown:
        raise MissingArtifactError(f"labels {unknown} are not in {layout.labels_json}; re-run steps 1-3")
    metadata = json.loads(layout.features_json.read_text(encoding="utf-8")) if layout.features_json.is_file() else {}
    _check_stamp(layout, metadata)
    return FeatureTable(np.asarray(features[ok], dtype=np.float32), rows,
                        np.array([label_ids[r.label] for r in rows], dtype=np.int64), labels, metadata)


def _check_stamp(layout: DatasetLayout, metadata: dict[str, Any]) -> None:
    """Refuse a ``features.npy`` older than the file step 3 wrote these tables with (a crash between the two)."""
    stamp = metadata.get(FEATURES_NPY_STAMP)
    if not stamp:  # written before the stamp existed, or by hand
        return
    info = layout.features_npy.stat()
    size, mtime_ns = stamp
    # Older than the file the tables were written with: the previous run's features.npy. (A newer one is a
    # copy of the folder that did not keep modification times: accepted, as its size says.)
    if info.st_size != size or info.st_mtime_ns < mtime_ns:
        raise MissingArtifactError(f"{layout.features_npy} is not the file {layout.features_json} was written with "
                                   f"(step 3 was interrupted while finishing?); re-run {FEATURIZE_SCRIPT}: it "
                                   "reuses the finished rows")


def load_features_for(params: Parameters) -> FeatureTable:
    """Step 3's output, checked to be what the classifier needs (class scores or features).

    The classifier is ``params.classifier``, or for ``'auto'`` the one step 2 chose.
    """
    table = load_features(DatasetLayout.from_parameters(params))
    output = table.featurizer.get("output", "features")
    classifier = effective_classifier(params)
    wanted = "logits" if classifier == "dnn" else "features"
    if output != wanted:
        made_for = "classifier='dnn'" if output == "logits" else "classifier='svm' or 'svmDnnRefined'"
        raise MissingArtifactError(f"the stored features were made for {made_for}, but classifier="
                                   f"'{classifier}': re-run scripts 2 and 3 with the current parameters")
    return table
