"""Step 3: features of every image in ``split.csv`` -> ``features.npy`` + ``features.csv`` + ``features.json``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from imgclass.io.atomic import write_csv, write_json
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.pipeline.artifacts import read_split_rows

STEP = StepSpec("featurize", "scripts/3_runDNN.py", "featurize every image of the split with the DNN of step 2",
                ("datasetName", "rootDir", "classifier", "run_mbSize", "run_device", "run_workers", "run_precision"))

FEATURES_CSV_COLUMNS = ("row", "path", "label", "split", "ok")


@dataclass
class FeaturizeReport:
    n_images: int
    feature_dim: int
    failures: list[tuple[str, str]]
    seconds: float
    device: str
    precision: str
    workers: int
    #: images whose stored features were reused (unchanged file, featurizer and precision)
    n_reused: int = 0

    @property
    def n_featurized(self) -> int:
        """Images that went through the network in this run."""
        return self.n_images - self.n_reused


def featurize_dataset(params: Parameters, progress: bool = True) -> FeaturizeReport:
    """Step 3: features of every image in ``split.csv`` -> ``features.npy`` + ``features.csv`` + ``.json``.

    Features of images that are unchanged since the last run (same path, size
    and mtime) and were made by the same featurizer (weights and input
    recipe) at the same precision are copied from the previous
    ``features.npy`` instead of recomputed (see :mod:`imgclass.model.feature_store`).
    Rows are written batch by batch at their offsets in the file, so memory does
    not grow with the number of images.
    """
    from imgclass.model.feature_store import file_stamp, find_reusable_features, make_recipe, write_cache_index
    from imgclass.model.inference import FeatureWriter, Featurizer, ImageFileDataset, effective_workers, \
        extract_features
    from imgclass.model.runtime import featurize_workers, resolve_device, resolve_precision

    layout = DatasetLayout.from_parameters(params)
    rows = read_split_rows(layout)
    featurizer = Featurizer.load(layout.featurizer_pth)
    device = resolve_device(params.run_device)
    dtype = resolve_precision(params.run_precision, device)
    workers = featurize_workers(params.run_workers, device)
    precision = str(dtype).replace("torch.", "")
    start = time.perf_counter()
    paths = [r.path for r in rows]
    stamps = [file_stamp(layout.images_dir / p) for p in paths]
    recipe = make_recipe(featurizer.fingerprint(), precision)
    reusable = find_reusable_features(layout.features_cache_json, layout.features_npy, paths, stamps, recipe,
                                      featurizer.output_dim)
    todo = reusable.missing(len(rows))
    failures: list[tuple[int, str]] = []
    workers = effective_workers(len(todo), params.run_mbSize, workers, device)
    with FeatureWriter(layout.features_npy, len(rows), featurizer.output_dim) as writer:
        reusable.copy_into(writer)
        if len(todo):
            dataset = ImageFileDataset([layout.images_dir / paths[i] for i in todo], featurizer.transform)
            failures = [(int(todo[i]), message) for i, message in extract_features(
                featurizer.network, dataset, lambda batch, values: writer(todo[batch], values), params.run_mbSize,
                device, dtype, workers, progress)]
    seconds = time.perf_counter() - start
    failed = {index for index, _ in failures}
    write_csv(layout.features_csv, FEATURES_CSV_COLUMNS,
              ((i, r.path, r.label, r.split, int(i not in failed)) for i, r in enumerate(rows)))
    write_json(layout.features_json, {**featurizer.describe(), "classifier": params.classifier,
                                      "precision": precision, "n_images": len(rows),
                                      "n_unreadable": len(failures), "n_reused_from_cache": len(reusable)})
    write_cache_index(layout.features_cache_json, layout.features_npy, recipe, paths, stamps,
                      (i not in failed for i in range(len(rows))))
    return FeaturizeReport(len(rows), featurizer.output_dim,
                           [(rows[i].path, message) for i, message in sorted(failures)],
                           seconds, str(device), precision, workers, len(reusable))
