"""Correcting a dataset: listing, moving and excluding images, the log, and undo restoring every file."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
from conftest import make_dataset, make_photo

import imgclass.io.moves
from imgclass.data import annotations as A


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (the ``images/`` folder): relative path -> sha256 of its bytes."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith("_annotations.csv")}


def contents(root: Path) -> list[str]:
    """The multiset of image contents under ``root``: unchanged by moves, shrunk by a deletion."""
    return sorted(snapshot(root).values())


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "images" / "toy", {"cats": 3, "dogs": 2, "birds": 2})


def test_list_classes_counts_sorted_paths_and_tolerates_small_or_empty_classes(images_dir: Path) -> None:
    (images_dir / "empty").mkdir()
    (images_dir / ".hidden").mkdir()
    make_photo(images_dir / ".hidden" / "x.jpg")
    (images_dir / "cats" / "notes.txt").write_text("not an image")
    make_photo(images_dir / "dogs" / "puppies" / "p1.png", fmt="PNG")

    classes = A.list_classes(images_dir)

    assert [c.label for c in classes] == ["birds", "cats", "dogs", "empty"]
    assert A.class_counts(images_dir) == {"birds": 2, "cats": 3, "dogs": 3, "empty": 0}
    assert A.image_paths(images_dir, "dogs") == ["dogs/img_00.jpg", "dogs/img_01.jpg", "dogs/puppies/p1.png"]
    with pytest.raises(A.AnnotationError, match="no class folder 'fish'"):
        A.image_paths(images_dir, "fish")
    with pytest.raises(A.AnnotationError, match="image folder not found"):
        A.list_classes(images_dir.parent / "missing")


def test_move_image_moves_the_file_unchanged_and_logs_it(images_dir: Path) -> None:
    before = (images_dir / "cats" / "img_01.jpg").read_bytes()

    change = A.move_image(images_dir, "cats/img_01.jpg", "dogs")

    assert not (images_dir / "cats" / "img_01.jpg").exists()
    # dogs already has an img_01.jpg: the first free name is used
    assert change.target == "toy/dogs/img_01_1.jpg"
    assert (images_dir / "dogs" / "img_01_1.jpg").read_bytes() == before
    assert (images_dir / "dogs" / "img_01.jpg").exists()  # the other dog is untouched
    assert change.action == "move" and change.source == "toy/cats/img_01.jpg" and change.entry == 1

    with open(A.log_path_of(images_dir), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == A.LOG_COLUMNS
    assert rows == [{"entry": "1", "time": change.time, "action": "move", "source": "toy/cats/img_01.jpg",
                     "target": "toy/dogs/img_01_1.jpg", "undoes": ""}]
    assert A.log_path_of(images_dir) == images_dir.parent / "toy_annotations.csv"


def test_move_keeps_the_path_below_the_class_folder_and_can_create_a_class(images_dir: Path) -> None:
    make_photo(images_dir / "cats" / "kittens" / "k.jpg")
    change = A.move_image(images_dir, "cats/kittens/k.jpg", "lions")
    assert change.target == "toy/lions/kittens/k.jpg"
    assert (images_dir / "lions" / "kittens" / "k.jpg").is_file()
    assert A.class_counts(images_dir)["lions"] == 1


@pytest.mark.parametrize("path, label, message", [
    ("cats/img_00.jpg", "cats", "already in class"),
    ("cats/img_00.jpg", "a/b", "not a valid class name"),
    ("cats/img_00.jpg", "..", "not a valid class name"),
    ("cats/img_00.jpg", "", "not a valid class name"),
    ("cats/missing.jpg", "dogs", "image not found"),
    ("../toy/cats/img_00.jpg", "dogs", "must be a path inside the dataset"),
    ("img_00.jpg", "dogs", "must be a path inside the dataset"),
    ("/etc/passwd", "dogs", "must be a path inside the dataset"),
    ("cats/notes.txt", "dogs", "not an image file"),
])
def test_bad_moves_are_refused_and_change_nothing(images_dir: Path, path: str, label: str, message: str) -> None:
    (images_dir / "cats" / "notes.txt").write_text("text")
    before = snapshot(images_dir.parent)
    with pytest.raises(A.AnnotationError, match=message):
        A.move_image(images_dir, path, label)
    assert snapshot(images_dir.parent) == before
    assert A.read_log(images_dir) == []


def test_exclude_moves_to_the_sibling_folder_and_never_overwrites(images_dir: Path) -> None:
    first = (images_dir / "cats" / "img_00.jpg").read_bytes()
    change = A.exclude_image(images_dir, "cats/img_00.jpg")
    assert A.excluded_dir_of(images_dir) == images_dir.parent / "toy_excluded"
    assert change.target == "toy_excluded/cats/img_00.jpg"
    assert (images_dir.parent / "toy_excluded" / "cats" / "img_00.jpg").read_bytes() == first
    assert A.class_counts(images_dir)["cats"] == 2

    # a new image of the same name is excluded beside it, not over it
    make_photo(images_dir / "cats" / "img_00.jpg", seed=99)
    second = A.exclude_image(images_dir, "cats/img_00.jpg")
    assert second.target == "toy_excluded/cats/img_00_1.jpg"
    assert A.list_excluded(images_dir) == ["cats/img_00.jpg", "cats/img_00_1.jpg"]
    assert (images_dir.parent / "toy_excluded" / "cats" / "img_00.jpg").read_bytes() == first


def test_undo_all_restores_every_file_byte_identical_and_nothing_is_ever_deleted(images_dir: Path) -> None:
    root = images_dir.parent
    original = snapshot(root)
    original_contents = contents(root)
    mtime = (images_dir / "birds" / "img_00.jpg").stat().st_mtime_ns

    operations = [
        lambda: A.move_image(images_dir, "birds/img_00.jpg", "cats"),       # -> cats/img_00_1.jpg
        lambda: A.move_image(images_dir, "cats/img_00_1.jpg", "dogs"),     # the same bird again
        lambda: A.exclude_image(images_dir, "cats/img_02.jpg"),
        lambda: A.exclude_image(images_dir, "dogs/img_01.jpg"),
        lambda: A.move_image(images_dir, "birds/img_01.jpg", "dogs"),
    ]
    for operation in operations:
        operation()
        assert contents(root) == original_contents  # moved, never deleted or altered
    assert snapshot(root) != original
    assert len(A.pending_changes(images_dir)) == 5

    result = A.undo_all(images_dir)

    assert result.problems == [] and len(result.undone) == 5
    assert snapshot(root) == original  # every file back at its path, same bytes
    assert (images_dir / "birds" / "img_00.jpg").stat().st_mtime_ns == mtime
    assert A.pending_changes(images_dir) == []
    log = A.read_log(images_dir)
    assert [c.action for c in log] == ["move", "move", "exclude", "exclude", "move"] + ["undo"] * 5
    assert [c.undoes for c in log[5:]] == [5, 4, 3, 2, 1]  # newest first
    assert A.undo_all(images_dir).undone == []  # a second undo_all is harmless
    # the excluded folder is left (empty); no image is lost
    assert A.list_excluded(images_dir) == []


def test_undo_last_goes_back_one_change_at_a_time(images_dir: Path) -> None:
    root = images_dir.parent
    original = snapshot(root)
    A.move_image(images_dir, "cats/img_00.jpg", "birds")
    after_first = snapshot(root)
    A.exclude_image(images_dir, "dogs/img_00.jpg")

    undo = A.undo_last(images_dir)
    assert undo is not None and undo.action == "undo" and undo.undoes == 2
    assert snapshot(root) == after_first
    assert A.undo_last(images_dir).undoes == 1
    assert snapshot(root) == original
    assert A.undo_last(images_dir) is None


def test_undo_never_overwrites_a_file_that_took_the_old_place(images_dir: Path) -> None:
    A.move_image(images_dir, "cats/img_00.jpg", "birds")
    newcomer = make_photo(images_dir / "cats" / "img_00.jpg", seed=123).read_bytes()
    moved = (images_dir / "birds" / "img_00_1.jpg").read_bytes()

    with pytest.raises(A.AnnotationError, match="a file is already at"):
        A.undo_last(images_dir)
    result = A.undo_all(images_dir)

    assert result.undone == [] and len(result.problems) == 1
    assert (images_dir / "cats" / "img_00.jpg").read_bytes() == newcomer
    assert (images_dir / "birds" / "img_00_1.jpg").read_bytes() == moved
    assert len(A.pending_changes(images_dir)) == 1  # still undoable once the way is clear


def test_undo_of_a_file_moved_away_by_hand_says_so(images_dir: Path) -> None:
    A.exclude_image(images_dir, "cats/img_00.jpg")
    (images_dir.parent / "toy_excluded" / "cats" / "img_00.jpg").rename(images_dir.parent / "elsewhere.jpg")
    with pytest.raises(A.AnnotationError, match="no longer there"):
        A.undo_last(images_dir)


def test_a_failed_move_is_voided_and_an_interrupted_one_undoes_cleanly(
        images_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_move(source: Path, target: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imgclass.io.moves, "move_file", broken_move)
    with pytest.raises(A.AnnotationError, match="No space left on device; nothing was moved"):
        A.move_image(images_dir, "cats/img_00.jpg", "dogs")
    monkeypatch.undo()
    assert [c.action for c in A.read_log(images_dir)] == ["move", "failed"]
    assert A.pending_changes(images_dir) == []
    assert (images_dir / "cats" / "img_00.jpg").is_file()

    # logged but interrupted before the file moved (a crash): undo just records it
    original = snapshot(images_dir.parent)
    A._append(A.dataset_layout(images_dir), A.MOVE, "toy/cats/img_01.jpg", "toy/dogs/img_01_1.jpg")
    assert A.undo_last(images_dir).undoes == 3
    assert snapshot(images_dir.parent) == original and A.pending_changes(images_dir) == []


def test_a_folder_outside_images_is_refused_instead_of_guessing_where_the_log_goes(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "pictures" / "toy", {"cats": 2})
    with pytest.raises(A.AnnotationError, match="not a dataset folder"):
        A.exclude_image(folder, "cats/img_00.jpg")


def _write_log(images_dir: Path, rows: list[tuple[int, str, str, str]]) -> None:
    with open(A.log_path_of(images_dir), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(A.LOG_COLUMNS)
        writer.writerows([entry, "2025-01-01T00:00:00", action, source, target, ""]
                         for entry, action, source, target in rows)


@pytest.mark.parametrize("source, target", [
    ("../outside/secret.jpg", "toy/cats/img_00.jpg"),        # would bring a file from elsewhere in
    ("toy/cats/new.jpg", "../outside/secret.jpg"),
    ("/etc/passwd", "toy/cats/img_00.jpg"),
    ("toy/cats/img_00.jpg", "other/x.jpg"),                  # another folder of images/
    ("toy/cats/x.jpg", "toy_excluded/link/secret.jpg"),      # through a symbolic link leading out
    ("toy\\..\\..\\outside\\x.jpg", "toy/cats/img_00.jpg"),
])
def test_a_crafted_log_moves_nothing_and_later_undos_still_work(images_dir: Path, tmp_path: Path,
                                                                source: str, target: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"not part of the dataset")
    (images_dir.parent / "other").mkdir()
    (images_dir.parent / "toy_excluded").mkdir()
    (images_dir.parent / "toy_excluded" / "link").symlink_to(outside)
    A.exclude_image(images_dir, "dogs/img_00.jpg")  # a genuine change, entry 1
    genuine = A.read_log(images_dir)[0]
    _write_log(images_dir, [(1, genuine.action, genuine.source, genuine.target), (2, "move", source, target)])
    images_before, outside_before = snapshot(images_dir.parent), snapshot(outside)

    with pytest.raises(A.AnnotationError, match="refused, its paths lead outside the dataset"):
        A.undo_last(images_dir)
    assert snapshot(images_dir.parent) == images_before and snapshot(outside) == outside_before
    assert [c.action for c in A.read_log(images_dir)] == ["exclude", "move", "refused"]

    assert A.undo_last(images_dir).undoes == 1  # the crafted entry no longer blocks the genuine one
    assert (images_dir / "dogs" / "img_00.jpg").is_file()
    assert A.undo_all(images_dir).undone == [] and snapshot(outside) == outside_before


def test_undo_all_checks_the_whole_plan_first(images_dir: Path) -> None:
    A.move_image(images_dir, "cats/img_00.jpg", "birds")
    A.exclude_image(images_dir, "cats/img_01.jpg")
    A.move_image(images_dir, "birds/img_00_1.jpg", "dogs")   # the same cat again
    make_photo(images_dir / "cats" / "img_01.jpg", seed=7)  # the excluded cat's place is taken
    result = A.undo_all(images_dir)
    # the cat moved twice comes back through both steps; the excluded one waits, its place being taken
    assert [c.undoes for c in result.undone] == [3, 1]
    assert len(result.problems) == 1 and "a file is already at" in result.problems[0]
    assert (images_dir / "cats" / "img_00.jpg").is_file()
    assert [c.entry for c in A.pending_changes(images_dir)] == [2]


def test_a_file_that_is_not_a_log_is_reported(images_dir: Path) -> None:
    A.log_path_of(images_dir).write_text("something,else\n1,2\n")
    with pytest.raises(A.AnnotationError, match="not an annotation log"):
        A.read_log(images_dir)
