"""Moving a user's files, with undo: one facility for every tool that moves images around.

Duplicate removal moves copies aside, the annotation tools move images to
another class or out of the dataset, and both undo those moves from a file
(a report, a log) that may have travelled with the dataset, been edited by
hand or been crafted. So every move goes through the same three steps:

1. :func:`confined` turns each relative path read from such a file into a path
   inside the folder it must stay in (no ``..``, no absolute path, no drive,
   no backslash, no control character, no symbolic link leading out).
2. :func:`plan_moves` checks the whole plan before anything moves: every
   source is a regular file (not a link) inside the allowed folders, every
   target is inside them and free, also counting the earlier moves of the
   same plan (so "move A to B, then B to C" is checked as it will happen). A
   move that fails a check is *refused*, with the reason, and never attempted.
3. :func:`execute` makes the accepted moves in order. A move never overwrites
   (hard link then unlink; a checked rename where links are not available)
   and nothing is ever deleted. If a move fails half-way (disk full, a file
   that vanished), the run stops there; with ``rollback=True`` the moves
   already made are moved back. The :class:`MoveReport` says exactly what
   was moved, refused, failed, not attempted, rolled back and not rolled back.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Iterable, NamedTuple, Sequence

from imgclass.errors import ImgClassError

log = logging.getLogger(__name__)


class UnsafePathError(ImgClassError):
    """A path read from a file would lead outside the folder it must stay in."""


# --------------------------------------------------------------------------- confinement
def _inside(path: Path, root: Path) -> bool:
    """True if ``path``, with every symbolic link of it resolved, lies strictly inside ``root`` (also resolved)."""
    resolved, base = path.resolve(), root.resolve()
    return resolved != base and resolved.is_relative_to(base)


def confined(root: str | os.PathLike[str], relative: str) -> Path:
    """``root / relative``, if that path stays inside ``root``; :class:`UnsafePathError` otherwise.

    ``relative`` is a '/'-separated path read from a file that travels with a
    dataset (an undo report, an annotation log, a scrape manifest). Refused:
    an empty path, an absolute path, a Windows drive or UNC prefix, a
    backslash, a control character, a ``..`` part, and any path that leaves
    ``root`` once symbolic links are followed.
    """
    root = Path(root)
    if not isinstance(relative, str) or not relative.strip():
        raise UnsafePathError("an empty path")
    if any(ord(c) < 32 or ord(c) == 127 for c in relative):
        raise UnsafePathError(f"{relative!r} contains a control character")
    if "\\" in relative or PureWindowsPath(relative).drive:
        raise UnsafePathError(f"{relative!r} is not a '/'-separated relative path")
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise UnsafePathError(f"{relative!r} leads outside {root}")
    path = root.joinpath(*rel.parts)
    if not _inside(path, root):
        raise UnsafePathError(f"{relative!r} leads outside {root} (through a symbolic link)")
    return path


# --------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Move:
    """One file to move from ``source`` to ``target`` (full paths)."""

    source: Path
    target: Path

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}"


class Refusal(NamedTuple):
    """A move that was not made (refused by the plan, failed, or not rolled back), and why: ``'move: reason'``."""

    move: Move
    reason: str

    def __str__(self) -> str:
        return f"{self.move}: {self.reason}"


@dataclass
class MovePlan:
    """The moves that passed every check, in order, and those refused with their reason."""

    moves: list[Move] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


def plan_moves(moves: Iterable[Move], roots: Sequence[str | os.PathLike[str]]) -> MovePlan:
    """Check every move before any is made; see the module docstring for the checks.

    Parameters
    ----------
    moves:
        In the order they will be made; a later move may take a file an
        earlier one put in place, or a place an earlier one freed.
    roots:
        The folders every source and target must lie in (e.g. the dataset
        folder and its ``_duplicates`` sibling).
    """
    roots = [Path(r) for r in roots]
    plan = MovePlan()
    will_exist: dict[Path, bool] = {}  # the effect of the moves accepted so far

    def exists(path: Path) -> bool:
        return will_exist.get(path, os.path.lexists(path))

    for move in moves:
        reason = None
        if not all(any(_inside(p, root) for root in roots) for p in (move.source, move.target)):
            reason = f"outside the allowed folders ({', '.join(map(str, roots))})"
        elif move.source == move.target:
            reason = "source and target are the same file"
        elif not exists(move.source):
            reason = "the file is not there"
        elif move.source not in will_exist and (move.source.is_symlink() or not move.source.is_file()):
            reason = "not a regular file (a folder or a symbolic link)"
        elif exists(move.target):
            reason = "a file is already at the target (never overwritten)"
        if reason is not None:
            plan.refused.append(Refusal(move, reason))
            continue
        plan.moves.append(move)
        will_exist[move.source] = False
        will_exist[move.target] = True
    return plan


# --------------------------------------------------------------------------- moving
def move_file(source: Path, target: Path) -> None:
    """Move one file without ever overwriting: hard link then unlink, or a checked move where links fail.

    Raises ``FileExistsError`` if ``target`` exists, ``OSError`` for other failures
    (the source is then still in place).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)  # fails if target exists: no race with another writer
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system, or another device
        if os.path.lexists(target):
            raise FileExistsError(f"{target} already exists") from None
        shutil.move(source, target)
        return
    os.unlink(source)


