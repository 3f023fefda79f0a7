"""Tests of imgclass.io.moves: path confinement, the plan checked before any move, moves that never overwrite."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import imgclass.io.moves as moves
from imgclass.io.moves import Move, UnsafePathError, confined, execute, move_file, plan_moves


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset folder with a few files, its empty ``_duplicates`` sibling, and a file outside both."""
    dataset, aside = tmp_path / "images" / "ds", tmp_path / "images" / "ds_duplicates"
    for name in ("a/1.jpg", "a/2.jpg", "b/3.jpg"):
        (dataset / name).parent.mkdir(parents=True, exist_ok=True)
        (dataset / name).write_bytes(name.encode())
    aside.mkdir()
    (tmp_path / "outside.jpg").write_bytes(b"outside")
    return dataset, aside


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- confined
@pytest.mark.parametrize("relative", [
    "", " ", "../outside.jpg", "a/../../outside.jpg", "/etc/passwd", "C:/Windows/x.jpg", "c:x.jpg",
    "//server/share/x.jpg", "a\\..\\..\\outside.jpg", "a/\x00.jpg", "a/\n.jpg", "link/outside.jpg",
    "linkfile.jpg",
])
def test_paths_leading_out_are_refused(roots, tmp_path: Path, relative: str) -> None:
    dataset, _ = roots
    (dataset / "link").symlink_to(tmp_path)
    (dataset / "linkfile.jpg").symlink_to(tmp_path / "outside.jpg")
    with pytest.raises(UnsafePathError):
        confined(dataset, relative)


def test_paths_inside_are_joined(roots) -> None:
    dataset, _ = roots
    assert confined(dataset, "a/1.jpg") == dataset / "a" / "1.jpg"
    assert confined(dataset, "a/./new/x.jpg") == dataset / "a" / "new" / "x.jpg"  # need not exist yet
    (dataset / "alias").symlink_to(dataset / "a")  # a link that stays inside is fine
    assert confined(dataset, "alias/1.jpg") == dataset / "alias" / "1.jpg"


# --------------------------------------------------------------------------- plan before move
def test_the_whole_plan_is_checked_before_the_first_move(roots, tmp_path: Path) -> None:
    dataset, aside = roots
    (dataset / "b" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (aside / "b").mkdir()
    (aside / "b" / "3.jpg").write_bytes(b"already there")
    plan = plan_moves([
        Move(dataset / "a/1.jpg", aside / "a/1.jpg"),          # fine
        Move(aside / "a/1.jpg", aside / "a/1b.jpg"),           # fine: the first move puts the file there
        Move(dataset / "a/1.jpg", aside / "a/again.jpg"),      # the first move took it away
        Move(dataset / "a/2.jpg", aside / "a/1b.jpg"),         # the second move took that place
        Move(dataset / "b/3.jpg", aside / "b/3.jpg"),          # never overwrite
        Move(dataset / "b/missing.jpg", aside / "m.jpg"),
        Move(dataset / "b/link.jpg", aside / "link.jpg"),      # a link, not the file
        Move(tmp_path / "outside.jpg", aside / "x.jpg"),       # from outside the roots
        Move(dataset / "a/2.jpg", tmp_path / "y.jpg"),         # to outside the roots
        Move(dataset / "a", aside / "folder"),                 # a folder
    ], [dataset, aside])
    assert [(m.source.name, m.target.name) for m in plan.moves] == [("1.jpg", "1.jpg"), ("1.jpg", "1b.jpg")]
    reasons = [r.reason for r in plan.refused]
    assert reasons == ["the file is not there", "a file is already at the target (never overwritten)",
                       "a file is already at the target (never overwritten)", "the file is not there",
                       "outside the allowed folders ({}, {})".format(dataset, aside),
                       "outside the allowed folders ({}, {})".format(dataset, aside),
                       "outside the allowed folders ({}, {})".format(dataset, aside),
                       "not a regular file (a folder or a symbolic link)"]
    # planning moved nothing
    assert files(dataset)["a/1.jpg"] == b"a/1.jpg" and not (aside / "a").exists()


def test_execute_moves_in_order_and_reports_each_move(roots) -> None:
    dataset, aside = roots
    plan = plan_moves([Move(dataset / "a/1.jpg", aside / "a/1.jpg"), Move(aside / "a/1.jpg", dataset / "b/1.jpg"),
                       Move(dataset / "b/3.jpg", dataset / "a/2.jpg")], [dataset, aside])
    logged: list[Move] = []
    report = execute(plan, on_moved=logged.append)
    assert logged == report.moved == plan.moves[:2] and report.failed == []
    assert [r.move.target.name for r in report.refused] == ["2.jpg"]  # refused by the plan, carried over
    assert not report.complete and report.problems() == [f"refused {report.refused[0]}"]
    assert files(dataset) == {"a/2.jpg": b"a/2.jpg", "b/1.jpg": b"a/1.jpg", "b/3.jpg": b"b/3.jpg"}


def test_a_failure_half_way_stops_and_rollback_puts_everything_back(roots, monkeypatch) -> None:
    dataset, aside = roots
    before = files(dataset)
    real = moves.move_file
    calls: list[Path] = []

    def fail_third(source: Path, target: Path) -> None:
        calls.append(source)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(source, target)

    monkeypatch.setattr(moves, "move_file", fail_third)
    plan = plan_moves([Move(dataset / name, aside / name) for name in ("a/1.jpg", "a/2.jpg", "b/3.jpg")],
                      [dataset, aside])
    kept = execute(plan)
    assert [m.source.name for m in kept.moved] == ["1.jpg", "2.jpg"] and kept.failed[0].move.source.name == "3.jpg"
    assert "No space left on device" in kept.problems()[0]
    execute(plan_moves([Move(aside / n, dataset / n) for n in ("a/1.jpg", "a/2.jpg")], [dataset, aside]))
    calls.clear()

    plan = plan_moves([Move(dataset / name, aside / name) for name in ("a/1.jpg", "a/2.jpg", "b/3.jpg", "a/1.jpg")],
                      [dataset, aside])
    report = execute(plan, rollback=True)
    assert report.moved == [] and [m.source.name for m in report.rolled_back] == ["2.jpg", "1.jpg"]
    assert not report.complete and len(report.refused) == 1 and report.not_attempted == []
    assert files(dataset) == before and files(aside) == {}


def test_move_file_never_overwrites_even_without_hard_links(roots, monkeypatch) -> None:
    dataset, aside = roots
    with pytest.raises(FileExistsError):
        move_file(dataset / "a/1.jpg", dataset / "a/2.jpg")

    def no_links(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(FileExistsError):
        move_file(dataset / "a/1.jpg", dataset / "a/2.jpg")
    assert files(dataset)["a/2.jpg"] == b"a/2.jpg" and (dataset / "a/1.jpg").is_file()
    move_file(dataset / "a/1.jpg", aside / "deep" / "1.jpg")
    assert (aside / "deep" / "1.jpg").read_bytes() == b"a/1.jpg" and not (dataset / "a/1.jpg").exists()
