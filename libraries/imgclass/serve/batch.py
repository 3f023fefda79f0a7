"""Batch scoring (step 7): classify every image under a folder into a results database and a CSV.

Each scored image is one row of the table ``scores`` of the results database
(:mod:`imgclass.serve.database`: SQLite by default, PostgreSQL or another
SQLAlchemy URL in ``batch_database``), keyed by (path, model_name,
model_version). Rows are upserted batch by batch, one transaction each, so
an interrupted run loses at most one batch, and a re-run skips the images the
same model (same name and version, i.e. the same artifact files) has already
scored. The CSV is then rewritten from the table: every image of the folder
with this model's result, whether scored now or before.

Formats (open them without our code):

- table ``scores`` (:data:`COLUMNS`): ``path`` is the absolute POSIX path,
  ``score`` the calibrated probability of ``label``, ``all_scores`` a JSON
  object ``{label: probability}`` of every class, ``scored_at`` UTC ISO
  8601, ``margin`` the gap between the two most probable classes (small =
  unsure), ``folder`` the image's folder; see :mod:`imgclass.serve.database`.
- CSV with the same columns, sorted by path.

The service's results and labeling pages (:mod:`imgclass.serve.labeling`) read the same database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from imgclass.errors import ImgClassError
from imgclass.io.atomic import write_csv
from imgclass.io.images import list_image_files
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.serve.database import COLUMNS, TABLE, ResultsDatabase, database_url, score_rows

if TYPE_CHECKING:
    from imgclass.spark.batch import SparkBatchReport

STEP = StepSpec("batch", "scripts/7_batchScore.py",
                "classify every image under a folder into a CSV and a results database (resumable)",
                ("datasetName", "rootDir", "batch_inputDir", "batch_outputCsv", "batch_database", "run_mbSize",
                 "run_device", "run_precision", "run_workers", "deploy_modelUri", "mlflow_trackingUri", "run_engine",
                 "spark_master", "spark_partitions", "spark_conf", "spark_batchOutput"))


class FilePredictor(Protocol):
    """What batch scoring needs of a model (:class:`imgclass.model.predictor.Predictor` has it).

    ``predict_files`` yields batches with ``paths`` (the files classified),
    ``predictions.probabilities`` (one row per path) and ``failures``
    (``(file, message)`` of unreadable ones), like
    :class:`imgclass.model.predictor.FilePredictions`.
    """

    model_name: str
    model_version: str

    @property
    def labels(self) -> list[str]: ...

    def predict_files(self, paths: Sequence[str], batch_size: int = 32) -> Iterator[Any]: ...


@dataclass
class BatchReport:
    """What :func:`score_folder` did."""

    n_images: int
    n_scored: int
    n_skipped: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    csv_path: Path | None = None
    #: where the rows went: the database URL, password hidden
    database_path: str | None = None
    seconds: float = 0.0
    input_dir: Path | None = None
    model_name: str = ""
    model_version: str = ""

    def summary(self) -> str:
        """What ``scripts/7_batchScore.py`` prints."""
        lines = [f"Model {self.model_name} (version {self.model_version}); scored images under {self.input_dir}",
                 f"{self.n_images} images: {self.n_scored} scored in {self.seconds:.1f} s, "
                 f"{self.n_skipped} already scored by this model (skipped), {len(self.failures)} unreadable"]
        lines += [f"  {path}: {message}" for path, message in self.failures]
        lines.append(f"Wrote {self.csv_path} and table '{TABLE}' of {self.database_path}")
        return "\n".join(lines)


def open_database(database: str | Path | ResultsDatabase, default_sqlite: str | Path = "") -> ResultsDatabase:
    """The results database named by a SQLAlchemy URL or a SQLite file path (created if needed)."""
    if isinstance(database, ResultsDatabase):
        return database
    return ResultsDatabase(database_url(database, default_sqlite))


def scored_paths(database: ResultsDatabase, model_name: str, model_version: str) -> set[str]:
    """Paths this model has already scored."""
    return database.scored_paths(model_name, model_version)


def result_rows(paths: Sequence[str], probabilities: Any, labels: Sequence[str], model_name: str,
                model_version: str, scored_at: str) -> list[tuple[Any, ...]]:
    """Table rows (tuples in :data:`COLUMNS` order) for images and their ``(N, K)`` probabilities."""
    return [tuple(row[name] for name in COLUMNS)
            for row in score_rows(paths, probabilities, labels, model_name, model_version, scored_at)]


@dataclass
class ScoringProgress:
    """What :func:`score_paths` has done so far (also passed to its ``on_batch`` callback)."""

    n_todo: int
    n_skipped: int
    n_scored: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def score_paths(predictor: FilePredictor, paths: Sequence[str], database: ResultsDatabase, batch_size: int = 32,
                progress: bool = False,
                on_batch: Callable[[ScoringProgress], None] | None = None) -> ScoringProgress:
    """Score the images of ``paths`` (absolute POSIX paths) this model has not scored yet into ``database``.

    One upsert transaction per batch. Unreadable images are listed in
    ``failures`` (and tried again next time). The service's labeling queue
    calls this too, in a background thread, with ``on_batch`` reporting progress.
    """
    from tqdm import tqdm

    model_name, model_version = predictor.model_name, predictor.model_version
    labels = list(predictor.labels)
    done = database.scored_paths(model_name, model_version)
    todo = [p for p in paths if p not in done]
    state = ScoringProgress(n_todo=len(todo), n_skipped=len(paths) - len(todo))
    with tqdm(total=len(todo), desc="scoring", unit="img", disable=not progress) as bar:
        for batch in predictor.predict_files(todo, batch_size):
            state.failures.extend(batch.failures)
            if batch.paths:
                rows = score_rows(batch.paths, batch.predictions.probabilities, labels, model_name, model_version)
                database.upsert(rows)  # one transaction per batch: a crash loses at most this batch
                state.n_scored += len(rows)
            bar.update(len(batch.paths) + len(batch.failures))
            if on_batch is not None:
                on_batch(state)
    return state


def score_folder(predictor: FilePredictor, input_dir: str | Path, csv_path: str | Path,
                 database: str | Path | ResultsDatabase, batch_size: int = 32, progress: bool = False) -> BatchReport:
    """Classify every image under ``input_dir`` not yet scored by this model.

    Parameters
    ----------
    predictor:
        A loaded model, e.g. :class:`imgclass.model.predictor.Predictor`: its
        ``predict_files`` yields the calibrated ``probabilities`` of each batch.
    input_dir:
        Folder searched recursively (hidden files and folders are ignored).
    csv_path:
        CSV rewritten with this model's rows for every image of the folder.
    database:
        A SQLAlchemy URL, a SQLite file path or an open :class:`ResultsDatabase`; added to.
    batch_size:
        Images per forward pass and per database transaction.
    progress:
        Show a progress bar.

    Images that cannot be decoded are reported in ``failures`` and retried on the next run.
    """
    input_dir = Path(input_dir).expanduser().resolve()
    if not input_dir.is_dir():
        raise ImgClassError(f"batch input folder not found: {input_dir}")
    start = time.perf_counter()
    files, _ = list_image_files(input_dir)
    paths = [f.resolve().as_posix() for f in files]
    results = open_database(database)
    report = BatchReport(n_images=len(paths), n_scored=0, n_skipped=0, csv_path=Path(csv_path),
                         database_path=results.display_url, input_dir=input_dir, model_name=predictor.model_name,
                         model_version=predictor.model_version)
    try:
        state = score_paths(predictor, paths, results, batch_size, progress)
        report.n_scored, report.n_skipped, report.failures = state.n_scored, state.n_skipped, state.failures
        rows = results.model_rows(predictor.model_name, predictor.model_version, paths)
        write_csv(csv_path, COLUMNS, ([row[name] for name in COLUMNS] for row in rows))
    finally:
        if results is not database:
            results.close()
    report.seconds = time.perf_counter() - start
    return report


def score_images(params: Parameters, progress: bool = False) -> BatchReport:
    """Step 7: the trained model of ``datasetName`` classifies every image under ``batch_inputDir``.

    Defaults: the dataset's own images, ``results/<ds>/batchScores.csv`` and the SQLite
    database ``batchScores.sqlite`` (see :class:`~imgclass.layout.DatasetLayout`);
    ``batch_database`` may name another SQLite file or any SQLAlchemy URL (PostgreSQL).
    """
    from imgclass.serve.pyfunc import load_deployed_predictor

    layout = DatasetLayout.from_parameters(params)
    input_dir = Path(params.batch_inputDir) if params.batch_inputDir else layout.images_dir
    csv_path = Path(params.batch_outputCsv) if params.batch_outputCsv else layout.batch_scores_csv
    database = database_url(params.batch_database, layout.batch_scores_sqlite)
    predictor = load_deployed_predictor(params, params.run_workers)  # deploy_modelUri, or proc/<ds>/
    return score_folder(predictor, input_dir, csv_path, database, params.run_mbSize, progress)


def score_batch(params: Parameters, progress: bool = False) -> "BatchReport | SparkBatchReport":
    """Step 7 on the engine ``run_engine`` names: locally into the CSV and the results database, or on
    Spark into a Parquet table. Both classify with the same model: ``deploy_modelUri``, or ``proc/<ds>/``."""
    if params.run_engine != "spark":
        return score_images(params, progress)
    from imgclass.spark.batch import MlflowModel, score_on_spark

    model = None
    if params.deploy_modelUri:
        from imgclass.serve.pyfunc import resolve_model_source, resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(params.mlflow_trackingUri, params.root_path)
        source, registered = resolve_model_source(params.deploy_modelUri, tracking_uri)
        model = MlflowModel(source, tracking_uri, registered.name if registered else "",
                            registered.version if registered else "")
    return score_on_spark(params, progress, model)