@dataclass
class MoveReport:
    """What :func:`execute` did: every move of the plan is in exactly one of the first four lists.

    ``moved`` are in their new place; ``refused`` were never attempted (the
    plan refused them); ``failed`` raised an error (nothing changed for it);
    ``not_attempted`` came after the failure. With rollback, ``rolled_back``
    were moved and then moved back, ``not_rolled_back`` could not be.
    """

    moved: list[Move] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    failed: list[Refusal] = field(default_factory=list)
    not_attempted: list[Move] = field(default_factory=list)
    rolled_back: list[Move] = field(default_factory=list)
    not_rolled_back: list[Refusal] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True if every move of the plan was made and none was refused."""
        return not (self.refused or self.failed or self.not_attempted or self.rolled_back)

    def problems(self) -> list[str]:
        """One line per move that was not made as planned, saying what happened to it."""
        return ([f"refused {r}" for r in self.refused] + [f"failed {r}" for r in self.failed]
                + [f"not attempted (after the failure): {m}" for m in self.not_attempted]
                + [f"moved back (rollback): {m}" for m in self.rolled_back]
                + [f"NOT moved back, still at the target: {r}" for r in self.not_rolled_back])


def execute(plan: MovePlan, rollback: bool = False,
            on_moved: Callable[[Move], None] | None = None) -> MoveReport:
    """Make the moves of ``plan`` in order; stop at the first failure.

    Parameters
    ----------
    plan:
        From :func:`plan_moves`; its refused moves are carried into the report.
    rollback:
        After a failure, move the files this call already moved back where
        they were (for plans that must happen whole or not at all).
    on_moved:
        Called after each successful move (e.g. to log it); an exception it
        raises propagates, the move it follows being made.
    """
    report = MoveReport(refused=list(plan.refused))
    for index, move in enumerate(plan.moves):
        try:
            move_file(move.source, move.target)
        except OSError as exc:
            report.failed.append(Refusal(move, exc.strerror or str(exc)))
            report.not_attempted = plan.moves[index + 1:]
            log.warning("could not move %s: %s", move, exc)
            break
        log.info("moved %s", move)
        report.moved.append(move)
        if on_moved is not None:
            on_moved(move)
    if rollback and report.failed:
        for move in reversed(report.moved):
            try:
                move_file(move.target, move.source)
            except OSError as exc:
                report.not_rolled_back.append(Refusal(move, exc.strerror or str(exc)))
                continue
            log.info("moved back %s", move)
            report.rolled_back.append(move)
        report.moved = [m for m in report.moved if m not in report.rolled_back]
    return report
