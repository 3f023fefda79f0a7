"""Browsing a dataset class by class and correcting its annotations, with undo.

A dataset's annotation *is* its folder structure (``images/<ds>/<class>/...``),
so correcting a label means moving the file. Nothing here ever deletes or
overwrites an image:

* :func:`move_image` moves an image into another class folder, keeping its
  path below the class folder (``birds/a/x.jpg`` -> ``fish/a/x.jpg``);
* :func:`exclude_image` moves it out of the dataset, to the sibling folder
  ``images/<ds>_excluded/`` under the same relative path, where no step looks;
* on a name clash the file gets the first free name ``x_1.jpg``, ``x_2.jpg``, ...

Every change is appended to the log ``images/<ds>_annotations.csv`` (beside
the dataset folder, so it travels with the images) before the file moves.
:func:`undo_last` and :func:`undo_all` move files back and append ``undo``
rows, so the log is a complete, append-only history. Its columns
(:data:`LOG_COLUMNS`):

``entry``
    1, 2, 3, ... in order.
``time``
    local time of the change, ISO 8601.
``action``
    ``move``, ``exclude``, ``undo``, ``failed`` (the move of entry ``undoes``
    raised an error, so the file never left: nothing to undo) or ``refused``
    (entry ``undoes`` names paths outside the dataset: it is never undone).
``source``, ``target``
    where the file was and where it went, POSIX paths relative to ``images/``
    (the dataset folder's parent), e.g. ``tuxpaintStamps/birds/x.jpg`` ->
    ``tuxpaintStamps_excluded/birds/x.jpg``.
``undoes``
    for ``undo``, ``failed`` and ``refused`` rows, the entry they refer to; empty otherwise.

The log travels with the images (it sits beside them), so an undo trusts
none of its paths: each must stay inside the dataset folder or its
``_excluded`` sibling (no ``..``, no absolute path, no symbolic link leading
out). An entry whose paths do not is never undone: the undo appends a
``refused`` row for it (so it no longer blocks the undos before it) and says
so. Every move, and every undo, goes through :mod:`imgclass.io.moves`: the
whole plan is checked before the first file moves, nothing is overwritten.

After a correction, re-run the pipeline from ``scripts/1_prepareData.py``:
``split.csv`` and everything after it still describe the old folders.
"""

from __future__ import annotations

import csv
import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from imgclass.errors import ImgClassError
from imgclass.io.atomic import unused_path, write_csv
from imgclass.io.images import is_image_file, list_image_files
from imgclass.io.moves import Move, MoveReport, UnsafePathError, confined, execute, plan_moves
from imgclass.io.names import is_hidden, label_problem
from imgclass.layout import DatasetLayout

#: Columns of the annotation log (see the module docstring).
LOG_COLUMNS = ["entry", "time", "action", "source", "target", "undoes"]
MOVE, EXCLUDE, UNDO, FAILED, REFUSED = "move", "exclude", "undo", "failed", "refused"


class AnnotationError(ImgClassError):
    """A correction cannot be made or undone (missing file, bad label, file in the way, unsafe log entry)."""


# --------------------------------------------------------------------------- where things live
def dataset_layout(images_dir: str | os.PathLike[str]) -> DatasetLayout:
    """The :class:`DatasetLayout` whose image folder is ``images_dir`` (``<root>/images/<dataset>``)."""
    images_dir = Path(images_dir)
    layout = DatasetLayout(images_dir.parent.parent, images_dir.name)
    if layout.images_dir != images_dir:
        raise AnnotationError(f"{images_dir} is not a dataset folder <root>/images/<dataset>: the excluded images "
                              "and the log of changes live beside it, in that images/ folder")
    return layout


def excluded_dir_of(images_dir: str | os.PathLike[str]) -> Path:
    """``images/<ds>_excluded/``: where :func:`exclude_image` puts images."""
    return dataset_layout(images_dir).excluded_dir


def log_path_of(images_dir: str | os.PathLike[str]) -> Path:
    """``images/<ds>_annotations.csv``: the log of every move, exclusion and undo."""
    return dataset_layout(images_dir).annotations_log_csv


