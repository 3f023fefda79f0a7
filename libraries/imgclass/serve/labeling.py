"""Labeling, least-sure first: the queue, the decisions (moves with undo), the log, retraining.

What the service's labeling page (``/label``, :mod:`imgclass.serve.labeling_api`)
does, without HTTP, so it can be used and tested on its own.

The queue
    Images a person should look at, for one dataset: every image of the
    *unlabeled folder* (``images/<ds>_unlabeled/`` by default, any depth), and
    labeled images of ``images/<ds>/<class>/`` that the current model gives
    another class (``review_labeled='disagree'``), or every labeled image not
    yet confirmed (``'all'``: a scraped set whose labels are the search
    queries). They are ordered least sure first (:func:`imgclass.model.scores.uncertainty`
    of the calibrated probabilities: margin or entropy), with the model's top
    guesses; images sent from the results page come first. The probabilities
    are batch scoring's rows in the results database
    (:mod:`imgclass.serve.database`): the current model scores what it has not
    scored yet in a background thread (:func:`imgclass.serve.batch.score_paths`),
    so the queue of a large folder fills while the page is in use, and an
    image scored before is never scored twice by the same model.

A decision
    A class, "exclude" or "skip". Every file move goes through the project's
    one move facility: images already in the dataset are moved to another
    class or excluded by :mod:`imgclass.data.annotations` (logged in
    ``images/<ds>_annotations.csv``, the notebooks' log, undone there), and
    unlabeled images move into a class folder (or to
    ``images/<ds>_excluded/_unlabeled/``) through :mod:`imgclass.io.moves`
    (whole move checked before it is made, never overwriting, a free name
    ``x_1.jpg`` on a clash). Nothing is deleted. Keeping an image's class
    "confirms" it (no move; it leaves the queue). Every decision is appended to
    the labeling log ``images/<ds>_labeling.csv`` (:data:`LOG_COLUMNS`) before
    the file moves; :meth:`LabelingSession.undo` reverses the latest one (the
    log, which travels with the images, is trusted no more than the
    annotation log: a path leading out of the dataset is never followed).

Retraining
    :class:`Retrainer` reruns steps 1-5 (``python -m imgclass run``) in a
    child process, so the page stays usable; when it has finished, the new
    model is loaded, replaces the old one in the queue (which is scored and
    re-ranked by it in the background) and its test accuracy is reported.

Paths and class names that come from a request are checked against the
dataset: an item is a path relative to ``images/`` that must stay inside the
dataset folder or its unlabeled folder (:func:`imgclass.io.moves.confined`),
and a class must be one of the dataset's class folders.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np

from imgclass.data import annotations
from imgclass.errors import ImgClassError, ParameterError
from imgclass.io.atomic import unused_path, write_csv
from imgclass.io.images import is_image_file, list_image_files
from imgclass.io.moves import Move, UnsafePathError, confined, execute, plan_moves
from imgclass.layout import DatasetLayout
from imgclass.model.scores import uncertainty
from imgclass.parameters import Parameters, parse_override
from imgclass.serve.batch import FilePredictor, score_paths
from imgclass.serve.database import ResultsDatabase, database_url

#: Columns of the labeling log ``images/<ds>_labeling.csv``.
LOG_COLUMNS = ["entry", "time", "action", "item", "label", "target", "annotation_entry", "undoes"]
#: Decisions (log actions): a class for an unlabeled image, another class for a labeled one, the same class
#: for a labeled one, out of the dataset, not now.
LABEL, MOVE, CONFIRM, EXCLUDE, SKIP = "label", "move", "confirm", "exclude", "skip"
#: Log actions that close an entry: reversed, its move failed (nothing moved), or refused (unsafe paths).
UNDO, FAILED, REFUSED = "undo", "failed", "refused"
DECISIONS = (LABEL, MOVE, CONFIRM, EXCLUDE, SKIP)
#: Which labeled images the queue also holds (``label_reviewLabeled``).
REVIEW_MODES = ("disagree", "all", "none")
#: Sub-folder of ``images/<ds>_excluded/`` for excluded images of the unlabeled folder.
EXCLUDED_UNLABELED = "_unlabeled"


class LabelingError(ImgClassError):
    """A request the labeling queue refuses; ``status`` is the HTTP status that says why (400, 404, 409)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- configuration
