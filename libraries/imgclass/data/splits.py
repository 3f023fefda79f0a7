"""Listing a folder-per-class dataset and splitting it into training and test sets.

The split is reproducible: files are sorted before they are shuffled, and each
class is shuffled by its own generator seeded with ``(randomSeed, class name)``,
so adding a class or an image to one class does not reshuffle the others.
"""

from __future__ import annotations

import csv
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from imgclass.errors import DatasetError
from imgclass.io.atomic import write_csv, write_json
from imgclass.io.images import list_image_files
from imgclass.io.names import is_hidden, label_problem
from imgclass.layout import TOOLKIT_FILES

TRAIN = "train"
TEST = "test"


@dataclass(frozen=True)
class SplitRow:
    """One image: its path relative to the dataset folder (POSIX style), class and split."""

    path: str
    label: str
    split: str


@dataclass
class DatasetListing:
    """The images of a dataset by class, and the files that were skipped."""

    images_by_label: dict[str, list[str]]
    skipped_files: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted(self.images_by_label)


def list_dataset(images_dir: Path) -> DatasetListing:
    """List ``images_dir/<class>/**/<image>``; classes are the sorted sub-folder names.

    Raises
    ------
    DatasetError
        If the folder is missing, has no class folders, has no images, a
        class has fewer than 2 images (one for training, one for testing), or
        a class folder's name is not a valid label
        (:func:`imgclass.io.names.label_problem`: the same rule as for labels
        given in a URL list or to the image search, so a dataset made on one
        system splits the same on another).
    """
    if not images_dir.is_dir():
        raise DatasetError(f"image folder not found: {images_dir}. Put your images in "
                           f"{images_dir}/<class>/*.jpg (one folder per class), or run "
                           "scripts/0_downloadData.py for the demo data.")
    class_dirs = sorted(p for p in images_dir.iterdir() if p.is_dir() and not is_hidden(p.name))
    skipped = sorted(p.name for p in images_dir.iterdir()
                     if p.is_file() and not is_hidden(p.name) and p.name not in TOOLKIT_FILES)
    if not class_dirs:
        raise DatasetError(f"no class folders in {images_dir}: expected {images_dir}/<class>/*.jpg")
    bad_names = [problem for problem in map(label_problem, (p.name for p in class_dirs)) if problem]
    if bad_names:
        raise DatasetError(f"rename these class folders of {images_dir}: " + "; ".join(bad_names))
    images_by_label: dict[str, list[str]] = {}
    for class_dir in class_dirs:
        images, others = list_image_files(class_dir)
        images_by_label[class_dir.name] = [p.relative_to(images_dir).as_posix() for p in images]
        skipped += [p.relative_to(images_dir).as_posix() for p in others]
    if not any(images_by_label.values()):
        raise DatasetError(f"no images found under {images_dir}")
    too_small = {label: len(files) for label, files in images_by_label.items() if len(files) < 2}
    if too_small:
        details = ", ".join(f"'{label}' ({n})" for label, n in too_small.items())
        raise DatasetError(f"every class needs at least 2 images (one to train, one to test); "
                           f"too few in: {details}. Add images or remove those folders.")
    return DatasetListing(images_by_label, sorted(skipped))


def _split_unit(relative_path: str, split_by: str) -> str:
    """The unit kept whole by the split: the file, or its top sub-folder inside the class."""
    parts = PurePosixPath(relative_path).parts  # (label, [subdir, ...], file)
    if split_by == "subdir" and len(parts) > 2:
        return "/".join(parts[:2])
    return relative_path


def split_class(label: str, paths: Sequence[str], ratio_train: float, seed: int,
                split_by: str = "filename") -> list[SplitRow]:
    """Split one class's images; at least one unit goes to each side.

    ``split_by='subdir'`` keeps every sub-folder of the class folder (e.g. all
    photos of one object) on one side, so near-identical shots never straddle
    the split; files lying directly in the class folder are units of their own.
    """
    units: dict[str, list[str]] = {}
    for path in sorted(paths):
        units.setdefault(_split_unit(path, split_by), []).append(path)
    if len(units) < 2:
        raise DatasetError(f"class '{label}' cannot be split by {split_by}: it has only one "
                           f"{'sub-folder' if split_by == 'subdir' else 'image'}")
    order = sorted(units)
    random.Random(f"{seed}:{label}").shuffle(order)
    target_train = ratio_train * sum(len(files) for files in units.values())
    cumulative = list(itertools.accumulate(len(units[u]) for u in order))
    # The first k shuffled units train: k brings the training count closest to the
    # target, with at least one unit on each side.
    k = min(range(1, len(order)), key=lambda n: (abs(cumulative[n - 1] - target_train), n))
    rows = [SplitRow(p, label, TRAIN if i < k else TEST) for i, unit in enumerate(order) for p in units[unit]]
    return sorted(rows, key=lambda r: r.path)


