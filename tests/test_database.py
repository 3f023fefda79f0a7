"""Tests of imgclass.serve.database and batch scoring into it, on SQLite AND on PostgreSQL.

Every test taking ``url`` runs twice: against a SQLite file and against a
fresh database of a throw-away PostgreSQL server started once for this module
(tests/pg_server.py: initdb into a temporary folder, pg_ctl on a free
loopback port). Where PostgreSQL's server programs are missing the
PostgreSQL runs are skipped, saying so (``.ci/run`` installs them).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, inspect, text

from imgclass.serve.batch import score_folder
from imgclass.serve.database import (COLUMNS, SCHEMA_VERSION, DatabaseError, ResultsDatabase, ResultsFilter,
                                     database_url, score_rows)
from pg_server import create_database, server_binaries, throwaway_postgres

LABELS = ["cat", "dog", "fox"]
_numbers = itertools.count()


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    if server_binaries() is None:
        pytest.skip("PostgreSQL's server programs are not installed (Debian: apt-get install postgresql; "
                    ".ci/run does it)")
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return database_url(tmp_path / "scores.sqlite", "")
    return create_database(request.getfixturevalue("postgres_server"), f"test_{next(_numbers)}")


@pytest.fixture()
def db(url: str) -> Iterator[ResultsDatabase]:
    with ResultsDatabase(url) as database:
        yield database


def rows_for(paths: Sequence[str], probabilities: Sequence[Sequence[float]], version: str = "v1",
             scored_at: str = "2026-01-01T00:00:00+00:00") -> list[dict]:
    return score_rows(list(paths), np.array(probabilities), LABELS, "pets", version, scored_at)


# --------------------------------------------------------------------------- schema
def test_tables_indexes_and_schema_version(db: ResultsDatabase) -> None:
    inspector = inspect(db.engine)
    assert {"scores", "review_requests", "schema_version"} <= set(inspector.get_table_names())
    assert [c["name"] for c in inspector.get_columns("scores")] == list(COLUMNS)
    assert inspector.get_pk_constraint("scores")["constrained_columns"] == ["path", "model_name", "model_version"]
    indexed = {tuple(index["column_names"]) for index in inspector.get_indexes("scores")}
    assert {("label",), ("score",), ("model_version",), ("margin",), ("folder",)} <= indexed
    assert db.schema_version() == SCHEMA_VERSION


def test_reopening_keeps_rows_and_a_newer_schema_is_refused(url: str) -> None:
    with ResultsDatabase(url) as first:
        first.upsert(rows_for(["/a/x.jpg"], [[0.6, 0.3, 0.1]]))
    with ResultsDatabase(url) as again:
        assert again.scored_paths("pets", "v1") == {"/a/x.jpg"} and again.schema_version() == SCHEMA_VERSION
        with again.engine.begin() as connection:
            connection.execute(text("UPDATE schema_version SET version = 99"))
    with pytest.raises(DatabaseError, match="schema version 99, newer than"):
        ResultsDatabase(url)


def test_a_version_1_table_is_brought_up_to_date(url: str) -> None:
    """The table earlier releases wrote (no margin, no folder, no schema_version) gains both columns."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE scores (path TEXT NOT NULL, label TEXT NOT NULL, score REAL NOT NULL, "
                                "all_scores TEXT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, "
                                "scored_at TEXT NOT NULL, PRIMARY KEY (path, model_name, model_version))"))
        connection.execute(text("INSERT INTO scores VALUES ('/data/a/x.jpg', 'dog', 0.5, :s, 'pets', 'v0', 't')"),
                           {"s": json.dumps({"cat": 0.3, "dog": 0.5, "fox": 0.2})})
    engine.dispose()
    with ResultsDatabase(url) as db:
        assert db.schema_version() == SCHEMA_VERSION
        [row] = db.model_rows("pets", "v0")
        assert row["margin"] == pytest.approx(0.2) and row["folder"] == "/data/a" and row["label"] == "dog"


