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

import csv
import json
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from imgclass.io.atomic import atomic_path
from imgclass.errors import ImgClassError
from imgclass.io.images import UnreadableImageError, list_image_files, load_rgb

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


def _write_csv(connection: sqlite3.Connection, csv_path: Path, paths: Sequence[str], model_name: str,
               model_version: str) -> None:
    wanted = set(paths)
    rows = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE model_name = ? AND "
                              "model_version = ? ORDER BY path", (model_name, model_version))
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            writer.writerows(row for row in rows if row[0] in wanted)


def score_folder(predictor: Any, input_dir: str | Path, csv_path: str | Path, database_path: str | Path,
                 batch_size: int = 32, progress: bool = True) -> BatchReport:
    """Classify every image under ``input_dir`` not yet scored by this model.

    Parameters
    ----------
    predictor:
        A loaded model with ``predict(images)`` (calibrated ``probabilities``),
        ``labels``, ``model_name`` and ``model_version``, e.g.
        :class:`imgclass.serve.predictor.Predictor`.
    input_dir:
        Folder searched recursively (hidden files and folders are ignored).
    csv_path, database_path:
        Outputs; the database is added to, the CSV rewritten.
    batch_size:
        Images per forward pass and per database commit.
    progress:
        Show a tqdm progress bar.

    Images that cannot be decoded are reported in ``failures`` and retried on the next run.
    """
    input_dir = Path(input_dir).expanduser().resolve()
    if not input_dir.is_dir():
        raise ImgClassError(f"batch input folder not found: {input_dir}")
    start = time.perf_counter()
    files, _ = list_image_files(input_dir)
    paths = [f.resolve().as_posix() for f in files]
    model_name, model_version = predictor.model_name, predictor.model_version
    labels = list(predictor.labels)
    draft_size = getattr(getattr(predictor, "transform", None), "draft_size", None)
    report = BatchReport(n_images=len(paths), n_scored=0, n_skipped=0, csv_path=Path(csv_path),
                         database_path=Path(database_path))

    connection = open_database(database_path)
    try:
        done = scored_paths(connection, model_name, model_version)
        todo = [p for p in paths if p not in done]
        report.n_skipped = len(paths) - len(todo)
        with tqdm(total=len(todo), desc="scoring", unit="img", disable=not progress) as bar:
            for first in range(0, len(todo), batch_size):
                batch_paths, images = [], []
                for path in todo[first:first + batch_size]:
                    try:
                        images.append(load_rgb(path, draft_size=draft_size))
                        batch_paths.append(path)
                    except UnreadableImageError as exc:
                        report.failures.append((path, str(exc)))
                if images:
                    probabilities = predictor.predict(images).probabilities
                    scored_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    rows = result_rows(batch_paths, probabilities, labels, model_name, model_version, scored_at)
                    with connection:  # one transaction per batch: a crash loses at most this batch
                        connection.executemany(
                            f"INSERT OR REPLACE INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
                            f"({', '.join('?' * len(COLUMNS))})", rows)
                    report.n_scored += len(rows)
                bar.update(min(batch_size, len(todo) - first))
        _write_csv(connection, Path(csv_path), paths, model_name, model_version)
    finally:
        connection.close()
    report.seconds = time.perf_counter() - start
    return report