def read_dedicated_test_images(tsv_path: Path, listing: DatasetListing) -> set[str]:
    """Read ``dedicatedTestImages.tsv``: one image path per line, relative to the dataset folder.

    Extra tab-separated columns and ``#`` comment lines are ignored. A listed
    file that is not among the dataset's images is an error, so a typo cannot
    silently move an image to training.
    """
    known = {p for files in listing.images_by_label.values() for p in files}
    chosen: set[str] = set()
    for number, line in enumerate(tsv_path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.split("\t", 1)[0].strip().replace("\\", "/")
        if not entry or entry.startswith("#"):
            continue
        if entry not in known:
            raise DatasetError(f"{tsv_path}, line {number}: '{entry}' is not an image of the dataset "
                               "(paths are relative to the dataset folder, e.g. 'cats/cat01.jpg')")
        chosen.add(entry)
    if not chosen:
        raise DatasetError(f"{tsv_path} lists no images")
    return chosen


def split_dataset(listing: DatasetListing, ratio_train: float, seed: int, split_by: str = "filename",
                  dedicated_test: Iterable[str] | None = None) -> list[SplitRow]:
    """Split every class (see :func:`split_class`), or use a dedicated test list.

    With ``dedicated_test``, exactly those images form the test set and all
    others the training set; a class left without a training image is an error.
    """
    rows: list[SplitRow] = []
    if dedicated_test is not None:
        test_set = set(dedicated_test)
        for label in listing.labels:
            class_rows = [SplitRow(p, label, TEST if p in test_set else TRAIN)
                          for p in listing.images_by_label[label]]
            if not any(r.split == TRAIN for r in class_rows):
                raise DatasetError(f"class '{label}': every image is in the dedicated test list; "
                                   "nothing is left to train on")
            rows += class_rows
    else:
        for label in listing.labels:
            rows += split_class(label, listing.images_by_label[label], ratio_train, seed, split_by)
    check_disjoint(rows)
    return rows


def check_disjoint(rows: Sequence[SplitRow]) -> None:
    """Raise if an image appears twice (in both sets, or under two classes)."""
    counts = Counter(r.path for r in rows)
    repeated = [p for p, n in counts.items() if n > 1]
    if repeated:
        raise DatasetError(f"images listed more than once in the split: {repeated[:5]}")
    train = {r.path for r in rows if r.split == TRAIN}
    test = {r.path for r in rows if r.split == TEST}
    assert not train & test, "train and test sets overlap"


def counts_per_class(rows: Sequence[SplitRow]) -> dict[str, dict[str, int]]:
    """``{label: {'train': n, 'test': m}}`` in label order."""
    counts: dict[str, dict[str, int]] = {}
    for row in sorted(rows, key=lambda r: r.label):
        counts.setdefault(row.label, {TRAIN: 0, TEST: 0})[row.split] += 1
    return counts


def write_split(rows: Sequence[SplitRow], labels: Sequence[str], split_csv: Path, labels_json: Path) -> None:
    """Write ``split.csv`` (``path,label,split``) and ``labels.json`` atomically."""
    write_csv(split_csv, ["path", "label", "split"], ((r.path, r.label, r.split) for r in rows))
    write_json(labels_json, list(labels))


def read_split(split_csv: Path) -> list[SplitRow]:
    """Read ``split.csv`` back."""
    with open(split_csv, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "label", "split"} <= set(reader.fieldnames):
            raise DatasetError(f"{split_csv} is not a split file (columns path,label,split)")
        return [SplitRow(r["path"], r["label"], r["split"]) for r in reader]
