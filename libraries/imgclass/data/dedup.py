"""Find exact and near-duplicate images with a perceptual hash, and set the extras aside.

Web searches return the same photo many times: the same file on several
sites, resized, recompressed, sometimes under two queries. Duplicates inflate
a class, and a copy in the training set and another in the test set makes the
test accuracy a memory test. Like the original tutorial, images are compared by
their difference hash (``imagehash.dhash``, ``hash_size`` 16 = 256 bits); two
images whose hashes differ in at most ``max_distance`` bits are near-duplicates
(``max_distance=0`` is the original's rule: identical hashes). The default
threshold is measured on real photos, see ``benchmarks/dedup_threshold.py``.

Pairs are found by multi-index hashing, not by comparing all pairs: each hash
is cut into ``max_distance + 1`` chunks, and by the pigeonhole principle two
hashes within ``max_distance`` bits agree exactly on at least one chunk, so only
images sharing a chunk are compared.

:func:`remove_duplicates` keeps one image per group (the largest, then the
first path in sorted order) and MOVES the others to
``images/<dataset>_duplicates/`` under the same relative path, writing a CSV
report first; :func:`undo_moves` puts them back from that report. Both go
through :mod:`imgclass.io.moves`: the whole plan is checked before the first
move, nothing is overwritten or deleted, and the result says exactly what
moved. The report travels with the dataset, so every path read back from it
must stay inside the dataset folder or its ``_duplicates`` sibling.
:func:`find_straddling_duplicates` is for the split step: the near-duplicate
pairs that would sit in both the training and the test set.
"""

from __future__ import annotations

import csv
import datetime
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from PIL import Image
from tqdm import tqdm

from imgclass.errors import DatasetError, ImgClassError
from imgclass.io.atomic import unused_path, write_csv
from imgclass.io.images import UnreadableImageError, list_image_files, load_rgb
from imgclass.io.moves import Move, MoveReport, UnsafePathError, confined, execute, plan_moves
from imgclass.layout import DatasetLayout
from imgclass.parameters import DEFAULT_DEDUP_MAX_DISTANCE, Parameters, StepSpec

if TYPE_CHECKING:
    import numpy as np

STEP = StepSpec("dedup", "scripts/removeDuplicates.py",
                "move near-duplicate images aside to images/<datasetName>_duplicates/ (or undo that)",
                ("datasetName", "rootDir", "dedup_hashSize", "dedup_maxDistance", "dedup_crossClass"))

#: Columns of the report written by :func:`remove_duplicates` (one row per image of a group).
REPORT_COLUMNS = ("group", "role", "path", "label", "kept", "distance", "cross_class",
                  "width", "height", "bytes", "moved_to")
#: Columns of the hash cache (``proc/<dataset>/dhash<size>.csv``).
CACHE_COLUMNS = ("path", "bytes", "mtime_ns", "width", "height", "dhash")

ROLE_KEPT = "kept"          # the image that stays
ROLE_MOVED = "moved"        # moved to the duplicates folder (or would be, in a dry run)
ROLE_CONFLICT = "conflict"  # cross-class group left in place (dedup_crossClass='report')


class DedupError(ImgClassError):
    """The image folder or an undo report cannot be used."""


# --------------------------------------------------------------------------- hashing
def dhash_image(image: Image.Image, hash_size: int = 16) -> int:
    """The difference hash of ``image`` as a ``hash_size**2``-bit integer (``imagehash.dhash``)."""
    import imagehash
    import numpy as np

    bits = imagehash.dhash(image, hash_size=hash_size).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big") >> (-bits.size % 8)


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()


def dhash_file(path: str | os.PathLike[str], hash_size: int = 16) -> tuple[int, int, int]:
    """``(dhash, width, height)`` of an image file; EXIF orientation is applied first.

    JPEGs are decoded at a reduced scale (at least ``8 * hash_size`` pixels a
    side): the hash only sees a ``(hash_size + 1) x hash_size`` thumbnail, and
    a full decode of every photo would dominate the run time.
    Raises :class:`~imgclass.io.images.UnreadableImageError`.
    """
    try:
        with Image.open(path) as header:
            width, height = header.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"cannot decode {path}: {exc}") from exc
    draft = 8 * hash_size
    return dhash_image(load_rgb(path, draft_size=(draft, draft)), hash_size), width, height