# --------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class ClassImages:
    """One class folder: its name and its images (paths relative to the dataset folder, sorted)."""

    label: str
    paths: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.paths)


def list_classes(images_dir: str | os.PathLike[str]) -> list[ClassImages]:
    """Every class folder of ``images_dir`` (sorted by name) with its images.

    Unlike :func:`imgclass.data.splits.list_dataset` this accepts classes with fewer
    than 2 images, and empty class folders, so that a dataset can be browsed
    and repaired whatever state it is in. Hidden folders and files are skipped.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise AnnotationError(f"image folder not found: {images_dir} (run scripts/0_downloadData.py for "
                              "the demo data, or put your images in <rootDir>/images/<dataset>/<class>/)")
    classes = []
    for class_dir in sorted(p for p in images_dir.iterdir() if p.is_dir() and not is_hidden(p.name)):
        images, _ = list_image_files(class_dir)
        classes.append(ClassImages(class_dir.name, tuple(p.relative_to(images_dir).as_posix() for p in images)))
    return classes


def class_counts(images_dir: str | os.PathLike[str]) -> dict[str, int]:
    """``{label: number of images}`` in label order."""
    return {c.label: c.count for c in list_classes(images_dir)}


def image_paths(images_dir: str | os.PathLike[str], label: str) -> list[str]:
    """The images of one class, relative to ``images_dir`` (``'birds/owl.jpg'``), sorted."""
    for c in list_classes(images_dir):
        if c.label == label:
            return list(c.paths)
    raise AnnotationError(f"no class folder '{label}' in {images_dir}")


def list_excluded(images_dir: str | os.PathLike[str]) -> list[str]:
    """Images in ``images/<ds>_excluded/``, relative to that folder, sorted."""
    excluded = excluded_dir_of(images_dir)
    if not excluded.is_dir():
        return []
    images, _ = list_image_files(excluded)
    return [p.relative_to(excluded).as_posix() for p in images]


# --------------------------------------------------------------------------- the log
@dataclass(frozen=True)
class Change:
    """One row of the annotation log."""

    entry: int
    time: str
    action: str
    source: str
    target: str
    undoes: int | None = None

    def describe(self) -> str:
        """One line for people: ``#3 move tuxpaintStamps/birds/x.jpg -> tuxpaintStamps/fish/x.jpg``."""
        extra = f" (undoes #{self.undoes})" if self.undoes is not None else ""
        return f"#{self.entry} {self.action} {self.source} -> {self.target}{extra}"


def read_log(images_dir: str | os.PathLike[str]) -> list[Change]:
    """Every change logged for the dataset, oldest first ([] if there is no log yet)."""
    path = log_path_of(images_dir)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not set(LOG_COLUMNS) <= set(reader.fieldnames):
            raise AnnotationError(f"{path} is not an annotation log (columns {','.join(LOG_COLUMNS)})")
        try:
            return [Change(int(r["entry"]), r["time"], r["action"], r["source"], r["target"],
                           int(r["undoes"]) if r["undoes"] else None) for r in reader]
        except ValueError as exc:
            raise AnnotationError(f"{path} has a malformed row: {exc}") from None


def pending_changes(images_dir: str | os.PathLike[str]) -> list[Change]:
    """The moves and exclusions not undone yet, oldest first: what :func:`undo_all` would reverse."""
    log = read_log(images_dir)
    closed = {c.undoes for c in log if c.action in (UNDO, FAILED, REFUSED)}
    return [c for c in log if c.action in (MOVE, EXCLUDE) and c.entry not in closed]


def _append(layout: DatasetLayout, action: str, source: str, target: str, undoes: int | None = None) -> Change:
    """Append one row to the log (``source``/``target`` relative to ``images/``); the file is rewritten atomically."""
    log = read_log(layout.images_dir)
    change = Change(entry=(log[-1].entry + 1) if log else 1,
                    time=datetime.datetime.now().isoformat(timespec="seconds"), action=action,
                    source=source, target=target, undoes=undoes)
    write_csv(layout.annotations_log_csv, LOG_COLUMNS,
              [[c.entry, c.time, c.action, c.source, c.target, "" if c.undoes is None else c.undoes]
               for c in [*log, change]])
    return change