def unlabeled_dir_of(layout: DatasetLayout, folder: str = "") -> Path:
    """``images/<folder>/``, default ``images/<ds>_unlabeled/``: images waiting for a label."""
    return layout.images_dir.parent / (folder or f"{layout.dataset}_unlabeled")


def labeling_log_of(layout: DatasetLayout) -> Path:
    """``images/<ds>_labeling.csv``: every decision made on the labeling page, and every undo."""
    return layout.images_dir.parent / f"{layout.dataset}_labeling.csv"


@dataclass(frozen=True)
class LabelingConfig:
    """Where the queue's images, scores and log are, how it ranks, and how to retrain.

    ``retrain_command`` is the whole command line of the retraining process
    (empty: the page cannot retrain).
    """

    layout: DatasetLayout
    unlabeled_dir: Path
    database_url: str
    review_labeled: str = "disagree"
    uncertainty: str = "margin"
    queue_size: int = 200
    run_device: str = "auto"
    run_precision: str = "auto"
    batch_size: int = 16
    retrain_command: tuple[str, ...] = ()
    retrain_cwd: Path | None = None

    @classmethod
    def from_parameters(cls, params: Parameters) -> "LabelingConfig":
        """The ``label_*`` parameters, the dataset, ``batch_database`` and how steps 1-5 are rerun:
        ``python -m imgclass run`` with the service's parameters file, dataset, root folder and
        ``label_retrainArgs``."""
        layout = DatasetLayout.from_parameters(params)
        extra = list(params.label_retrainArgs)
        for argument in extra:
            if argument.startswith("--parametersFile="):
                raise ParameterError("label_retrainArgs: the retraining reads the service's parameters file; "
                                     "do not pass --parametersFile")
            try:
                parse_override(argument)
            except ParameterError as exc:
                raise ParameterError(f"label_retrainArgs: {exc}") from None
        unlabeled = unlabeled_dir_of(layout, params.label_unlabeledFolder)
        if unlabeled in (layout.images_dir, layout.excluded_dir, layout.duplicates_dir):
            raise ParameterError(f"label_unlabeledFolder must be a folder of its own, not {unlabeled.name} "
                                 "(the dataset, or where excluded or duplicate images go)")
        command = [sys.executable, "-m", "imgclass", "run"]
        if params.parametersFile:
            command.append(f"--parametersFile={params.parametersFile}")
        command += [f"--datasetName={layout.dataset}", f"--rootDir={layout.root}", *extra]
        return cls(layout=layout, unlabeled_dir=unlabeled,
                   database_url=database_url(params.batch_database, layout.batch_scores_sqlite),
                   review_labeled=params.label_reviewLabeled, uncertainty=params.label_uncertainty,
                   queue_size=params.label_queueSize, run_device=params.run_device,
                   run_precision=params.run_precision, retrain_command=tuple(command),
                   retrain_cwd=params.project_dir)


