"""Step 3: features of every image in ``split.csv`` -> ``features.npy`` + ``features.csv`` + ``features.json``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from imgclass.io.atomic import write_csv, write_json
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.pipeline.artifacts import FEATURES_NPY_STAMP, read_split_rows
from imgclass.pipeline.select import effective_classifier

STEP = StepSpec("featurize", "scripts/3_runDNN.py", "featurize every image of the split with the DNN of step 2",
                ("datasetName", "rootDir", "classifier", "run_mbSize", "run_device", "run_workers", "run_precision",
                 "run_engine", "spark_master", "spark_partitions", "spark_conf"))

FEATURES_CSV_COLUMNS = ("row", "path", "label", "split", "ok")


@dataclass
class FeaturizeReport:
    """What step 3 did: how many images, how fast, where, and which could not be read."""

    layout: DatasetLayout
    n_images: int
    feature_dim: int
    failures: list[tuple[str, str]]
    seconds: float
    device: str
    precision: str
    #: the local engine's worker processes (0 when Spark ran the step)
    workers: int
    #: images whose stored features were reused (unchanged file, featurizer and precision)
    n_reused: int = 0
    #: what ran the network when it was not the local engine, e.g. ``'Spark local[2], 2 partitions'``
    engine: str = ""
    #: images whose features an interrupted run had already committed (taken over, not recomputed)
    n_resumed: int = 0

    @property
    def n_featurized(self) -> int:
        """Images that went through the network in this run."""
        return self.n_images - self.n_reused - self.n_resumed

    def summary(self) -> str:
        """What ``scripts/3_runDNN.py`` prints."""
        lines = []
        if self.n_featurized:
            rate = self.n_featurized / self.seconds if self.seconds > 0 else float("inf")
            ran = self.engine or f"{self.workers} worker process{'es' * (self.workers != 1)}"
            lines.append(f"Featurized {self.n_featurized} image{'s' * (self.n_featurized != 1)} -> "
                         f"{self.feature_dim} floats each in {self.seconds:.1f} s ({rate:.1f} img/s; device "
                         f"{self.device}, {self.precision}, {ran})")
        if self.n_resumed:
            lines.append(f"Resumed an interrupted run: reused the {self.n_resumed} rows it had committed (of "
                         f"{self.n_images} images; same featurizer, {self.precision}, unchanged files)")
        if self.n_reused:
            lines.append(f"Reused the stored features of {self.n_reused} of {self.n_images} images (unchanged "
                         f"files, same featurizer, {self.precision}); delete {self.layout.features_cache_json} to "
                         "recompute them")
        if self.failures:
            lines.append(f"{len(self.failures)} image(s) could not be read and are left out:")
            lines += [f"  {path}: {message}" for path, message in self.failures]
        lines.append(f"Wrote {self.layout.features_npy} (+ .csv, .json; {self.n_images} images)")
        return "\n".join(lines)


def featurize_dataset(params: Parameters, progress: bool = True, commit_seconds: float | None = None,
                      resumable: bool = True) -> FeaturizeReport:
    """Step 3: features of every image in ``split.csv`` -> ``features.npy`` + ``features.csv`` + ``.json``.

    Features of images that are unchanged since the last run (same path, size
    and mtime) and were made by the same featurizer (weights and input
    recipe) at the same precision are copied from the previous
    ``features.npy`` instead of recomputed (see :mod:`imgclass.model.feature_store`).
    The rest go through the inference loop (:func:`imgclass.model.inference.infer`),
    and each batch is written at its offset in the file as it comes, so memory
    does not grow with the number of images.

    The progress is committed every ``commit_seconds`` (default
    :data:`imgclass.model.feature_store.COMMIT_SECONDS`), so a run that is
    killed leaves its finished rows in ``features.partial/`` and the next run
    takes them over (``n_resumed``) instead of featurizing them again
    (:class:`imgclass.model.feature_store.ResumableFeatureWriter`). The Spark
    engine's batches go through the same writer, but they reach it only
    when its job is done: a run killed during the Spark job keeps only what
    was committed before it. ``resumable=False`` keeps no progress (the
    behaviour before resuming existed; benchmarks/featurize_resume.py compares the two).
    """
    import numpy as np

    from imgclass.model.dataset import ImageDataset
    from imgclass.model.feature_store import ResumableFeatureWriter, file_stamp, find_reusable_features, \
        make_recipe, write_cache_index
    from imgclass.model.featurizer import Featurizer
    from imgclass.model.inference import infer
    from imgclass.model.runtime import Runtime
    from imgclass.spark.featurize import SparkJob, featurize_on_spark

    layout = DatasetLayout.from_parameters(params)
    rows = read_split_rows(layout)
    featurizer = Featurizer.load(layout.featurizer_pth)
    runtime = Runtime.resolve(params.run_device, params.run_precision, params.run_workers)
    start = time.perf_counter()
    paths = [r.path for r in rows]
    stamps = [file_stamp(layout.images_dir / p) for p in paths]
    recipe = make_recipe(featurizer.fingerprint(), runtime.precision)
    failures: list[tuple[int, str]] = []
    spark_job = SparkJob() if params.run_engine == "spark" else None  # where Spark ran it, once it has
    with ResumableFeatureWriter(layout.features_npy, paths, stamps, recipe, featurizer.output_dim,
                                commit_seconds, resumable) as writer:
        reusable = find_reusable_features(layout.features_cache_json, layout.features_npy, paths, stamps, recipe,
                                          featurizer.output_dim).without(writer.done)
        reusable.copy_into(writer.write)
        writer.maybe_commit()
        todo = np.flatnonzero(~writer.done)
        workers = runtime.workers("inference", -(-len(todo) // params.run_mbSize)) if spark_job is None else 0
        if len(todo):
            dataset = ImageDataset([layout.images_dir / paths[i] for i in todo], featurizer.transform)
            for batch in (infer(featurizer.network, dataset, params.run_mbSize, runtime, progress)
                          if spark_job is None else  # run_engine='spark': the same batches from Spark
                          featurize_on_spark(params, layout, featurizer, [rows[i] for i in todo], runtime,
                                             spark_job)):
                writer.write(todo[batch.indices], batch.outputs, batch.readable)
                writer.maybe_commit()
                failures += [(int(todo[i]), message) for i, message in batch.failures]
        failed = {index for index, _ in failures}

        def write_tables(npy: Path) -> None:
            # Before the rename onto features.npy, stamped with the finished file (a rename keeps its size and
            # mtime): a crash between the two leaves tables that name no features.npy, which load_features
            # reports instead of pairing them with the previous run's rows.
            write_cache_index(layout.features_cache_json, npy, recipe, paths, stamps,
                              (i not in failed for i in range(len(rows))))
            write_csv(layout.features_csv, FEATURES_CSV_COLUMNS,
                      ((i, r.path, r.label, r.split, int(i not in failed)) for i, r in enumerate(rows)))
            write_json(layout.features_json, {**featurizer.describe(), "classifier": effective_classifier(params),
                                              "precision": runtime.precision, "n_images": len(rows),
                                              "n_unreadable": len(failures), "n_reused_from_cache": len(reusable),
                                              "n_resumed_from_interrupted_run": writer.n_resumed,
                                              FEATURES_NPY_STAMP: list(file_stamp(npy) or ())})

        writer.finish(write_tables)
    seconds = time.perf_counter() - start
    return FeaturizeReport(layout, len(rows), featurizer.output_dim,
                           [(rows[i].path, message) for i, message in sorted(failures)],
                           seconds, str(runtime.device), runtime.precision, workers, len(reusable),
                           spark_job.describe() if spark_job is not None else "", writer.n_resumed)