def _relative(layout: DatasetLayout, path: Path) -> str:
    """How the log writes ``path``: POSIX, relative to ``images/``."""
    return path.relative_to(layout.images_dir.parent).as_posix()


# --------------------------------------------------------------------------- moving files
def _image_in_dataset(images_dir: Path, relative_path: str) -> tuple[Path, PurePosixPath]:
    """The image a user named (``'birds/owl.jpg'``, also with backslashes), checked to be inside the dataset."""
    text = str(relative_path).replace("\\", "/")
    try:
        source = confined(images_dir, text)
    except UnsafePathError:
        source = None
    rel = PurePosixPath(text)
    if source is None or len(rel.parts) < 2:
        raise AnnotationError(f"'{relative_path}' must be a path inside the dataset folder, "
                              "starting with its class folder, e.g. 'birds/owl.jpg'")
    if not source.is_file():
        raise AnnotationError(f"image not found: {source}")
    if not is_image_file(source):
        raise AnnotationError(f"not an image file: {source}")
    return source, rel


def _roots(layout: DatasetLayout) -> list[Path]:
    """The folders annotation moves stay in: the dataset and its ``_excluded`` sibling."""
    return [layout.images_dir, layout.excluded_dir]


def _do(layout: DatasetLayout, action: str, source: Path, target: Path) -> Change:
    """Check, log, then move (a crash in between leaves a logged change to undo, never an unlogged
    move); if the move fails the entry is voided by a ``failed`` row."""
    plan = plan_moves([Move(source, target)], _roots(layout))
    if plan.refused:
        raise AnnotationError(f"cannot {action} {source}: {plan.refused[0].reason}; nothing was moved")
    change = _append(layout, action, _relative(layout, source), _relative(layout, target))
    report = execute(plan)
    if report.failed:
        _append(layout, FAILED, change.source, change.target, undoes=change.entry)
        raise AnnotationError(f"could not {action} {source}: {report.failed[0].reason}; nothing was moved")
    return change


def move_image(images_dir: str | os.PathLike[str], relative_path: str, new_label: str) -> Change:
    """Move one image into the class folder ``new_label`` (created if needed).

    Parameters
    ----------
    images_dir:
        The dataset folder ``images/<ds>/``.
    relative_path:
        The image, relative to ``images_dir`` (``'birds/owl.jpg'``).
    new_label:
        The class it belongs to (a valid folder name, see
        :func:`imgclass.io.names.label_problem`). Its path below the class
        folder is kept; on a name clash the first free name ``owl_1.jpg``, ...
        is used.

    Returns
    -------
    Change
        The logged change; ``change.target`` is where the image now is.
    """
    layout = dataset_layout(images_dir)
    source, rel = _image_in_dataset(layout.images_dir, relative_path)
    problem = label_problem(new_label)
    if problem:
        raise AnnotationError(f"'{new_label}' is not a valid class name: {problem}")
    if rel.parts[0] == new_label:
        raise AnnotationError(f"'{relative_path}' is already in class '{new_label}'")
    target = unused_path(layout.images_dir / new_label / PurePosixPath(*rel.parts[1:]))
    return _do(layout, MOVE, source, target)


def exclude_image(images_dir: str | os.PathLike[str], relative_path: str) -> Change:
    """Take one image out of the dataset: move it to ``images/<ds>_excluded/<same relative path>``.

    The file is kept (never deleted) and can be brought back with
    :func:`undo_last` / :func:`undo_all`, or by moving it back by hand.
    """
    layout = dataset_layout(images_dir)
    source, rel = _image_in_dataset(layout.images_dir, relative_path)
    target = unused_path(layout.excluded_dir / rel)
    return _do(layout, EXCLUDE, source, target)


# --------------------------------------------------------------------------- undo
@dataclass
class UndoResult:
    """What an undo did: the ``undo`` rows it logged, and the changes it did not reverse, with why."""

    undone: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"restored {len(self.undone)} file(s)"]
        lines += [f"could not restore: {p}" for p in self.problems]
        return "\n".join(lines)