# --------------------------------------------------------------------------- the log
@dataclass(frozen=True)
class Decision:
    """One row of the labeling log (paths relative to ``images/``, POSIX)."""

    entry: int
    time: str
    action: str
    item: str
    label: str = ""
    target: str = ""
    annotation_entry: int | None = None
    undoes: int | None = None

    def describe(self) -> str:
        where = f" -> {self.target}" if self.target and self.target != self.item else ""
        label = f" as {self.label}" if self.label else ""
        extra = f" (undoes #{self.undoes})" if self.undoes is not None else ""
        return f"#{self.entry} {self.action} {self.item}{label}{where}{extra}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def read_labeling_log(path: Path) -> list[Decision]:
    """Every logged decision, oldest first ([] if there is no log yet)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not set(LOG_COLUMNS) <= set(reader.fieldnames):
            raise LabelingError(f"{path} is not a labeling log (columns {','.join(LOG_COLUMNS)})", 500)
        try:
            return [Decision(int(r["entry"]), r["time"], r["action"], r["item"], r["label"], r["target"],
                             int(r["annotation_entry"]) if r["annotation_entry"] else None,
                             int(r["undoes"]) if r["undoes"] else None) for r in reader]
        except ValueError as exc:
            raise LabelingError(f"{path} has a malformed row: {exc}", 500) from None


def open_decisions(log: Sequence[Decision]) -> list[Decision]:
    """The decisions not undone (nor failed, nor refused), oldest first."""
    closed = {d.undoes for d in log if d.action in (UNDO, FAILED, REFUSED)}
    return [d for d in log if d.action in DECISIONS and d.entry not in closed]


# --------------------------------------------------------------------------- the queue
@dataclass(frozen=True)
class QueueItem:
    """One image to decide on."""

    item: str  # path relative to images/: 'tuxpaintStamps_unlabeled/x.jpg', 'tuxpaintStamps/birds/owl.jpg'
    kind: str  # 'unlabeled' or 'labeled'
    label: str | None  # its class folder (labeled images)
    predicted: str
    top: list[tuple[str, float]]
    uncertainty: float
    requested: bool = False
    skipped: bool = False

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "top": [[label, p] for label, p in self.top]}


def rank_queue(candidates: Sequence[tuple[str, str, str | None]], probabilities: np.ndarray, labels: Sequence[str],
               method: str = "margin", requested: Sequence[str] = (), skipped: Sequence[str] = (),
               review_labeled: str = "disagree", top_k: int = 3) -> list[QueueItem]:
    """Order images for a person: requested first (in request order), then least sure first, skipped last.

    Parameters
    ----------
    candidates:
        ``(item, kind, label)`` per row of ``probabilities`` (``(N, K)``, columns in ``labels`` order).
    review_labeled:
        Which labeled images stay: ``'disagree'`` (the model's best guess is
        another class), ``'all'``, ``'none'``; a requested image always stays.
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(len(candidates), len(labels))
    doubt = uncertainty(p, method) if len(candidates) else np.zeros(0)
    order = np.argsort(-doubt, kind="stable")
    asked = {item: i for i, item in enumerate(requested)}
    passed = set(skipped)
    items = []
    for i in order:
        item, kind, label = candidates[i]
        best = np.argsort(-p[i], kind="stable")[:top_k]
        predicted = labels[int(best[0])]
        if kind == "labeled" and item not in asked:
            if review_labeled == "none" or (review_labeled == "disagree" and predicted == label):
                continue
        items.append(QueueItem(item, kind, label, predicted, [(labels[int(j)], round(float(p[i, j]), 4))
                                                               for j in best],
                               round(float(doubt[i]), 4), item in asked, item in passed))
    return sorted(items, key=lambda q: (not q.requested, asked.get(q.item, 0), q.skipped))


# --------------------------------------------------------------------------- the session
@dataclass
class ScoringState:
    """The background scoring of the queue's images by the current model."""

    running: bool = False
    model_version: str = ""
    todo: int = 0
    done: int = 0
    unreadable: list[str] = field(default_factory=list)
    error: str = ""


