"""Batch scoring (step 7) on Spark: images in a folder, a data lake or a Parquet table -> a Parquet table of scores.

The input (``batch_inputDir``) is read by Spark itself, so it may be
anything Spark reads:

- a folder on this machine's file system (or one mounted at the same path
  on every executor): listed here as local script 7 lists it, the files
  opened by the executors;
- a folder URL (``s3a://bucket/images/``, ``abfss://...``, ``hdfs://...``):
  Spark's ``binaryFile`` source lists it recursively (image extensions only,
  hidden files and folders left out) and hands each file's bytes to the model;
- a Parquet table (a path ending in ``.parquet``) with a ``path`` column and,
  optionally, the image bytes in ``content`` (e.g. a ``binaryFile`` read
  saved earlier); without ``content`` the executors open ``path`` themselves.

The model is either the trained model under ``proc/<ds>/`` (its three files
shipped to the executors and loaded there into the same
:class:`~imgclass.model.predictor.Predictor` local script 7 uses), or, with
``deploy_modelUri``, an MLflow model applied with ``mlflow.pyfunc.spark_udf`` (resolved by the caller,
:func:`imgclass.serve.batch.score_batch`, like the local engine's).

The output (``spark_batchOutput``, default ``results/<ds>/batchScores.parquet``)
has one row per image: ``path`` (local files as absolute POSIX paths, like
local script 7; other inputs as Spark names them), ``ok``, ``error``
(``''`` when ok), ``label``, ``score`` (its calibrated probability),
``scores`` (``map<string,double>``: every class's probability),
``model_name`` and ``model_version``. An unreadable image is a row with
``ok = false``; the job does not fail for it. The table is replaced as a
whole on each run (Spark's ``overwrite``): a run is one job, re-run it to
score again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclass.errors import ImgClassError
from imgclass.io.images import IMAGE_EXTENSIONS, list_image_files
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters
from imgclass.spark.session import (default_parallelism, import_pyspark, ship_file, spark_location, spark_session,
                                    sql_conf)

#: the output table's columns and Spark types
SCORES_SCHEMA = ("path string, ok boolean, error string, label string, score double, scores map<string,double>, "
                 "model_name string, model_version string")
#: unreadable images listed in the report (all of them are rows of the table)
MAX_REPORTED_FAILURES = 20


@dataclass
class SparkBatchReport:
    """What :func:`score_on_spark` did."""

    input: str
    output: str
    n_images: int
    n_scored: int
    model_name: str
    model_version: str
    #: up to :data:`MAX_REPORTED_FAILURES` of ``(path, why it could not be read)``
    failures: list[tuple[str, str]] = field(default_factory=list)
    n_failed: int = 0
    seconds: float = 0.0
    #: of which starting Spark (the session and the model shipped)
    startup_seconds: float = 0.0

    def summary(self) -> str:
        """What ``scripts/7_batchScore.py`` prints with ``run_engine='spark'``."""
        lines = [f"Model {self.model_name} (version {self.model_version}) on Spark; scored {self.input}",
                 f"{self.n_images} images: {self.n_scored} scored, {self.n_failed} unreadable, in "
                 f"{self.seconds:.1f} s ({self.startup_seconds:.1f} s of it starting Spark)"]
        lines += [f"  {path}: {message}" for path, message in self.failures]
        if self.n_failed > len(self.failures):
            lines.append(f"  ... and {self.n_failed - len(self.failures)} more (rows with ok = false)")
        lines.append(f"Wrote {self.output}")
        return "\n".join(lines)


def image_glob() -> str:
    """``binaryFile``'s ``pathGlobFilter`` for the image extensions, any letter case (``*.{[jJ][pP][gG],...}``)."""
    def any_case(extension: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in extension.lstrip("."))

    return "*.{" + ",".join(any_case(e) for e in sorted(IMAGE_EXTENSIONS)) + "}"


def read_images(spark: Any, location: str) -> Any:
    """The images to score as a DataFrame of ``path`` and, when Spark read the files, ``content``.

    A folder on this machine's file system (local, or mounted on every
    executor) is listed here, as local script 7 lists it
    (:func:`imgclass.io.images.list_image_files`: the same images, absolute
    POSIX paths), and the executors open the files. A URL is listed and read
    by Spark's ``binaryFile`` source (recursive, image extensions only,
    hidden files and folders left out; Spark skips zero-byte files there).
    """
    from pyspark.sql import functions as F

    uri, local = spark_location(location)
    if location.rstrip("/").endswith(".parquet"):
        table = spark.read.parquet(uri)
        if "path" not in table.columns:
            raise ImgClassError(f"{location} has no 'path' column: batch scoring needs one (and may use 'content')")
        return table.select("path", "content") if "content" in table.columns else table.select("path")
    if local:
        folder = Path(location).expanduser().resolve()
        if not folder.is_dir():
            raise ImgClassError(f"batch input folder not found: {folder}")
        paths = [(f.resolve().as_posix(),) for f in list_image_files(folder)[0]]
        return spark.createDataFrame(paths, "path string")
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
             .option("pathGlobFilter", image_glob()).load(uri))
    below = F.expr(f"substring(path, {len(uri.rstrip('/')) + 2})")  # the part under the input folder
    return files.where(~below.rlike(r"(^|/)\.")).select("path", "content")


def batch_output(params: Parameters, layout: DatasetLayout) -> str:
    """``spark_batchOutput``, else ``results/<ds>/batchScores.parquet`` (:attr:`DatasetLayout.batch_scores_parquet`)."""
    return params.spark_batchOutput or str(layout.batch_scores_parquet)