# --------------------------------------------------------------------------- writing and reading
def test_upsert_by_path_and_model_version(db: ResultsDatabase) -> None:
    db.upsert(rows_for(["/d/a.jpg", "/d/b.jpg"], [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]))
    db.upsert(rows_for(["/d/a.jpg"], [[0.1, 0.1, 0.8]]))  # the same model again: the row is replaced
    db.upsert(rows_for(["/d/a.jpg"], [[0.4, 0.4, 0.2]], version="v2",  # another version: a row of its own
                       scored_at="2026-02-01T00:00:00+00:00"))
    v1 = {row["path"]: row for row in db.model_rows("pets", "v1")}
    assert set(v1) == {"/d/a.jpg", "/d/b.jpg"}
    assert v1["/d/a.jpg"]["label"] == "fox" and v1["/d/a.jpg"]["score"] == pytest.approx(0.8)
    assert json.loads(v1["/d/a.jpg"]["all_scores"]) == {"cat": 0.1, "dog": 0.1, "fox": 0.8}
    assert v1["/d/b.jpg"]["margin"] == pytest.approx(0.2) and v1["/d/b.jpg"]["folder"] == "/d"
    [v2] = db.model_rows("pets", "v2")
    assert v2["margin"] == pytest.approx(0.0)
    assert [(m.model_version, m.images) for m in db.model_versions()] == [("v2", 1), ("v1", 2)]  # newest first
    assert list(db.model_rows("pets", "v1", ["/d/b.jpg"]))[0]["path"] == "/d/b.jpg"


def test_filters_and_least_sure_first(db: ResultsDatabase) -> None:
    paths = ["/img/cats/1.jpg", "/img/cats/2.jpg", "/img/dogs/1.jpg", "/img/dogs/old/2.jpg", "/img/dogs_x/3.jpg",
             "/img/50%_off/4.jpg"]
    probabilities = [[0.9, 0.05, 0.05], [0.45, 0.4, 0.15], [0.1, 0.8, 0.1], [0.3, 0.35, 0.35], [0.2, 0.7, 0.1],
                     [0.6, 0.3, 0.1]]
    db.upsert(rows_for(paths, probabilities))
    db.upsert(rows_for(paths[:1], [[0.2, 0.2, 0.6]], version="v2"))

    total, rows = db.query(ResultsFilter(model_version="v1"), "least_sure")
    assert total == 6
    assert [r["path"] for r in rows][:2] == ["/img/dogs/old/2.jpg", "/img/cats/2.jpg"]  # margins 0.0, 0.05
    margins = [r["margin"] for r in rows]
    assert margins == sorted(margins)

    assert db.query(ResultsFilter(label="dog", model_version="v1"))[0] == 3
    total, rows = db.query(ResultsFilter(score_min=0.6, score_max=0.85, model_version="v1"), "score_desc")
    assert [r["score"] for r in rows] == pytest.approx([0.8, 0.7, 0.6])
    # a folder and its sub-folders, not its namesakes; LIKE's wildcards in a name are plain characters
    assert {r["path"] for r in db.query(ResultsFilter(folder="/img/dogs"))[1]} == {"/img/dogs/1.jpg",
                                                                                   "/img/dogs/old/2.jpg"}
    assert db.query(ResultsFilter(folder="/img/50%_off"))[0] == 1
    assert db.query(ResultsFilter(folder="/img/5"))[0] == 0
    assert db.query(ResultsFilter(model_version="v2"))[0] == 1 and db.query()[0] == 7
    total, page = db.query(ResultsFilter(model_version="v1"), "path", limit=2, offset=2)
    assert total == 6 and [r["path"] for r in page] == ["/img/cats/2.jpg", "/img/dogs/1.jpg"]
    assert db.distinct("label") == ["cat", "dog", "fox"]
    assert db.distinct("folder", "v2") == ["/img/cats"]
    assert db.has_path("/img/cats/1.jpg") and not db.has_path("/etc/passwd")
    with pytest.raises(DatabaseError, match="unknown sort"):
        db.query(sort="path; DROP TABLE scores")


