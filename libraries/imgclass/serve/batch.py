"""Batch scoring (step 7): classify every image under a folder into a SQLite table and a CSV.

Each scored image is one row of the table ``scores`` (see :data:`COLUMNS`),
keyed by (path, model_name, model_version). Rows are committed batch by
batch, so an interrupted run loses at most one batch, and a re-run skips the
images the same model (same name and version, i.e. the same artifact files)
has already scored. The CSV is then rewritten from the table: every image of
the folder with this model's result, whether scored now or before.

Formats (open them without our code):

- SQLite ``scores(path TEXT, label TEXT, score REAL, all_scores TEXT,
  model_name TEXT, model_version TEXT, scored_at TEXT)``; ``path`` is the
  absolute POSIX path, ``score`` the calibrated probability of ``label``,
  ``all_scores`` a JSON object ``{label: probability}`` of every class,
  ``scored_at`` UTC ISO 8601.
- CSV with the same columns, sorted by path.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

from imgclass.errors import ImgClassError
from imgclass.io.atomic import write_csv
from imgclass.io.images import list_image_files
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec

STEP = StepSpec("batch", "scripts/7_batchScore.py",
                "classify every image under a folder into a CSV and a SQLite table (resumable)",
                ("datasetName", "rootDir", "batch_inputDir", "batch_outputCsv", "batch_database", "run_mbSize",
                 "run_device", "run_precision", "run_workers"))

TABLE = "scores"
COLUMNS = ("path", "label", "score", "all_scores", "model_name", "model_version", "scored_at")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    path TEXT NOT NULL,
    label TEXT NOT NULL,
    score REAL NOT NULL,
    all_scores TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    scored_at TEXT NOT NULL,
    PRIMARY KEY (path, model_name, model_version)
)
"""


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
    database_path: Path | None = None
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


def open_database(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) the SQLite database and its ``scores`` table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    connection.execute(_SCHEMA)
    connection.commit()
    return connection


def scored_paths(connection: sqlite3.Connection, model_name: str, model_version: str) -> set[str]:
    """Paths this model has already scored."""
    rows = connection.execute(f"SELECT path FROM {TABLE} WHERE model_name = ? AND model_version = ?",
                              (model_name, model_version))
    return {row[0] for row in rows}


def result_rows(paths: Sequence[str], probabilities: Any, labels: Sequence[str], model_name: str,
                model_version: str, scored_at: str) -> list[tuple[Any, ...]]:
    """Table rows (in :data:`COLUMNS` order) for images and their ``(N, K)`` probabilities."""
    rows = []
    for path, p in zip(paths, probabilities):
        best = max(range(len(labels)), key=lambda j: p[j])
        all_scores = json.dumps({label: round(float(p[j]), 6) for j, label in enumerate(labels)})
        rows.append((path, labels[best], float(p[best]), all_scores, model_name, model_version, scored_at))
    return rows


def _table_rows(connection: sqlite3.Connection, paths: Iterable[str], model_name: str,
                model_version: str) -> Iterator[tuple[Any, ...]]:
    wanted = set(paths)
    rows = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE model_name = ? AND "
                              "model_version = ? ORDER BY path", (model_name, model_version))
    return (row for row in rows if row[0] in wanted)


def score_folder(predictor: FilePredictor, input_dir: str | Path, csv_path: str | Path, database_path: str | Path,
                 batch_size: int = 32, progress: bool = False) -> BatchReport:
    """Classify every image under ``input_dir`` not yet scored by this model.

    Parameters
    ----------
    predictor:
        A loaded model, e.g. :class:`imgclass.model.predictor.Predictor`: its
        ``predict_files`` yields the calibrated ``probabilities`` of each batch.
    input_dir:
        Folder searched recursively (hidden files and folders are ignored).
    csv_path, database_path:
        Outputs; the database is added to, the CSV rewritten.
    batch_size:
        Images per forward pass and per database commit.
    progress:
        Show a progress bar.

    Images that cannot be decoded are reported in ``failures`` and retried on the next run.
    """
    from tqdm import tqdm

    input_dir = Path(input_dir).expanduser().resolve()
    if not input_dir.is_dir():
        raise ImgClassError(f"batch input folder not found: {input_dir}")
    start = time.perf_counter()
    files, _ = list_image_files(input_dir)
    paths = [f.resolve().as_posix() for f in files]
    model_name, model_version = predictor.model_name, predictor.model_version
    labels = list(predictor.labels)
    report = BatchReport(n_images=len(paths), n_scored=0, n_skipped=0, csv_path=Path(csv_path),
                         database_path=Path(database_path), input_dir=input_dir, model_name=model_name,
                         model_version=model_version)

    connection = open_database(database_path)
    try:
        done = scored_paths(connection, model_name, model_version)
        todo = [p for p in paths if p not in done]
        report.n_skipped = len(paths) - len(todo)
        with tqdm(total=len(todo), desc="scoring", unit="img", disable=not progress) as bar:
            for batch in predictor.predict_files(todo, batch_size):
                report.failures.extend(batch.failures)
                if batch.paths:
                    scored_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    rows = result_rows(batch.paths, batch.predictions.probabilities, labels, model_name,
                                       model_version, scored_at)
                    with connection:  # one transaction per batch: a crash loses at most this batch
                        connection.executemany(
                            f"INSERT OR REPLACE INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
                            f"({', '.join('?' * len(COLUMNS))})", rows)
                    report.n_scored += len(rows)
                bar.update(len(batch.paths) + len(batch.failures))
        write_csv(csv_path, COLUMNS, _table_rows(connection, paths, model_name, model_version))
    finally:
        connection.close()
    report.seconds = time.perf_counter() - start
    return report


def score_images(params: Parameters, progress: bool = False) -> BatchReport:
    """Step 7: the trained model of ``datasetName`` classifies every image under ``batch_inputDir``.

    Defaults: the dataset's own images, ``results/<ds>/batchScores.csv`` and
    ``batchScores.sqlite`` (see :class:`~imgclass.layout.DatasetLayout`).
    """
    from imgclass.serve.predictor import load_predictor

    layout = DatasetLayout.from_parameters(params)
    input_dir = Path(params.batch_inputDir) if params.batch_inputDir else layout.images_dir
    csv_path = Path(params.batch_outputCsv) if params.batch_outputCsv else layout.batch_scores_csv
    database = Path(params.batch_database) if params.batch_database else layout.batch_scores_sqlite
    predictor = load_predictor(layout, params.run_device, params.run_precision, params.run_workers)
    return score_folder(predictor, input_dir, csv_path, database, params.run_mbSize, progress)
