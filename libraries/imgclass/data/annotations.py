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
    ``move``, ``exclude``, ``undo``, or ``failed`` (the move of entry ``undoes``
    raised an error, so the file never left: nothing to undo).
``source``, ``target``
    where the file was and where it went, POSIX paths relative to ``images/``
    (the dataset folder's parent), e.g. ``tuxpaintStamps/birds/x.jpg`` ->
    ``tuxpaintStamps_excluded/birds/x.jpg``.
``undoes``
    for ``undo`` and ``failed`` rows, the entry they refer to; empty otherwise.

After a correction, re-run the pipeline from ``scripts/1_prepareData.py``:
``split.csv`` and everything after it still describe the old folders.
"""

from __future__ import annotations

import csv
import datetime
import io
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from imgclass.io.atomic import unused_path, write_text
from imgclass.errors import ImgClassError
from imgclass.io.images import is_image_file, list_image_files

#: Columns of the annotation log (see the module docstring).
LOG_COLUMNS = ["entry", "time", "action", "source", "target", "undoes"]
MOVE, EXCLUDE, UNDO, FAILED = "move", "exclude", "undo", "failed"


class AnnotationError(ImgClassError):
    """A correction cannot be made or undone (missing file, bad label, file in the way)."""


# --------------------------------------------------------------------------- where things live
def excluded_dir_of(images_dir: str | os.PathLike[str]) -> Path:
    """``images/<ds>_excluded/``: where :func:`exclude_image` puts images."""
    images_dir = Path(images_dir)
    return images_dir.parent / f"{images_dir.name}_excluded"


def log_path_of(images_dir: str | os.PathLike[str]) -> Path:
    """``images/<ds>_annotations.csv``: the log of every move, exclusion and undo."""
    images_dir = Path(images_dir)
    return images_dir.parent / f"{images_dir.name}_annotations.csv"


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
    for class_dir in sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
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
    undone = {c.undoes for c in log if c.action in (UNDO, FAILED)}
    return [c for c in log if c.action in (MOVE, EXCLUDE) and c.entry not in undone]


def _append(images_dir: Path, action: str, source: Path, target: Path, undoes: int | None = None) -> Change:
    """Append one row to the log (the whole file is rewritten atomically: never a half row)."""
    path = log_path_of(images_dir)
    log = read_log(images_dir)
    base = images_dir.parent
    change = Change(entry=(log[-1].entry + 1) if log else 1,
                    time=datetime.datetime.now().isoformat(timespec="seconds"), action=action,
                    source=source.relative_to(base).as_posix(), target=target.relative_to(base).as_posix(),
                    undoes=undoes)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not old:
        writer.writerow(LOG_COLUMNS)
    writer.writerow([change.entry, change.time, change.action, change.source, change.target,
                     "" if undoes is None else undoes])
    write_text(path, old + buffer.getvalue())
    return change


# --------------------------------------------------------------------------- moving files
def _move_file(source: Path, target: Path) -> None:
    """Move without ever overwriting: hard link then unlink, or a checked move where links fail."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # fails if target exists: no race with another writer
    except FileExistsError:
        raise AnnotationError(f"{target} already exists; nothing was moved") from None
    except OSError:  # no hard links on this file system (or another device)
        if target.exists():
            raise AnnotationError(f"{target} already exists; nothing was moved") from None
        shutil.move(source, target)
        return
    os.unlink(source)


def _image_in_dataset(images_dir: Path, relative_path: str) -> tuple[Path, PurePosixPath]:
    rel = PurePosixPath(str(relative_path).replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or len(rel.parts) < 2:
        raise AnnotationError(f"'{relative_path}' must be a path inside the dataset folder, "
                              "starting with its class folder, e.g. 'birds/owl.jpg'")
    source = images_dir / rel
    if not source.is_file():
        raise AnnotationError(f"image not found: {source}")
    if not is_image_file(source):
        raise AnnotationError(f"not an image file: {source}")
    return source, rel


def _check_label(label: str) -> None:
    if (not isinstance(label, str) or not label.strip() or label in (".", "..") or label.startswith(".")
            or re.search(r"[/\\]", label)):
        raise AnnotationError(f"'{label}' is not a valid class name (a plain folder name, no slashes)")


def _do(images_dir: Path, action: str, source: Path, target: Path) -> Change:
    """Log first, then move (a crash in between leaves a logged change to undo, never an unlogged
    move); if the move fails the entry is voided by a ``failed`` row."""
    change = _append(images_dir, action, source, target)
    try:
        _move_file(source, target)
    except BaseException:
        _append(images_dir, FAILED, source, target, undoes=change.entry)
        raise
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
        The class it belongs to. Its path below the class folder is kept; on a
        name clash the first free name ``owl_1.jpg``, ... is used.

    Returns
    -------
    Change
        The logged change; ``change.target`` is where the image now is.
    """
    images_dir = Path(images_dir)
    source, rel = _image_in_dataset(images_dir, relative_path)
    _check_label(new_label)
    if rel.parts[0] == new_label:
        raise AnnotationError(f"'{relative_path}' is already in class '{new_label}'")
    target = unused_path(images_dir / new_label / PurePosixPath(*rel.parts[1:]))
    return _do(images_dir, MOVE, source, target)


def exclude_image(images_dir: str | os.PathLike[str], relative_path: str) -> Change:
    """Take one image out of the dataset: move it to ``images/<ds>_excluded/<same relative path>``.

    The file is kept (never deleted) and can be brought back with
    :func:`undo_last` / :func:`undo_all`, or by moving it back by hand.
    """
    images_dir = Path(images_dir)
    source, rel = _image_in_dataset(images_dir, relative_path)
    target = unused_path(excluded_dir_of(images_dir) / rel)
    return _do(images_dir, EXCLUDE, source, target)


# --------------------------------------------------------------------------- undo
@dataclass
class UndoResult:
    """What an undo did: the ``undo`` rows it logged, and the changes it could not reverse, with why."""

    undone: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"restored {len(self.undone)} file(s)"]
        lines += [f"could not restore: {p}" for p in self.problems]
        return "\n".join(lines)


def _undo_one(images_dir: Path, change: Change) -> Change:
    base = images_dir.parent
    moved_to, original = base / change.target, base / change.source
    if not moved_to.exists() and original.is_file():
        # Already back: the move was interrupted after logging, or the file was moved back by hand.
        return _append(images_dir, UNDO, moved_to, original, undoes=change.entry)
    if not moved_to.is_file():
        raise AnnotationError(f"cannot undo {change.describe()}: {moved_to} is no longer there "
                              "(was it moved by hand?)")
    if original.exists():
        raise AnnotationError(f"cannot undo {change.describe()}: a file is already at {original}; "
                              f"{moved_to} left in place")
    _move_file(moved_to, original)
    return _append(images_dir, UNDO, moved_to, original, undoes=change.entry)


def undo_last(images_dir: str | os.PathLike[str]) -> Change | None:
    """Reverse the latest change not undone yet; returns its ``undo`` row, or None if there is none.

    Raises :class:`AnnotationError`, and changes nothing, if the file is no
    longer where the change put it or something is in the way at its old path.
    """
    images_dir = Path(images_dir)
    pending = pending_changes(images_dir)
    return _undo_one(images_dir, pending[-1]) if pending else None


def undo_all(images_dir: str | os.PathLike[str]) -> UndoResult:
    """Reverse every pending change, newest first, so a file moved twice ends where it started.

    A change that cannot be reversed is skipped and listed in ``problems``; the
    others are still undone. Running it twice is harmless.
    """
    images_dir = Path(images_dir)
    result = UndoResult()
    for change in reversed(pending_changes(images_dir)):
        try:
            result.undone.append(_undo_one(images_dir, change))
        except AnnotationError as exc:
            result.problems.append(str(exc))
    return result


__all__ = ["AnnotationError", "Change", "ClassImages", "LOG_COLUMNS", "UndoResult", "class_counts",
           "exclude_image", "excluded_dir_of", "image_paths", "list_classes", "list_excluded", "log_path_of",
           "move_image", "pending_changes", "read_log", "undo_all", "undo_last"]
