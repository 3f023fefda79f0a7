"""Dataset listing and the train/test split: reproducible, disjoint, per class, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclass.errors import DatasetError
from imgclass.data.splits import (TEST, TRAIN, counts_per_class, list_dataset, read_dedicated_test_images, read_split,
                             split_class, split_dataset, write_split)

from conftest import make_dataset, make_photo


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "images", {"cats": 12, "dogs": 8, "fish": 2}, size=(16, 16))


def test_split_is_reproducible_disjoint_complete_and_per_class(dataset: Path) -> None:
    listing = list_dataset(dataset)
    rows = split_dataset(listing, 0.75, seed=3)
    assert rows == split_dataset(list_dataset(dataset), 0.75, seed=3)
    assert rows != split_dataset(listing, 0.75, seed=4)
    train = {r.path for r in rows if r.split == TRAIN}
    test = {r.path for r in rows if r.split == TEST}
    assert not train & test
    assert train | test == {p for files in listing.images_by_label.values() for p in files}
    assert counts_per_class(rows) == {"cats": {TRAIN: 9, TEST: 3}, "dogs": {TRAIN: 6, TEST: 2},
                                      "fish": {TRAIN: 1, TEST: 1}}
    assert all(r.path.startswith(r.label + "/") for r in rows)


def test_a_class_split_does_not_depend_on_other_classes(dataset: Path) -> None:
    before = [r for r in split_dataset(list_dataset(dataset), 0.75, 0) if r.label == "cats"]
    make_photo(dataset / "dogs" / "extra.jpg", (16, 16), seed=999)
    (dataset / "birds").mkdir()
    for i in range(3):
        make_photo(dataset / "birds" / f"b{i}.jpg", (16, 16), seed=500 + i)
    after = [r for r in split_dataset(list_dataset(dataset), 0.75, 0) if r.label == "cats"]
    assert before == after


def test_listing_order_does_not_matter() -> None:
    paths = [f"c/{i}.jpg" for i in range(10)]
    assert split_class("c", paths, 0.75, 1) == split_class("c", list(reversed(paths)), 0.75, 1)


def test_split_by_subdir_keeps_folders_whole(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for obj in range(4):
        for shot in range(3):
            make_photo(root / "cars" / f"car{obj}" / f"shot{shot}.jpg", (16, 16), seed=10 * obj + shot)
            make_photo(root / "bikes" / f"bike{obj}" / f"shot{shot}.jpg", (16, 16), seed=100 + 10 * obj + shot)
    rows = split_dataset(list_dataset(root), 0.75, 0, split_by="subdir")
    side_of_folder: dict[str, set[str]] = {}
    for r in rows:
        side_of_folder.setdefault(r.path.rsplit("/", 1)[0], set()).add(r.split)
    assert all(len(sides) == 1 for sides in side_of_folder.values())
    assert counts_per_class(rows)["cars"] == {TRAIN: 9, TEST: 3}
    with pytest.raises(DatasetError, match="only one sub-folder"):
        split_class("x", ["x/a/1.jpg", "x/a/2.jpg"], 0.75, 0, "subdir")


def test_non_images_are_skipped_and_listed(dataset: Path) -> None:
    (dataset / "cats" / "notes.txt").write_text("hello")
    (dataset / "README.md").write_text("about")
    (dataset / "cats" / ".hidden.jpg").write_bytes(b"x")
    listing = list_dataset(dataset)
    assert listing.skipped_files == ["README.md", "cats/notes.txt"]
    assert all(p.endswith(".jpg") for files in listing.images_by_label.values() for p in files)


def test_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        list_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        list_dataset(tmp_path / "empty")
    (tmp_path / "empty" / "cats").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        list_dataset(tmp_path / "empty")
    make_dataset(tmp_path / "small", {"cats": 3, "dogs": 1}, size=(16, 16))
    with pytest.raises(DatasetError, match="at least 2 images.*'dogs' \\(1\\)"):
        list_dataset(tmp_path / "small")


def test_dedicated_test_images(dataset: Path) -> None:
    tsv = dataset / "dedicatedTestImages.tsv"
    tsv.write_text("# test images\ncats/img_00.jpg\ndogs/img_03.jpg\tsome note\n")
    listing = list_dataset(dataset)
    assert "dedicatedTestImages.tsv" not in listing.skipped_files
    chosen = read_dedicated_test_images(tsv, listing)
    rows = split_dataset(listing, 0.75, 0, dedicated_test=chosen)
    assert {r.path for r in rows if r.split == TEST} == {"cats/img_00.jpg", "dogs/img_03.jpg"}
    tsv.write_text("cats/nope.jpg\n")
    with pytest.raises(DatasetError, match="line 1: 'cats/nope.jpg'"):
        read_dedicated_test_images(tsv, listing)
    with pytest.raises(DatasetError, match="nothing is left to train"):
        split_dataset(listing, 0.75, 0, dedicated_test={"fish/img_00.jpg", "fish/img_01.jpg"})


def test_write_and_read_back(dataset: Path, tmp_path: Path) -> None:
    listing = list_dataset(dataset)
    rows = split_dataset(listing, 0.75, 0)
    write_split(rows, listing.labels, tmp_path / "proc" / "split.csv", tmp_path / "proc" / "labels.json")
    assert read_split(tmp_path / "proc" / "split.csv") == rows
    assert (tmp_path / "proc" / "split.csv").read_text().splitlines()[0] == "path,label,split"
    assert (tmp_path / "proc" / "labels.json").read_text().split() == ['[', '"cats",', '"dogs",', '"fish"', ']']


def test_class_folders_follow_the_one_label_rule(dataset: Path) -> None:
    (dataset / "cats ").mkdir()  # a trailing space: fine here, not a folder Windows can hold
    make_photo(dataset / "cats " / "a.jpg", (16, 16))
    make_photo(dataset / "cats " / "b.jpg", (16, 16), seed=1)
    with pytest.raises(DatasetError, match="rename these class folders.*ends with a space"):
        list_dataset(dataset)