def _reversal(layout: DatasetLayout, change: Change) -> Move:
    """The move that reverses ``change``; :class:`UnsafePathError` if its paths leave images/<ds>[_excluded]/."""
    base = layout.images_dir.parent
    move = Move(confined(base, change.target), confined(base, change.source))
    roots = _roots(layout)
    for path in (move.source, move.target):
        if not any(path.resolve().is_relative_to(root.resolve()) for root in roots):
            raise UnsafePathError(f"{_relative(layout, path)} is outside {roots[0].name}/ and {roots[1].name}/")
    return move


def _undo(layout: DatasetLayout, changes: list[Change]) -> UndoResult:
    """Reverse ``changes`` in the order given: one plan, checked whole before the first move."""
    result = UndoResult()
    moves: list[Move] = []
    change_of: dict[Move, Change] = {}
    produced: set[Path] = set()
    for change in changes:
        try:
            move = _reversal(layout, change)
        except UnsafePathError as exc:
            _append(layout, REFUSED, change.source, change.target, undoes=change.entry)
            result.problems.append(f"{change.describe()}: refused, its paths lead outside the dataset ({exc}); "
                                   "nothing was moved, and it is marked refused in the log")
            continue
        moved_to, original = move.source, move.target
        if not os.path.lexists(moved_to) and moved_to not in produced and original.is_file():
            # Already back: the move was interrupted after logging, or the file was moved back by hand.
            result.undone.append(_append(layout, UNDO, change.target, change.source, undoes=change.entry))
            continue
        moves.append(move)
        change_of[move] = change
        produced.add(original)

    def log_undo(move: Move) -> None:
        change = change_of[move]
        result.undone.append(_append(layout, UNDO, change.target, change.source, undoes=change.entry))

    report: MoveReport = execute(plan_moves(moves, _roots(layout)), on_moved=log_undo)
    for refusal in report.refused:
        change = change_of[refusal.move]
        why = refusal.reason
        if why == "the file is not there":
            why = f"{refusal.move.source} is no longer there (was it moved by hand?)"
        elif why.startswith("a file is already at the target"):
            why = f"a file is already at {refusal.move.target}; {refusal.move.source} left in place"
        result.problems.append(f"cannot undo {change.describe()}: {why}")
    result.problems += [f"cannot undo {change_of[f.move].describe()}: {f.reason}" for f in report.failed]
    result.problems += [f"not undone (after the failure): {change_of[m].describe()}" for m in report.not_attempted]
    return result


def undo_last(images_dir: str | os.PathLike[str]) -> Change | None:
    """Reverse the latest change not undone yet; returns its ``undo`` row, or None if there is none.

    Raises :class:`AnnotationError`, and moves nothing, if the file is no
    longer where the change put it, something is in the way at its old path,
    or the log entry's paths lead outside the dataset (that entry is then
    marked ``refused``, so the next undo goes on with the one before).
    """
    layout = dataset_layout(images_dir)
    pending = pending_changes(layout.images_dir)
    if not pending:
        return None
    result = _undo(layout, pending[-1:])
    if result.problems:
        raise AnnotationError(result.problems[0])
    return result.undone[0]


def undo_all(images_dir: str | os.PathLike[str]) -> UndoResult:
    """Reverse every pending change, newest first, so a file moved twice ends where it started.

    The whole plan is checked before the first file moves. A change that
    cannot be reversed is left and listed in ``problems``; the others are
    still undone. Running it twice is harmless.
    """
    layout = dataset_layout(images_dir)
    return _undo(layout, list(reversed(pending_changes(layout.images_dir))))


__all__ = ["AnnotationError", "Change", "ClassImages", "LOG_COLUMNS", "UndoResult", "class_counts",
           "dataset_layout", "exclude_image", "excluded_dir_of", "image_paths", "list_classes", "list_excluded",
           "log_path_of", "move_image", "pending_changes", "read_log", "undo_all", "undo_last"]
