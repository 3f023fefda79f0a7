"""Batch scoring's results database: one schema, SQLite embedded by default, PostgreSQL the same way.

Batch scoring (step 7) writes one row per (image, model version); the
results page and the labeling queue of the service read them. The database
is named by a SQLAlchemy URL (``batch_database``):

- ``''``: the SQLite file ``results/<ds>/batchScores.sqlite`` (nothing to install or run);
- a plain file path: a SQLite file there (what ``batch_database`` took before it took URLs);
- ``sqlite:////abs/path.sqlite``, ``postgresql+psycopg://user:password@host:5432/dbname``
  (or ``postgresql://...``: the psycopg 3 driver is used), or any URL SQLAlchemy knows.

SQLAlchemy (Core, no ORM) writes the same tables and indexes on every
backend, and its dialects give each backend's own upsert (``INSERT ... ON
CONFLICT DO UPDATE``), so the code does not branch on the database beyond
choosing that statement. A password in a URL is never printed:
:attr:`ResultsDatabase.display_url` hides it.

Tables (open them without our code):

``scores``
    ``path TEXT, label TEXT, score FLOAT, all_scores TEXT, model_name TEXT,
    model_version TEXT, scored_at TEXT, margin FLOAT, folder TEXT``; primary
    key (path, model_name, model_version), so a re-run of the same model
    updates its row (upsert) and another model version adds its own. ``path``
    is the absolute POSIX path, ``score`` the calibrated probability of
    ``label``, ``all_scores`` a JSON object ``{label: probability}``,
    ``scored_at`` UTC ISO 8601, ``margin`` the gap between the two most
    probable classes (small = unsure: the results page's "least sure first"),
    ``folder`` the image's folder (for filtering). Indexed on label, score,
    model_version, margin and folder.
``review_requests``
    ``path TEXT PRIMARY KEY, requested_at TEXT``: images a person sent from
    the results page to the labeling queue (they are shown first).
``schema_version``
    one row, ``version INTEGER``: :data:`SCHEMA_VERSION`. A database of an
    older version is brought up to date when opened (version 1, the SQLite
    table of earlier releases without ``margin`` and ``folder``, gains them,
    computed from its rows); a newer one is refused with a clear error rather
    than misread.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import (Column, Float, Index, Integer, MetaData, Table, Text, create_engine, delete, event, func,
                        inspect, or_, select, text)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from imgclass.errors import ImgClassError
from imgclass.model.scores import uncertainty

#: Version of the tables below; bumped (with a migration in :meth:`ResultsDatabase._migrate`) when they change.
SCHEMA_VERSION = 2

TABLE = "scores"
#: Columns of ``scores`` (and of batch scoring's CSV), in order.
COLUMNS = ("path", "label", "score", "all_scores", "model_name", "model_version", "scored_at", "margin", "folder")
#: The key a row is upserted by.
KEY = ("path", "model_name", "model_version")

metadata = MetaData()
scores_table = Table(
    TABLE, metadata,
    Column("path", Text, primary_key=True),
    Column("label", Text, nullable=False),
    Column("score", Float, nullable=False),
    Column("all_scores", Text, nullable=False),
    Column("model_name", Text, primary_key=True),
    Column("model_version", Text, primary_key=True),
    Column("scored_at", Text, nullable=False),
    Column("margin", Float, nullable=False),
    Column("folder", Text, nullable=False),
    Index("ix_scores_label", "label"),
    Index("ix_scores_score", "score"),
    Index("ix_scores_model_version", "model_version"),
    Index("ix_scores_margin", "margin"),
    Index("ix_scores_folder", "folder"),
)
review_table = Table("review_requests", metadata,
                     Column("path", Text, primary_key=True),
                     Column("requested_at", Text, nullable=False))
version_table = Table("schema_version", metadata, Column("version", Integer, nullable=False))

#: How the results page may sort: name -> ORDER BY.
SORTS = {
    "least_sure": (scores_table.c.margin.asc(), scores_table.c.path.asc()),
    "score": (scores_table.c.score.asc(), scores_table.c.path.asc()),
    "score_desc": (scores_table.c.score.desc(), scores_table.c.path.asc()),
    "path": (scores_table.c.path.asc(),),
    "newest": (scores_table.c.scored_at.desc(), scores_table.c.path.asc()),
}


class DatabaseError(ImgClassError):
    """The results database cannot be opened or used (bad URL, missing driver, server down, newer schema)."""


def database_url(value: str | os.PathLike[str], default_sqlite: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL ``batch_database`` names: ``''`` -> ``default_sqlite``; a path -> a SQLite file.

    ``postgresql://`` URLs use the psycopg 3 driver (the one installed).
    """
    text = os.fspath(value).strip()
    if not text:
        text = os.fspath(default_sqlite)
    if "://" not in text:
        return "sqlite:///" + Path(text).expanduser().resolve().as_posix()
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise DatabaseError(f"batch_database is not a database URL: {exc}") from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Gap between the two most probable classes of each row (1 - the 'margin' uncertainty)."""
    return 1.0 - uncertainty(probabilities, "margin")


def score_rows(paths: Sequence[str], probabilities: Any, labels: Sequence[str], model_name: str,
               model_version: str, scored_at: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``scores`` (dicts keyed by :data:`COLUMNS`) for images and their ``(N, K)`` probabilities."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(len(paths), len(labels))
    scored_at = scored_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    best = np.argmax(p, axis=1) if len(paths) else np.zeros(0, dtype=int)
    gaps = margins(p) if len(paths) else np.zeros(0)
    rows = []
    for path, row, j, gap in zip(paths, p, best, gaps):
        rows.append({"path": path, "label": labels[int(j)], "score": float(row[j]),
                     "all_scores": json.dumps({label: round(float(row[i]), 6) for i, label in enumerate(labels)}),
                     "model_name": model_name, "model_version": model_version, "scored_at": scored_at,
                     "margin": round(float(gap), 6), "folder": str(PurePosixPath(path).parent)})
    return rows


@dataclass(frozen=True)
class ResultsFilter:
    """What the results page asks for; ``None`` = no condition."""

    label: str | None = None
    score_min: float | None = None
    score_max: float | None = None
    model_version: str | None = None
    folder: str | None = None

    def conditions(self) -> list[Any]:
        c = scores_table.c
        found = []
        if self.label is not None:
            found.append(c.label == self.label)
        if self.score_min is not None:
            found.append(c.score >= self.score_min)
        if self.score_max is not None:
            found.append(c.score <= self.score_max)
        if self.model_version is not None:
            found.append(c.model_version == self.model_version)
        if self.folder is not None:
            folder = self.folder.rstrip("/") or "/"
            found.append(or_(c.folder == folder, c.folder.startswith(folder.rstrip("/") + "/", autoescape=True)))
        return found


@dataclass(frozen=True)
class ModelVersion:
    """One model version with rows in the database."""

    model_name: str
    model_version: str
    images: int
    last_scored_at: str


class ResultsDatabase:
    """The results database behind one SQLAlchemy engine (thread-safe: one connection per call).

    Parameters
    ----------
    url:
        A SQLAlchemy URL (see :func:`database_url` for what ``batch_database`` may hold).
    """

    def __init__(self, url: str):
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise DatabaseError(f"not a database URL: {exc}") from None
        self.display_url = parsed.render_as_string(hide_password=True)
        options: dict[str, Any] = {"pool_pre_ping": True}
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"check_same_thread": False, "timeout": 30}
        try:
            self.engine: Engine = create_engine(parsed, **options)
        except (NoSuchModuleError, ModuleNotFoundError) as exc:
            raise DatabaseError(f"no driver for {self.display_url}: {exc} (PostgreSQL needs the package "
                                "psycopg, installed by requirements.txt)") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            self._prepare()
        except DatabaseError:
            self.engine.dispose()
            raise
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise DatabaseError(f"cannot open the results database {self.display_url}: "
                                f"{_short(exc)}") from None

    # ------------------------------------------------------------------ schema
    def _prepare(self) -> None:
        with self.engine.begin() as connection:
            tables = set(inspect(connection).get_table_names())
            version = None
            if version_table.name in tables:
                version = connection.execute(select(func.max(version_table.c.version))).scalar()
            elif TABLE in tables:
                version = 1  # the SQLite table of earlier releases, before this schema had a version
            if version is not None and version > SCHEMA_VERSION:
                raise DatabaseError(f"{self.display_url} has schema version {version}, newer than this imgclass "
                                    f"understands ({SCHEMA_VERSION}); use the release that wrote it")
            if version == 1:
                self._migrate_from_1(connection)
            metadata.create_all(connection)
            if version != SCHEMA_VERSION:
                connection.execute(delete(version_table))
                connection.execute(version_table.insert().values(version=SCHEMA_VERSION))

    @staticmethod
    def _migrate_from_1(connection: Any) -> None:
        """Version 1 -> 2: add ``margin`` and ``folder``, computed from each row's ``all_scores`` and ``path``."""
        columns = {column["name"] for column in inspect(connection).get_columns(TABLE)}
        if "margin" not in columns:
            connection.execute(text(f"ALTER TABLE {TABLE} ADD COLUMN margin FLOAT NOT NULL DEFAULT 0"))
        if "folder" not in columns:
            connection.execute(text(f"ALTER TABLE {TABLE} ADD COLUMN folder TEXT NOT NULL DEFAULT ''"))
        c = scores_table.c
        rows = connection.execute(select(c.path, c.model_name, c.model_version, c.all_scores)).fetchall()
        updates = []
        for path, name, version, all_scores in rows:
            try:
                values = [float(v) for v in json.loads(all_scores).values()]
            except (ValueError, TypeError, AttributeError):
                values = []
            gap = float(margins(np.array([values]))[0]) if len(values) >= 2 else 1.0
            updates.append({"p": path, "n": name, "v": version, "margin": round(gap, 6),
                            "folder": str(PurePosixPath(path).parent)})
        if updates:
            connection.execute(text(f"UPDATE {TABLE} SET margin = :margin, folder = :folder "
                                    "WHERE path = :p AND model_name = :n AND model_version = :v"), updates)

    def schema_version(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.max(version_table.c.version))).scalar())

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "ResultsDatabase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows, replacing those with the same (path, model_name, model_version); one transaction."""
        if not rows:
            return
        with self._errors("write to"), self.engine.begin() as connection:
            connection.execute(self._upsert_statement(), list(rows))

    def _upsert_statement(self) -> Any:
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - other backends: plain insert (rows of one model are scored once per run)
            return scores_table.insert()
        statement = insert(scores_table)
        return statement.on_conflict_do_update(
            index_elements=list(KEY),
            set_={name: statement.excluded[name] for name in COLUMNS if name not in KEY})

    # ------------------------------------------------------------------ reading
    def scored_paths(self, model_name: str, model_version: str) -> set[str]:
        """Paths this model has already scored."""
        c = scores_table.c
        with self._errors("read"), self.engine.connect() as connection:
            rows = connection.execute(select(c.path).where(c.model_name == model_name,
                                                           c.model_version == model_version))
            return {row[0] for row in rows}

    def model_rows(self, model_name: str, model_version: str,
                   paths: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """This model's rows (dicts keyed by :data:`COLUMNS`), sorted by path; only ``paths`` if given."""
        wanted = None if paths is None else set(paths)
        c = scores_table.c
        with self._errors("read"), self.engine.connect() as connection:
            result = connection.execute(select(*(c[name] for name in COLUMNS)).where(
                c.model_name == model_name, c.model_version == model_version).order_by(c.path))
            rows = [dict(row._mapping) for row in result]
        return (row for row in rows if wanted is None or row["path"] in wanted)

    def query(self, where: ResultsFilter = ResultsFilter(), sort: str = "least_sure", limit: int = 50,
              offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """The results page: ``(rows matching, one page of them)``; ``sort`` is a key of :data:`SORTS`."""
        if sort not in SORTS:
            raise DatabaseError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
        c = scores_table.c
        conditions = where.conditions()
        with self._errors("read"), self.engine.connect() as connection:
            total = connection.execute(select(func.count()).select_from(scores_table).where(*conditions)).scalar()
            result = connection.execute(select(*(c[name] for name in COLUMNS)).where(*conditions)
                                        .order_by(*SORTS[sort]).limit(limit).offset(offset))
            return int(total or 0), [dict(row._mapping) for row in result]

    def model_versions(self) -> list[ModelVersion]:
        """Every model version with rows, the most recently scored first."""
        c = scores_table.c
        with self._errors("read"), self.engine.connect() as connection:
            result = connection.execute(
                select(c.model_name, c.model_version, func.count(), func.max(c.scored_at))
                .group_by(c.model_name, c.model_version).order_by(func.max(c.scored_at).desc(), c.model_version))
            return [ModelVersion(name, version, int(count), last) for name, version, count, last in result]

    def distinct(self, column: str, model_version: str | None = None) -> list[str]:
        """The distinct values of ``label`` or ``folder`` (optionally of one model version), sorted."""
        if column not in ("label", "folder"):
            raise DatabaseError(f"no list of distinct {column!r}")
        c = scores_table.c
        statement = select(c[column]).distinct().order_by(c[column])
        if model_version is not None:
            statement = statement.where(c.model_version == model_version)
        with self._errors("read"), self.engine.connect() as connection:
            return [row[0] for row in connection.execute(statement)]

    def has_path(self, path: str) -> bool:
        """True if some model scored ``path`` (the results page serves only images it lists)."""
        with self._errors("read"), self.engine.connect() as connection:
            return connection.execute(select(scores_table.c.path).where(scores_table.c.path == path)
                                      .limit(1)).first() is not None

    # ------------------------------------------------------------------ the labeling queue's requests
    def request_review(self, path: str) -> None:
        """Send an image to the labeling queue (again: the time is refreshed)."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._errors("write to"), self.engine.begin() as connection:
            connection.execute(delete(review_table).where(review_table.c.path == path))
            connection.execute(review_table.insert().values(path=path, requested_at=now))

    def review_requests(self) -> dict[str, str]:
        """``{path: requested_at}``, oldest request first."""
        with self._errors("read"), self.engine.connect() as connection:
            rows = connection.execute(select(review_table.c.path, review_table.c.requested_at)
                                      .order_by(review_table.c.requested_at, review_table.c.path))
            return {path: when for path, when in rows}

    def drop_review_requests(self, paths: Iterable[str]) -> None:
        """Forget requests (the images were decided on)."""
        paths = list(paths)
        if paths:
            with self._errors("write to"), self.engine.begin() as connection:
                connection.execute(delete(review_table).where(review_table.c.path.in_(paths)))

    # ------------------------------------------------------------------ errors
    def _errors(self, doing: str) -> "_TranslateErrors":
        return _TranslateErrors(f"cannot {doing} the results database {self.display_url}")


class _TranslateErrors:
    """Turn a driver's error (server gone, disk full, locked) into a :class:`DatabaseError` with the URL."""

    def __init__(self, message: str):
        self.message = message

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, traceback: object) -> bool:
        if isinstance(exc, SQLAlchemyError):
            raise DatabaseError(f"{self.message}: {_short(exc)}") from None
        return False


def _short(exc: BaseException) -> str:
    """A driver error's first line (SQLAlchemy appends the statement and a help link)."""
    message = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return message[0] if message else type(exc).__name__


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL: the service reads while batch scoring writes, without 'database is locked' for readers."""
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except Exception:  # a read-only or in-memory database keeps its journal mode
        pass
    finally:
        cursor.close()


__all__ = ["COLUMNS", "DatabaseError", "KEY", "ModelVersion", "ResultsDatabase", "ResultsFilter", "SCHEMA_VERSION",
           "SORTS", "TABLE", "database_url", "margins", "score_rows"]