class LabelingSession:
    """The labeling queue of one dataset: ranking, decisions, undo, background scoring (thread-safe).

    Parameters
    ----------
    config:
        See :class:`LabelingConfig`.
    predictor:
        The current model (replaced by :meth:`use_predictor` after a retrain).
    database:
        The results database (default: opened from ``config.database_url``).
    """

    def __init__(self, config: LabelingConfig, predictor: FilePredictor, database: ResultsDatabase | None = None):
        self.config = config
        self.layout = config.layout
        self.images_root = self.layout.images_dir.parent
        self.predictor = predictor
        self.database = database or ResultsDatabase(config.database_url)
        self.log_path = labeling_log_of(self.layout)
        self.scoring = ScoringState()
        self._lock = threading.RLock()  # decisions and the log: one at a time
        self._scoring_thread: threading.Thread | None = None
        self._unreadable: dict[str, set[str]] = {}  # model version -> images it could not read (not retried)

    # ------------------------------------------------------------------ what there is
    def classes(self) -> list[str]:
        """The dataset's classes (its class folders), sorted: what a decision may name."""
        if not self.layout.images_dir.is_dir():
            return []
        return [c.label for c in annotations.list_classes(self.layout.images_dir)]

    def item_of(self, path: Path) -> str:
        """How requests and the log name an image: its path relative to ``images/``."""
        return path.relative_to(self.images_root).as_posix()

    def _candidates(self) -> list[tuple[str, str, str | None, Path]]:
        """``(item, kind, label, absolute path)`` of every unlabeled and labeled image."""
        found = []
        if self.config.unlabeled_dir.is_dir():
            for path in list_image_files(self.config.unlabeled_dir)[0]:
                found.append((self.item_of(path), "unlabeled", None, path))
        if self.layout.images_dir.is_dir():
            for cls in annotations.list_classes(self.layout.images_dir):
                for rel in cls.paths:
                    path = self.layout.images_dir / rel
                    found.append((self.item_of(path), "labeled", cls.label, path))
        return found

    def resolve(self, item: str) -> tuple[Path, str]:
        """The image a request names, and its kind; :class:`LabelingError` (400/404) if it may not be used."""
        if not isinstance(item, str) or len(item) > 4096:
            raise LabelingError("an item is a path relative to images/, e.g. 'myData_unlabeled/x.jpg'")
        try:
            path = confined(self.images_root, item)
        except UnsafePathError as exc:
            raise LabelingError(f"'{item[:200]}' is not a path inside the dataset: {exc}") from None
        resolved = path.resolve()
        if resolved.is_relative_to(self.config.unlabeled_dir.resolve()):
            kind = "unlabeled"
        elif resolved.is_relative_to(self.layout.images_dir.resolve()) and \
                len(resolved.relative_to(self.layout.images_dir.resolve()).parts) >= 2:
            kind = "labeled"
        else:
            raise LabelingError(f"'{item[:200]}' is neither in the dataset's class folders "
                                f"({self.layout.dataset}/<class>/) nor in its unlabeled folder "
                                f"({self.config.unlabeled_dir.name}/)")
        if not is_image_file(path):
            raise LabelingError(f"'{item[:200]}' is not an image file")
        if not path.is_file():
            raise LabelingError(f"image not found: {item[:200]} (decided on already, or moved?)", 404)
        return path, kind

    def resolve_absolute(self, path: str) -> str:
        """The item of an absolute path (as the results database stores it), checked like :meth:`resolve`."""
        try:
            relative = Path(path).resolve().relative_to(self.images_root.resolve()).as_posix()
        except (ValueError, OSError):
            raise LabelingError("only images of the dataset or of its unlabeled folder can be labeled; "
                                f"{path[:200]} is outside {self.images_root}") from None
        self.resolve(relative)
        return relative

    def log(self) -> list[Decision]:
        return read_labeling_log(self.log_path)

    # ------------------------------------------------------------------ the queue
    def queue(self, limit: int | None = None) -> dict[str, Any]:
        """The queue as the page shows it: items least sure first, and where things stand."""
        limit = self.config.queue_size if limit is None else max(1, min(limit, self.config.queue_size))
        with self._lock:
            predictor = self.predictor
            labels = list(predictor.labels)
            candidates = self._candidates()
            decisions = open_decisions(self.log())
        decided = {name for d in decisions if d.action != SKIP for name in (d.item, d.target) if name}
        skipped = [d.item for d in decisions if d.action == SKIP]
        rows = {row["path"]: row for row in self.database.model_rows(predictor.model_name, predictor.model_version)}
        by_path = {path.resolve().as_posix(): item for item, _, _, path in candidates}
        requested = [by_path[p] for p in self.database.review_requests() if p in by_path]
        ranked, unscored = [], []
        probabilities = []
        for item, kind, label, path in candidates:
            if item in decided and item not in requested:
                continue
            row = rows.get(path.resolve().as_posix())
            if row is None:
                unscored.append(path.resolve().as_posix())
                continue
            scores = json.loads(row["all_scores"])
            probabilities.append([float(scores.get(name, 0.0)) for name in labels])
            ranked.append((item, kind, label))
        unreadable = self._unreadable.get(predictor.model_version, set())
        n_unreadable = sum(1 for path in unscored if path in unreadable)
        unscored = [path for path in unscored if path not in unreadable]
        if unscored:
            self.score_in_background(unscored)
        items = rank_queue(ranked, np.array(probabilities).reshape(len(ranked), len(labels)), labels,
                           self.config.uncertainty, requested, skipped, self.config.review_labeled)
        decided_count = sum(1 for d in decisions if d.action != SKIP)
        return {"model_name": predictor.model_name, "model_version": predictor.model_version,
                "classes": self.classes(), "items": [q.as_json() for q in items[:limit]],
                "in_queue": len(items), "not_scored_yet": len(unscored), "unreadable": n_unreadable,
                "decided": decided_count,
                "unlabeled_folder": self.item_of(self.config.unlabeled_dir) if
                self.config.unlabeled_dir.is_relative_to(self.images_root) else str(self.config.unlabeled_dir),
                "uncertainty": self.config.uncertainty, "review_labeled": self.config.review_labeled,
                "scoring": asdict(self.scoring)}

    def request_review(self, absolute_path: str) -> str:
        """Send an image (by the absolute path the results database stores) to the front of the queue."""
        item = self.resolve_absolute(absolute_path)
        path = (self.images_root / item).resolve().as_posix()
        self.database.request_review(path)  # a decided image asked for again is shown again
        return item

    # ------------------------------------------------------------------ decisions
    def decide(self, item: str, decision: str, label: str | None = None) -> Decision:
        """Apply a person's decision on one image: ``'label'`` (with ``label``), ``'exclude'`` or ``'skip'``.

        Returns the logged decision. :class:`LabelingError` (400 unknown class
        or bad path, 404 missing file, 409 the move cannot be made) moves nothing.
        """
        if decision not in ("label", "exclude", "skip"):
            raise LabelingError(f"unknown decision {str(decision)[:50]!r}: use 'label', 'exclude' or 'skip'")
        with self._lock:
            path, kind = self.resolve(item)
            item = self.item_of(path)
            if decision == "skip":
                result = self._append(SKIP, item)
            elif decision == "exclude":
                result = self._exclude(item, path, kind)
            else:
                classes = self.classes()
                if label not in classes:
                    shown = str(label)[:50] if label is not None else "(none)"
                    raise LabelingError(f"unknown class {shown!r}; the dataset's classes are: {', '.join(classes)}")
                result = self._label(item, path, kind, label)
            if decision != "skip":
                self.database.drop_review_requests([path.resolve().as_posix()])
            return result

    def _label(self, item: str, path: Path, kind: str, label: str) -> Decision:
        images_dir = self.layout.images_dir
        if kind == "labeled":
            relative = path.relative_to(images_dir).as_posix()
            if PurePosixPath(relative).parts[0] == label:
                return self._append(CONFIRM, item, label, item)
            change = self._annotation(lambda: annotations.move_image(images_dir, relative, label))
            return self._append(MOVE, item, label, change.target, annotation_entry=change.entry)
        inner = path.relative_to(self.config.unlabeled_dir)
        target = unused_path(images_dir / label / inner)
        return self._move(LABEL, item, label, path, target)

    def _exclude(self, item: str, path: Path, kind: str) -> Decision:
        images_dir = self.layout.images_dir
        if kind == "labeled":
            relative = path.relative_to(images_dir).as_posix()
            change = self._annotation(lambda: annotations.exclude_image(images_dir, relative))
            return self._append(EXCLUDE, item, "", change.target, annotation_entry=change.entry)
        inner = path.relative_to(self.config.unlabeled_dir)
        target = unused_path(self.layout.excluded_dir / EXCLUDED_UNLABELED / inner)
        return self._move(EXCLUDE, item, "", path, target)

    @staticmethod
    def _annotation(change: Callable[[], annotations.Change]) -> annotations.Change:
        try:
            return change()
        except annotations.AnnotationError as exc:
            raise LabelingError(str(exc), 409) from None

    def _roots(self) -> list[Path]:
        """The folders the labeling page's own moves stay in."""
        return [self.config.unlabeled_dir, self.layout.images_dir, self.layout.excluded_dir]

    def _move(self, action: str, item: str, label: str, source: Path, target: Path) -> Decision:
        """Check, log, then move (as the annotations do: a crash in between leaves a logged change)."""
        plan = plan_moves([Move(source, target)], self._roots())
        if plan.refused:
            raise LabelingError(f"cannot move {item}: {plan.refused[0].reason}; nothing was moved", 409)
        decision = self._append(action, item, label, self.item_of(target))
        report = execute(plan)
        if report.failed:
            self._append(FAILED, item, label, decision.target, undoes=decision.entry)
            raise LabelingError(f"could not move {item}: {report.failed[0].reason}; nothing was moved", 409)
        return decision

    def _append(self, action: str, item: str, label: str = "", target: str = "",
                annotation_entry: int | None = None, undoes: int | None = None) -> Decision:
        log = self.log()
        decision = Decision((log[-1].entry + 1) if log else 1, datetime.datetime.now().isoformat(timespec="seconds"),
                            action, item, label, target, annotation_entry, undoes)
        write_csv(self.log_path, LOG_COLUMNS,
                  [[d.entry, d.time, d.action, d.item, d.label, d.target,
                    "" if d.annotation_entry is None else d.annotation_entry, "" if d.undoes is None else d.undoes]
                   for d in [*log, decision]])
        return decision

    # ------------------------------------------------------------------ undo
    def undo(self) -> Decision | None:
        """Reverse the latest decision not undone yet; its ``undo`` row, or None if there is nothing to undo.

        :class:`LabelingError` 409 (nothing moved) if the file is no longer
        where the decision put it, something is in the way, a later change of
        the annotation log (a notebook's) must be undone first, or the log
        entry's paths lead outside the dataset (then it is marked ``refused``).
        """
        with self._lock:
            pending = open_decisions(self.log())
            if not pending:
                return None
            last = pending[-1]
            if last.action in (MOVE, EXCLUDE) and last.annotation_entry is not None:
                self._undo_annotation(last)
            elif last.action in (LABEL, EXCLUDE):
                self._undo_move(last)
            return self._append(UNDO, last.item, last.label, last.target, undoes=last.entry)

    def _undo_annotation(self, decision: Decision) -> None:
        images_dir = self.layout.images_dir
        pending = annotations.pending_changes(images_dir)
        if not pending or pending[-1].entry != decision.annotation_entry:
            later = f"#{pending[-1].entry}" if pending else "none"
            raise LabelingError(f"cannot undo {decision.describe()}: the latest change of "
                                f"{annotations.log_path_of(images_dir).name} is {later}, not "
                                f"#{decision.annotation_entry}; undo the later changes first (e.g. in the "
                                "notebook)", 409)
        self._annotation(lambda: annotations.undo_last(images_dir))

    def _undo_move(self, decision: Decision) -> None:
        try:
            moved_to, original = confined(self.images_root, decision.target), confined(self.images_root, decision.item)
            roots = [root.resolve() for root in self._roots()]
            for path in (moved_to, original):
                if not any(path.resolve().is_relative_to(root) for root in roots):
                    raise UnsafePathError(f"{path} is outside the dataset's folders")
        except UnsafePathError as exc:
            self._append(REFUSED, decision.item, decision.label, decision.target, undoes=decision.entry)
            raise LabelingError(f"cannot undo {decision.describe()}: its paths lead outside the dataset ({exc}); "
                                "it is marked refused in the log", 409) from None
        if not os.path.lexists(moved_to) and original.is_file():
            return  # already back (moved by hand, or the move never happened)
        plan = plan_moves([Move(moved_to, original)], self._roots())
        if plan.refused:
            raise LabelingError(f"cannot undo {decision.describe()}: {plan.refused[0].reason}; nothing was moved",
                                409)
        report = execute(plan)
        if report.failed:
            raise LabelingError(f"cannot undo {decision.describe()}: {report.failed[0].reason}", 409)

    # ------------------------------------------------------------------ scoring and the model
    def score_in_background(self, paths: Sequence[str] | None = None) -> bool:
        """Start scoring ``paths`` (default: every candidate) with the current model, unless scoring runs."""
        with self._lock:
            if self._scoring_thread is not None and self._scoring_thread.is_alive():
                return False
            if paths is None:
                paths = [path.resolve().as_posix() for *_, path in self._candidates()]
            predictor = self.predictor
            self.scoring = ScoringState(running=True, model_version=predictor.model_version, todo=len(paths))
            self._scoring_thread = threading.Thread(target=self._score, args=(predictor, list(paths)),
                                                    name="imgclass-labeling-scorer", daemon=True)
            self._scoring_thread.start()
            return True

    def _score(self, predictor: FilePredictor, paths: list[str]) -> None:
        state = self.scoring

        def progress(done: Any) -> None:
            state.done = done.n_scored + done.n_skipped + len(done.failures)

        try:
            result = score_paths(predictor, paths, self.database, self.config.batch_size, on_batch=progress)
            failed = [path for path, _ in result.failures]
            self._unreadable.setdefault(predictor.model_version, set()).update(failed)
            state.unreadable = failed[:50]
            state.done = state.todo
        except Exception as exc:  # noqa: BLE001 - reported on the page; the service keeps running
            state.error = f"{type(exc).__name__}: {exc}"
        finally:
            state.running = False

    def wait_for_scoring(self, timeout: float = 120.0) -> bool:
        """Block until background scoring has finished (for scripts and tests); False on timeout."""
        thread = self._scoring_thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def use_predictor(self, predictor: FilePredictor) -> None:
        """Rank with a new model from now on (after a retrain); scoring by it starts in the background."""
        with self._lock:
            self.predictor = predictor
        self.wait_for_scoring(timeout=600)
        self.score_in_background()


