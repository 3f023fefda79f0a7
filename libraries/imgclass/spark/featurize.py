"""Step 3 on Spark: the split's images featurized by Spark's executors, into Parquet and back into the step.

:func:`featurize_on_spark` is the Spark engine's replacement for the local
inference loop (:func:`imgclass.model.inference.infer`) and keeps its
contract: it yields :class:`~imgclass.model.inference.OutputBatch` es (float32
outputs, NaN rows for unreadable images, the row positions, the errors), so
step 3 (:mod:`imgclass.pipeline.featurize`) writes ``features.npy``, ``.csv``,
``.json`` and the reuse index exactly as with the local engine, and steps 4-5
never know which engine ran.

On the way the executors' results become a Parquet table,
``proc/<ds>/features.parquet/`` (:attr:`DatasetLayout.features_parquet`), with one row per
image featurized in this run: ``path`` (relative to the dataset's image
folder, as in ``split.csv``), ``label``, ``split``, ``ok``, ``error``
(``''`` when ok) and ``features`` (``array<float>``, null when not ok). It is
written to a hidden staging folder first and renamed into place, so a failed
job leaves the previous table whole.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from imgclass.data.splits import SplitRow
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters
from imgclass.spark.session import (default_parallelism, import_pyspark, master_url, ship_file, spark_location,
                                    spark_session)

if TYPE_CHECKING:
    from imgclass.model.featurizer import Featurizer
    from imgclass.model.inference import OutputBatch
    from imgclass.model.runtime import Runtime

#: with ``spark_partitions = 0``, no partition (task) holds more images than this: a failed or slow task
#: costs at most this much work, and more tasks than cores let Spark balance uneven executors
MAX_IMAGES_PER_PARTITION = 10_000
#: the input and output columns of the step's Spark job
INPUT_SCHEMA = "index long, path string, label string, split string"
OUTPUT_SCHEMA = "path string, label string, split string, ok boolean, error string, features array<float>"


@dataclass
class SparkJob:
    """Where step 3's Spark job ran, for its report: filled in by :func:`featurize_on_spark` once the job is planned."""

    #: the session's master URL (a running session's own, which may not be ``spark_master``)
    master: str = ""
    #: tasks the image list was cut into
    partitions: int = 0

    def describe(self) -> str:
        """E.g. ``'Spark local[2], 2 partitions'``."""
        return f"Spark {self.master}, {self.partitions} partition{'s' * (self.partitions != 1)}"


def partition_count(n_images: int, spark_partitions: int, parallelism: int) -> int:
    """Tasks for ``n_images``: ``spark_partitions`` if set, else one per core, more above
    :data:`MAX_IMAGES_PER_PARTITION` images each; never more than there are images."""
    if spark_partitions > 0:
        wanted = spark_partitions
    else:
        wanted = max(parallelism, -(-n_images // MAX_IMAGES_PER_PARTITION))
    return max(1, min(wanted, n_images))


def task_threads(spark: object) -> int:
    """Compute threads of one task: ``spark.task.cpus`` (default 1), as Spark schedules it."""
    try:
        return max(1, int(spark.conf.get("spark.task.cpus", "1")))  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return 1


def _replace_folder(staging: Path, target: Path) -> None:
    """Put the finished ``staging`` folder at ``target``; the previous table goes only once the new one is there."""
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _read_batches(table_dir: Path, index_of: dict[str, int], dim: int, batch_size: int) -> Iterator["OutputBatch"]:
    """The Parquet table back on the driver as the inference loop's batches (rows in any order)."""
    import pyarrow.dataset as ds

    from imgclass.model.inference import OutputBatch

    dataset = ds.dataset(str(table_dir), format="parquet")
    for batch in dataset.to_batches(columns=["path", "ok", "error", "features"], batch_size=batch_size):
        if batch.num_rows == 0:
            continue
        ok = np.asarray(batch.column(1).to_numpy(zero_copy_only=False), dtype=bool)
        outputs = np.full((batch.num_rows, dim), np.nan, dtype=np.float32)
        if ok.any():
            values = batch.column(3).flatten().to_numpy(zero_copy_only=False)
            outputs[ok] = np.asarray(values, dtype=np.float32).reshape(int(ok.sum()), dim)
        errors = ["" if good else (error or "unreadable") for good, error in zip(ok, batch.column(2).to_pylist())]
        indices = np.array([index_of[path] for path in batch.column(0).to_pylist()], dtype=np.int64)
        yield OutputBatch(outputs, indices, errors)


def featurize_on_spark(params: Parameters, layout: DatasetLayout, featurizer: "Featurizer", rows: Sequence[SplitRow],
                       runtime: "Runtime", job: SparkJob | None = None) -> Iterator["OutputBatch"]:
    """Featurize ``rows`` on Spark; yield their outputs as the local inference loop does (indices into ``rows``).

    Parameters
    ----------
    params:
        ``spark_master``, ``spark_conf``, ``spark_partitions``, ``run_mbSize``
        (images per forward pass on an executor) and ``run_device`` (resolved
        on each executor).
    layout:
        The dataset: its ``featurizer.pth`` is shipped to the executors, its
        image folder is where they read the files (a path every executor
        sees: a shared or mounted file system, see docs/spark.md).
    featurizer:
        The loaded featurizer (its output width).
    rows:
        The images to featurize, paths relative to the image folder.
    runtime:
        Its precision, decided here once, is what every executor computes in.
    job:
        Filled in with the master and the partitions the job ran with (for step 3's report).
    """
    import_pyspark()
    from pyspark.sql.functions import col

    from imgclass.spark.executor import featurize_partition

    rows = list(rows)
    index_of = {row.path: i for i, row in enumerate(rows)}
    target = layout.features_parquet
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    with spark_session(params.spark_master, params.spark_conf, f"imgclass step 3 ({layout.dataset})") as spark:
        shipped = ship_file(spark, layout.featurizer_pth)
        partitions = partition_count(len(rows), params.spark_partitions, default_parallelism(spark))
        if job is not None:
            job.master, job.partitions = master_url(spark, params.spark_master), partitions
        images = spark.createDataFrame([(i, r.path, r.label, r.split) for i, r in enumerate(rows)], INPUT_SCHEMA)
        work = _bind(featurize_partition, featurizer_file=shipped, base_dir=str(layout.images_dir),
                     device=params.run_device, precision=runtime.precision, batch_size=params.run_mbSize,
                     threads=task_threads(spark))
        # contiguous runs of the split per task, in order (images of a class folder stay together on disk)
        result = (images.repartitionByRange(partitions, col("index")).sortWithinPartitions("index")
                  .select("path", "label", "split").mapInArrow(work, OUTPUT_SCHEMA))
        try:
            result.write.parquet(spark_location(str(staging))[0])
            _replace_folder(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    yield from _read_batches(target, index_of, featurizer.output_dim, max(1, params.run_mbSize))


def _bind(function: object, **settings: object) -> object:
    """``function`` with its settings bound; pickled by reference, so workers import it instead of unpickling code."""
    import functools

    return functools.partial(function, **settings)  # type: ignore[call-overload]