def test_review_requests(db: ResultsDatabase) -> None:
    db.request_review("/img/a.jpg")
    db.request_review("/img/b.jpg")
    db.request_review("/img/a.jpg")  # asked again: one request
    assert set(db.review_requests()) == {"/img/a.jpg", "/img/b.jpg"}
    db.drop_review_requests(["/img/a.jpg"])
    assert list(db.review_requests()) == ["/img/b.jpg"]


# --------------------------------------------------------------------------- batch scoring into either database
@dataclass
class _Predictions:
    probabilities: np.ndarray


@dataclass
class _Batch:
    paths: list[str]
    predictions: _Predictions
    failures: list[tuple[str, str]]


class RedGreenBlue:
    """Calls an image by its brightest channel (a stand-in model: the bookkeeping is under test)."""

    labels = ["blue", "green", "red"]
    model_name = "rgb"

    def __init__(self, version: str):
        self.model_version = version

    def predict_files(self, paths: Sequence[str], batch_size: int = 32) -> Iterator[_Batch]:
        for first in range(0, len(paths), batch_size):
            chunk = list(paths[first:first + batch_size])
            rows = []
            for path in chunk:
                r, g, b = np.asarray(Image.open(path).convert("RGB"), dtype=float).reshape(-1, 3).mean(0) + 1
                rows.append(np.array([b, g, r]) / (r + g + b))
            yield _Batch(chunk, _Predictions(np.array(rows)), [])


def test_batch_scoring_writes_and_resumes_on_either_database(url: str, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, rgb in {"r": (200, 20, 20), "g": (20, 200, 20), "b": (20, 20, 200)}.items():
        Image.new("RGB", (8, 8), rgb).save(folder / f"{name}.png")
    report = score_folder(RedGreenBlue("v1"), folder, tmp_path / "out.csv", url, batch_size=2)
    assert (report.n_scored, report.n_skipped) == (3, 0)
    again = score_folder(RedGreenBlue("v1"), folder, tmp_path / "out.csv", url, batch_size=2)
    assert (again.n_scored, again.n_skipped) == (0, 3)
    with ResultsDatabase(url) as db:
        labels = {Path(r["path"]).name: r["label"] for r in db.model_rows("rgb", "v1")}
    assert labels == {"r.png": "red", "g.png": "green", "b.png": "blue"}
    assert "out.csv" in report.summary() and "scores" in report.summary()


# --------------------------------------------------------------------------- URLs and errors
def test_database_url_forms(tmp_path: Path) -> None:
    default = tmp_path / "results" / "batchScores.sqlite"
    assert database_url("", default) == "sqlite:///" + default.as_posix()
    assert database_url(str(tmp_path / "mine.db"), default) == "sqlite:///" + (tmp_path / "mine.db").as_posix()
    assert database_url("postgresql://u:secret@db.example:5432/scores", default) == \
        "postgresql+psycopg://u:secret@db.example:5432/scores"
    assert database_url("sqlite:////tmp/x.sqlite", default) == "sqlite:////tmp/x.sqlite"
    with pytest.raises(DatabaseError, match="not a database URL"):
        database_url("::://", default)


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DatabaseError) as caught:
        ResultsDatabase(f"postgresql+psycopg://someone:hunter2secret@127.0.0.1:{port}/scores?connect_timeout=3")
    message = str(caught.value)
    assert "cannot open the results database" in message and "hunter2secret" not in message and "***" in message


def test_a_missing_driver_is_named() -> None:
    with pytest.raises(DatabaseError, match="no driver"):
        ResultsDatabase("postgresql+nosuchdriver://u@127.0.0.1/x")


def test_the_sqlite_file_is_readable_without_our_code(tmp_path: Path) -> None:
    path = tmp_path / "plain.sqlite"
    with ResultsDatabase(database_url(path, "")) as db:
        db.upsert(rows_for(["/x/a.jpg"], [[0.2, 0.7, 0.1]]))
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT path, label, model_version FROM scores").fetchall() == \
            [("/x/a.jpg", "dog", "v1")]