# --------------------------------------------------------------------------- retraining
@dataclass
class RetrainState:
    """Where the latest retraining stands (what the page shows)."""

    state: str = "idle"  # idle, running, done, failed
    started_at: str = ""
    finished_at: str = ""
    seconds: float = 0.0
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    test_images_after: int | None = None
    model_version: str = ""
    message: str = ""
    log_tail: str = ""


def read_accuracy(metrics_json: Path) -> tuple[float | None, int | None]:
    """Test accuracy and test image count of step 5's ``metrics.json`` (None if there is none)."""
    try:
        metrics = json.loads(metrics_json.read_text(encoding="utf-8"))
        return float(metrics["overall_accuracy"]), int(metrics["n_test_images"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


class Retrainer:
    """Reruns steps 1-5 in a child process (so the service stays responsive) and then swaps the model in.

    Parameters
    ----------
    session:
        The labeling session whose model is replaced when the run succeeds.
    load_model:
        Loads the new model from ``proc/<ds>/`` (e.g. :func:`imgclass.serve.predictor.load_predictor`).
    """

    def __init__(self, session: LabelingSession, load_model: Callable[[], FilePredictor]):
        self.session = session
        self.load_model = load_model
        self.status = RetrainState()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.log_path = session.layout.results_dir / "labelingRetrain.log"

    @property
    def available(self) -> bool:
        return bool(self.session.config.retrain_command)

    def start(self) -> RetrainState:
        """Start a run; :class:`LabelingError` 409 if one is running, 400 if retraining is not configured."""
        if not self.available:
            raise LabelingError("this service cannot retrain (no retrain command configured); run "
                                "`python -m imgclass run` yourself and restart the service")
        with self._lock:
            if self.status.state == "running":
                raise LabelingError("a retraining is already running", 409)
            before, _ = read_accuracy(self.session.layout.metrics_json)
            self.status = RetrainState(state="running", accuracy_before=before,
                                       started_at=datetime.datetime.now().isoformat(timespec="seconds"),
                                       message="running steps 1-5")
            self._thread = threading.Thread(target=self._run, name="imgclass-retrain", daemon=True)
            self._thread.start()
            return self.status

    def _run(self) -> None:
        config = self.session.config
        status = self.status
        start = time.monotonic()
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "w", encoding="utf-8") as log:
                log.write("$ " + " ".join(config.retrain_command) + "\n")
                log.flush()
                process = subprocess.run(list(config.retrain_command), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=config.retrain_cwd, check=False)
            status.log_tail = _tail(self.log_path)
            if process.returncode != 0:
                status.state, status.message = "failed", f"steps 1-5 failed (exit code {process.returncode}); " \
                                                         f"see {self.log_path}"
                return
            status.accuracy_after, status.test_images_after = read_accuracy(self.session.layout.metrics_json)
            status.message = "loading the new model"
            predictor = self.load_model()
            status.model_version = predictor.model_version
            self.session.use_predictor(predictor)
            status.state, status.message = "done", "the queue is re-ranked by the new model"
        except Exception as exc:  # noqa: BLE001 - reported on the page; the service keeps its old model
            status.state, status.message = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            status.seconds = round(time.monotonic() - start, 1)
            status.finished_at = datetime.datetime.now().isoformat(timespec="seconds")

    def wait(self, timeout: float = 600.0) -> RetrainState:
        """Block until the running retrain has finished (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


__all__ = ["Decision", "EXCLUDED_UNLABELED", "LOG_COLUMNS", "LabelingConfig", "LabelingError", "LabelingSession",
           "QueueItem", "REVIEW_MODES", "RetrainState", "Retrainer", "labeling_log_of", "open_decisions",
           "rank_queue", "read_accuracy", "read_labeling_log", "unlabeled_dir_of"]