@dataclass(frozen=True)
class HashedImage:
    """One image: its path relative to the image folder, dhash, size in pixels and bytes."""

    path: str
    dhash: int
    width: int
    height: int
    bytes: int

    @property
    def label(self) -> str:
        """The class: the first folder of the relative path ('' for a file at the top)."""
        parts = self.path.split("/")
        return parts[0] if len(parts) > 1 else ""

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _read_cache(cache_path: Path | None) -> dict[str, tuple[int, int, int, int, int]]:
    if cache_path is None or not cache_path.is_file():
        return {}
    cache = {}
    try:
        with open(cache_path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                cache[row["path"]] = (int(row["bytes"]), int(row["mtime_ns"]), int(row["width"]),
                                      int(row["height"]), int(row["dhash"], 16))
    except (OSError, KeyError, ValueError, TypeError, csv.Error):
        return {}  # a damaged cache is only a cache: recompute
    return cache


def _write_cache(cache_path: Path, cache: Mapping[str, tuple[int, int, int, int, int]]) -> None:
    write_csv(cache_path, CACHE_COLUMNS, ([path, *cache[path][:4], f"{cache[path][4]:x}"] for path in sorted(cache)))


def hash_images(images_dir: str | os.PathLike[str], paths: Iterable[str], hash_size: int = 16,
                cache_path: str | os.PathLike[str] | None = None,
                progress: bool = False) -> tuple[list[HashedImage], list[tuple[str, str]]]:
    """Hash the images ``paths`` (relative to ``images_dir``, '/'-separated).

    Parameters
    ----------
    cache_path:
        Optional CSV cache of hashes (:data:`CACHE_COLUMNS`); an entry is reused
        while the file's size and modification time are unchanged. It is
        rewritten with the entries of ``paths`` and those of other files that
        still exist.
    progress:
        Show a tqdm progress bar on stderr.

    Returns
    -------
    (hashed, unreadable)
        The readable images, in the order of ``paths``, and ``(path, reason)``
        for the files that cannot be decoded.
    """
    images_dir = Path(images_dir)
    cache_file = Path(cache_path) if cache_path is not None else None
    cache = _read_cache(cache_file)
    fresh: dict[str, tuple[int, int, int, int, int]] = {}
    hashed: list[HashedImage] = []
    unreadable: list[tuple[str, str]] = []
    for rel in tqdm(list(paths), desc="hashing", unit="img", disable=not progress):
        full = images_dir / rel
        try:
            stat = full.stat()
        except OSError as exc:
            unreadable.append((rel, f"cannot read: {exc.strerror or exc}"))
            continue
        entry = cache.get(rel)
        if entry is None or entry[:2] != (stat.st_size, stat.st_mtime_ns):
            try:
                value, width, height = dhash_file(full, hash_size)
            except UnreadableImageError as exc:
                unreadable.append((rel, str(exc)))
                continue
            entry = (stat.st_size, stat.st_mtime_ns, width, height, value)
        fresh[rel] = entry
        hashed.append(HashedImage(rel, entry[4], entry[2], entry[3], entry[0]))
    if cache_file is not None:
        kept = {p: e for p, e in cache.items() if p not in fresh and (images_dir / p).is_file()}
        if {**kept, **fresh} != cache:
            _write_cache(cache_file, {**kept, **fresh})
    return hashed, unreadable


# --------------------------------------------------------------------------- search
def _chunk_masks(n_bits: int, n_chunks: int) -> list[int]:
    bounds = [round(i * n_bits / n_chunks) for i in range(n_chunks + 1)]
    return [((1 << (hi - lo)) - 1) << lo for lo, hi in zip(bounds, bounds[1:])]


#: Buckets larger than this are compared with numpy instead of pair by pair in Python.
_LARGE_BUCKET = 64


def _as_words(hashes: Sequence[int], n_bits: int) -> np.ndarray:
    """Hashes as an ``(n, ceil(n_bits / 64))`` uint64 array, for vectorised Hamming distances."""
    import numpy as np

    n_words = max(1, -(-n_bits // 64))
    data = b"".join(value.to_bytes(8 * n_words, "little") for value in hashes)
    return np.frombuffer(data, dtype="<u8").reshape(len(hashes), n_words)


def _popcount_rows(words: np.ndarray) -> np.ndarray:
    """Set bits per row of a uint64 array (``np.bitwise_count`` needs numpy >= 2)."""
    import numpy as np

    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    return np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=1).sum(axis=1, dtype=np.int64)


def _compare_large_bucket(members: list[int], words: np.ndarray, max_distance: int,
                          found: dict[tuple[int, int], int]) -> None:
    import numpy as np

    index = np.asarray(members)
    block = words[index]
    for a in range(len(index) - 1):
        distances = _popcount_rows(block[a + 1:] ^ block[a])
        for offset in np.flatnonzero(distances <= max_distance):
            found[int(index[a]), int(index[a + 1 + offset])] = int(distances[offset])


def near_duplicate_pairs(hashes: Sequence[int], max_distance: int,
                         n_bits: int = 256) -> list[tuple[int, int, int]]:
    """All pairs of hashes within ``max_distance`` bits: ``(i, j, distance)`` with ``i < j``, sorted.

    Multi-index hashing: the ``n_bits`` are cut into ``max_distance + 1``
    chunks; two hashes within ``max_distance`` bits agree exactly on at least
    one chunk, so only hashes sharing a chunk value are compared. The result is
    exact (the same as comparing all pairs). On photos the buckets are tiny
    (50,000 random-like hashes take about a second); images that share large
    plain areas share chunks more often, and big buckets are compared with
    numpy rather than pair by pair.
    """
    if max_distance < 0:
        raise ValueError("max_distance must be >= 0")
    if max_distance >= n_bits:  # every pair qualifies
        return [(i, j, hamming(hashes[i], hashes[j])) for i in range(len(hashes))
                for j in range(i + 1, len(hashes))]
    masks = _chunk_masks(n_bits, max_distance + 1)
    words: "np.ndarray | None" = None
    large_done: list[set[int]] = []  # members of the large buckets compared so far
    found: dict[tuple[int, int], int] = {}
    for k, mask in enumerate(masks):
        buckets: dict[int, list[int]] = defaultdict(list)
        for index, value in enumerate(hashes):
            buckets[value & mask].append(index)
        earlier = masks[:k]
        for members in buckets.values():
            if len(members) > _LARGE_BUCKET:
                member_set = set(members)
                if any(member_set <= done for done in large_done):
                    continue  # every pair was compared in an earlier chunk (plain areas repeat)
                words = _as_words(hashes, n_bits) if words is None else words
                _compare_large_bucket(members, words, max_distance, found)
                large_done.append(member_set)
                continue
            for a, i in enumerate(members):
                hi = hashes[i]
                for j in members[a + 1:]:
                    diff = hi ^ hashes[j]
                    if any(not diff & m for m in earlier):
                        continue  # examined in an earlier chunk they share
                    distance = diff.bit_count()
                    if distance <= max_distance:
                        found[i, j] = distance
    return sorted((i, j, d) for (i, j), d in found.items())


# --------------------------------------------------------------------------- grouping
@dataclass
class DuplicateGroup:
    """One kept image and its near-duplicates (each within the threshold of the kept one)."""

    kept: HashedImage
    duplicates: list[tuple[HashedImage, int]]  # (image, Hamming distance to kept)

    @property
    def labels(self) -> list[str]:
        return sorted({self.kept.label, *(image.label for image, _ in self.duplicates)})

    @property
    def cross_class(self) -> bool:
        return len(self.labels) > 1


def group_duplicates(images: Sequence[HashedImage], max_distance: int,
                     hash_size: int = 16) -> list[DuplicateGroup]:
    """Group near-duplicates, within and across classes; each group keeps one image.

    Images are visited largest first (pixels), then in sorted path order; an
    image not yet in a group becomes the kept image of a new group, which takes
    every not-yet-grouped image within ``max_distance`` of it. So every
    duplicate is close to the image that is kept in its place (no chains of
    "similar to something similar"), and the kept image is the largest, then
    the first in sorted order. Groups are returned in that order.
    """
    order = sorted(range(len(images)), key=lambda i: (-images[i].pixels, images[i].path))
    rank = {index: position for position, index in enumerate(order)}
    neighbours: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, j, distance in near_duplicate_pairs([im.dhash for im in images], max_distance, hash_size ** 2):
        neighbours[i].append((j, distance))
        neighbours[j].append((i, distance))
    grouped: set[int] = set()
    groups = []
    for i in order:
        if i in grouped or i not in neighbours:
            continue
        members = sorted(((j, d) for j, d in neighbours[i] if j not in grouped), key=lambda jd: rank[jd[0]])
        if not members:
            continue
        grouped.add(i)
        grouped.update(j for j, _ in members)
        groups.append(DuplicateGroup(images[i], [(images[j], d) for j, d in members]))
    return groups


# --------------------------------------------------------------------------- remove / undo
@dataclass
class DedupResult:
    """What :func:`remove_duplicates` found and did."""

    images: int
    unreadable: list[tuple[str, str]]
    groups: list[DuplicateGroup]
    moved: int
    report_path: Path | None  # None when no near-duplicates were found
    dry_run: bool
    cross_class_action: str
    #: the moves made (None in a dry run or when nothing was to move): what moved, failed, was moved back
    moves: MoveReport | None = None

    @property
    def cross_class_groups(self) -> list[DuplicateGroup]:
        return [g for g in self.groups if g.cross_class]

    def summary(self, max_listed: int = 20) -> str:
        """Plain-text summary for the user."""
        n_dups = sum(len(g.duplicates) for g in self.groups)
        lines = [f"hashed {self.images} images ({len(self.unreadable)} unreadable, left in place)"]
        lines += [f"  unreadable: {path}: {reason}" for path, reason in self.unreadable[:max_listed]]
        lines.append(f"found {len(self.groups)} groups of near-duplicates ({n_dups} extra copies), "
                     f"{len(self.cross_class_groups)} of them across classes")
        for group in self.cross_class_groups[:max_listed]:
            copies = ", ".join(f"{im.path} (distance {d})" for im, d in group.duplicates)
            lines.append(f"  across classes {'/'.join(group.labels)}: {group.kept.path} ~ {copies}")
        if len(self.cross_class_groups) > max_listed:
            lines.append(f"  ... and {len(self.cross_class_groups) - max_listed} more (see the report)")
        if self.cross_class_groups and self.cross_class_action == "report":
            lines.append("  cross-class groups were left in place (dedup_crossClass='report'): "
                         "move the copies under the wrong label by hand")
        verb = "would move" if self.dry_run else "moved"
        report = f"; report: {self.report_path}" if self.report_path else ""
        lines.append(f"{verb} {self.moved} files{report}")
        if self.moves is not None and not self.moves.complete:
            lines.append("a move failed; every file moved by this run was moved back where possible:")
            lines += [f"  {problem}" for problem in self.moves.problems()]
        if not self.dry_run and self.moved:
            lines.append(f"undo with: python scripts/removeDuplicates.py --undo={self.report_path}")
        return "\n".join(lines)


def _report_rows(groups: Sequence[DuplicateGroup], cross_class_action: str,
                 duplicates_dir: Path) -> list[dict[str, object]]:
    rows = []
    claimed: set[Path] = set()
    for number, group in enumerate(groups, start=1):
        cross = group.cross_class
        members = [(group.kept, 0, True), *((im, d, False) for im, d in group.duplicates)]
        for image, distance, is_kept in members:
            if cross and cross_class_action == "report":
                role = ROLE_CONFLICT
            elif cross and cross_class_action == "moveAll":
                role = ROLE_MOVED
            else:
                role = ROLE_KEPT if is_kept else ROLE_MOVED
            moved_to = ""
            if role == ROLE_MOVED:
                target = duplicates_dir / image.path
                n = 0
                while target.exists() or target in claimed:
                    n += 1
                    target = (duplicates_dir / image.path).with_name(
                        f"{Path(image.path).stem}_{n}{Path(image.path).suffix}")
                claimed.add(target)
                moved_to = target.relative_to(duplicates_dir).as_posix()
            rows.append({"group": number, "role": role, "path": image.path, "label": image.label,
                         "kept": group.kept.path, "distance": distance, "cross_class": int(cross),
                         "width": image.width, "height": image.height, "bytes": image.bytes,
                         "moved_to": moved_to})
    return rows


def remove_duplicates(layout: DatasetLayout, hash_size: int = 16, max_distance: int = DEFAULT_DEDUP_MAX_DISTANCE,
                      cross_class_action: str = "keepOne", dry_run: bool = False,
                      progress: bool = False) -> DedupResult:
    """Find near-duplicates in the dataset's image folder and move all but one of each group aside.

    Parameters
    ----------
    layout:
        The dataset: its ``images_dir`` (one folder per class), ``duplicates_dir``
        (where moved files go, under their relative path, with the reports)
        and the hash cache ``dhash_cache_csv(hash_size)`` (see :func:`hash_images`).
    hash_size, max_distance:
        dhash size and the largest Hamming distance of near-duplicates.
    cross_class_action:
        For groups spanning classes: ``'keepOne'`` (like any group), ``'moveAll'``
        (move every copy: the label is ambiguous) or ``'report'`` (move none).
    dry_run:
        Move nothing; the report (``duplicates_dry_run_csv``) says what would move.
    progress:
        Show a tqdm progress bar while hashing.

    Returns
    -------
    DedupResult
        With the report's path: ``duplicates_report_csv(<time>)`` (columns
        :data:`REPORT_COLUMNS`), written before anything moves so that an
        interrupted run can still be undone; none when nothing was found.

    Raises
    ------
    DedupError
        If a planned move cannot be made (a copy that is a symbolic link or
        no longer there, a target taken in the meantime): nothing moves. If a
        move fails half-way, the files already moved are moved back and the
        result's ``moves`` says what happened to each.
    """
    images_dir, duplicates_dir = layout.images_dir, layout.duplicates_dir
    if cross_class_action not in ("keepOne", "moveAll", "report"):
        raise ValueError(f"unknown cross_class_action {cross_class_action!r}")
    if not images_dir.is_dir():
        raise DatasetError(f"image folder not found: {images_dir}")
    files, _ = list_image_files(images_dir)
    paths = [p.relative_to(images_dir).as_posix() for p in files]
    hashed, unreadable = hash_images(images_dir, paths, hash_size, layout.dhash_cache_csv(hash_size), progress)
    groups = group_duplicates(hashed, max_distance, hash_size)
    rows = _report_rows(groups, cross_class_action, duplicates_dir)
    moving = [row for row in rows if row["role"] == ROLE_MOVED]
    result = DedupResult(images=len(hashed) + len(unreadable), unreadable=unreadable, groups=groups,
                         moved=len(moving), report_path=None, dry_run=dry_run, cross_class_action=cross_class_action)
    if not rows:
        return result  # nothing found: no report, no duplicates folder
    plan = plan_moves([Move(images_dir / str(row["path"]), duplicates_dir / str(row["moved_to"])) for row in moving],
                      [images_dir, duplicates_dir])
    if plan.refused and not dry_run:
        raise DedupError("nothing was moved: these duplicates cannot be moved aside:\n  "
                         + "\n  ".join(map(str, plan.refused)))
    if dry_run:
        result.report_path = layout.duplicates_dry_run_csv
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        result.report_path = unused_path(layout.duplicates_report_csv(stamp))
    write_csv(result.report_path, REPORT_COLUMNS, ([row[c] for c in REPORT_COLUMNS] for row in rows))
    if not dry_run:
        result.moves = execute(plan, rollback=True)
        result.moved = len(result.moves.moved)
    return result


def remove_duplicates_for(params: Parameters, dry_run: bool = False, progress: bool = False) -> DedupResult:
    """:func:`remove_duplicates` on ``params.datasetName`` with the ``dedup_*`` parameters."""
    return remove_duplicates(DatasetLayout.from_parameters(params), hash_size=params.dedup_hashSize,
                             max_distance=params.dedup_maxDistance, cross_class_action=params.dedup_crossClass,
                             dry_run=dry_run, progress=progress)


@dataclass
class UndoResult:
    """What :func:`undo_moves` did; ``problems`` lists the files it did not restore, with why."""

    restored: int = 0
    already_back: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"restored {self.restored} files ({self.already_back} were already back)"]
        if self.problems:
            lines.append(f"{len(self.problems)} could not be restored:")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def undo_moves(report_path: str | os.PathLike[str], layout: DatasetLayout) -> UndoResult:
    """Move every file the report says was moved back to its original path.

    The report travels with the dataset and may have been edited: if any of
    its paths leads outside the image folder (``path``) or the duplicates
    folder (``moved_to``), nothing is moved and :class:`DedupError` lists
    them. Otherwise the whole plan is checked first; a file is never
    overwritten (if something is already at the original path, the moved
    copy stays where it is and is listed), a file already back is counted as
    such, and a move that fails half-way stops the undo with the files not
    restored listed. Running the undo twice is harmless.
    """
    report_path = Path(report_path)
    images_dir, duplicates_dir = layout.images_dir, layout.duplicates_dir
    try:
        with open(report_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DedupError(f"cannot read the duplicates report {report_path}: {exc}") from exc
    if rows and not {"role", "path", "moved_to"} <= rows[0].keys():
        raise DedupError(f"{report_path} is not a duplicates report (columns role, path, moved_to missing)")
    result = UndoResult()
    moves, unsafe = [], []
    for number, row in enumerate(rows, start=2):
        if row["role"] != ROLE_MOVED or not row["moved_to"]:
            continue
        try:
            moves.append(Move(confined(duplicates_dir, row["moved_to"]), confined(images_dir, row["path"])))
        except (UnsafePathError, TypeError) as exc:
            unsafe.append(f"line {number}: {exc}")
    if unsafe:
        raise DedupError(f"{report_path} has paths leading outside {images_dir} or {duplicates_dir}; nothing was "
                         "moved:\n  " + "\n  ".join(unsafe))
    pending = []
    for move in moves:
        if not move.source.exists() and move.target.exists():
            result.already_back += 1
        else:
            pending.append(move)
    report = execute(plan_moves(pending, [images_dir, duplicates_dir]))
    result.restored = len(report.moved)
    result.problems = report.problems()
    return result


# --------------------------------------------------------------------------- split check
@dataclass(frozen=True)
class StraddlingPair:
    """Two near-duplicate images, one in the training set and one in the test set."""

    train_path: str
    test_path: str
    distance: int


def find_straddling_duplicates(rows: Iterable[tuple[str, str]], images_dir: str | os.PathLike[str],
                               hash_size: int = 16, max_distance: int = DEFAULT_DEDUP_MAX_DISTANCE,
                               cache_path: str | os.PathLike[str] | None = None) -> list[StraddlingPair]:
    """Near-duplicate pairs that a split puts on both sides of train/test.

    Parameters
    ----------
    rows:
        ``(path, split)`` with ``path`` relative to ``images_dir`` ('/'-separated)
        and ``split`` ``'train'`` or ``'test'`` (other values are ignored).
    images_dir:
        ``images/<dataset>/``.
    hash_size, max_distance:
        As for :func:`remove_duplicates` (``dedup_hashSize``, ``dedup_maxDistance``).
    cache_path:
        Optional hash cache, e.g. :meth:`DatasetLayout.dhash_cache_csv` (shared with
        :func:`remove_duplicates`, so after a dedup run nothing is decoded again).

    Returns
    -------
    list[StraddlingPair]
        Sorted by distance, then paths. Unreadable images are skipped (the
        split step reports them itself).
    """
    split_of = {path: split for path, split in rows if split in ("train", "test")}
    hashed, _ = hash_images(images_dir, sorted(split_of), hash_size, cache_path)
    pairs = []
    for i, j, distance in near_duplicate_pairs([im.dhash for im in hashed], max_distance, hash_size ** 2):
        a, b = hashed[i].path, hashed[j].path
        if split_of[a] != split_of[b]:
            train, test = (a, b) if split_of[a] == "train" else (b, a)
            pairs.append(StraddlingPair(train, test, distance))
    return sorted(pairs, key=lambda p: (p.distance, p.train_path, p.test_path))