def _score_with_predictor(spark: Any, images: Any, params: Parameters, layout: DatasetLayout) -> tuple[Any, str, str]:
    """The trained model under ``proc/<ds>/`` applied by :func:`imgclass.spark.executor.score_partition`."""
    import functools

    from imgclass.model.predictor import Predictor
    from imgclass.model.runtime import Runtime
    from imgclass.spark.executor import score_partition
    from imgclass.spark.featurize import task_threads

    runtime = Runtime.resolve(params.run_device, params.run_precision, 0)
    predictor = Predictor.load(layout.featurizer_pth, layout.svm_joblib, layout.svm_json, runtime, layout.dataset)
    svm = predictor.classifier is not None
    work = functools.partial(
        score_partition, featurizer_file=ship_file(spark, layout.featurizer_pth),
        svm_joblib=ship_file(spark, layout.svm_joblib) if svm else "",
        svm_json=ship_file(spark, layout.svm_json) if svm else "", name_prefix=layout.dataset,
        device=params.run_device, precision=runtime.precision, batch_size=params.run_mbSize,
        threads=task_threads(spark))
    return images.mapInArrow(work, SCORES_SCHEMA), predictor.model_name, predictor.model_version


@dataclass(frozen=True)
class MlflowModel:
    """An MLflow model to score with: what MLflow loads (``models:/<name>/<version>``, ``runs:/...``, a folder),
    the tracking/registry URI it is looked up in, and the name and version its rows report."""

    source: str
    tracking_uri: str
    name: str
    version: str


def _score_with_mlflow(spark: Any, images: Any, model: MlflowModel) -> tuple[Any, str, str]:
    """An MLflow model (``deploy_modelUri``) applied with ``mlflow.pyfunc.spark_udf``.

    The model (:mod:`imgclass.serve.pyfunc`'s format) takes base64 images or
    paths and answers ``label, score, allScores, error``; ``allScores`` is in
    the order of the model's labels, read here once.
    """
    try:
        import mlflow
    except ImportError:
        raise ImgClassError("deploy_modelUri needs MLflow: pip install mlflow") from None
    from pyspark.sql import functions as F

    previous = mlflow.get_tracking_uri()
    if model.tracking_uri:
        mlflow.set_tracking_uri(model.tracking_uri)
        mlflow.set_registry_uri(model.tracking_uri)
    try:
        loaded = mlflow.pyfunc.load_model(model.source)
        udf = mlflow.pyfunc.spark_udf(spark, model.source, env_manager="local",
                                      result_type="label string, score double, allScores array<double>, error string")
    finally:
        mlflow.set_tracking_uri(previous)
    labels = [str(label) for label in loaded.unwrap_python_model().predictor.labels]
    name = model.name or model.source
    version = model.version or loaded.metadata.run_id or loaded.metadata.model_uuid or ""
    source = (F.struct(F.base64("content").alias("image base64 string")) if "content" in images.columns
              else F.struct("path"))
    scored = images.withColumn("result", udf(source))
    ok = F.coalesce(F.col("result.error"), F.lit("")) == ""
    return scored.select(
        "path", ok.alias("ok"), F.coalesce(F.col("result.error"), F.lit("")).alias("error"),
        F.when(ok, F.col("result.label")).alias("label"), F.when(ok, F.col("result.score")).alias("score"),
        F.when(ok, F.map_from_arrays(F.array(*[F.lit(label) for label in labels]), F.col("result.allScores")))
        .alias("scores"),
        F.lit(name).alias("model_name"), F.lit(version).alias("model_version")), name, version


def score_on_spark(params: Parameters, progress: bool = False, model: MlflowModel | None = None) -> SparkBatchReport:
    """Step 7 with ``run_engine='spark'``: score every image of ``batch_inputDir`` into a Parquet table.

    ``batch_inputDir`` (default: the dataset's own images) and
    ``spark_batchOutput`` are read and written by Spark, so they may be
    local paths or any URL the cluster reads; ``run_mbSize`` images go
    through the network at a time (and through Arrow when the files' bytes
    travel with the rows), ``spark_partitions`` > 0 re-cuts the input into
    that many tasks. ``model``: an MLflow model to score with (default: the trained model under
    ``proc/<ds>/``).
    """
    import_pyspark()
    layout = DatasetLayout.from_parameters(params)
    location = params.batch_inputDir or str(layout.images_dir)
    output = batch_output(params, layout)
    start = time.perf_counter()
    with spark_session(params.spark_master, params.spark_conf, f"imgclass batch scoring ({layout.dataset})") as spark:
        images = read_images(spark, location)
        if params.spark_partitions > 0:
            images = images.repartition(params.spark_partitions)
        elif "content" not in images.columns:  # a table of paths is small: spread it over every core
            images = images.repartition(default_parallelism(spark))
        if model is not None:
            scored, name, version = _score_with_mlflow(spark, images, model)
        else:
            scored, name, version = _score_with_predictor(spark, images, params, layout)
        startup = time.perf_counter() - start
        output_uri = spark_location(output)[0]
        with sql_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(max(1, params.run_mbSize))}):
            scored.write.mode("overwrite").parquet(output_uri)
        table = spark.read.parquet(output_uri)
        n_images = table.count()
        failed = table.where(~table.ok)
        n_failed = failed.count()
        failures = [(row.path, row.error) for row in failed.orderBy("path").limit(MAX_REPORTED_FAILURES).collect()]
    return SparkBatchReport(location, output, n_images, n_images - n_failed, name, version, failures, n_failed,
                            time.perf_counter() - start, startup)
