"""Step 3's feature file: written batch by batch, and reused for images that have not changed.

:class:`FeatureWriter` writes rows into ``features.npy`` as they come (the file
appears only when complete), at their offsets, so memory does not grow with
the number of images.

Featurizing is the slow step; re-running it after a new split, an added
image or an interrupted session should not redo the images it has already
done. The previous run's ``features.npy`` is the store; beside it,
``features_cache.json`` says which row belongs to which image and under what
conditions it was computed:

- per image: its path (relative to the dataset folder), size in bytes and
  modification time (ns);
- per run, the *recipe*: the featurizer's fingerprint (a hash of its
  weights, backbone, resolution, resize mode and output; see
  :meth:`imgclass.model.featurizer.Featurizer.fingerprint`) and the precision;
- the size and modification time of ``features.npy`` itself, so an index that
  does not belong to the file beside it (an interrupted write, a copied
  folder) is ignored rather than trusted.

A row is reused only if the recipe and the image's path, size and mtime all
match; anything else (a changed image, a new image, another backbone,
resolution or precision, a re-refined network) is featurized again. Rows of
unreadable images are never stored, so they are retried. Deleting
``features_cache.json`` forces a full re-run.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from imgclass.io.atomic import write_text

CACHE_FORMAT = "imgclass-feature-cache-1"
#: rows copied from the old file per chunk (bounds memory while copying)
COPY_CHUNK_ROWS = 4096

#: (size in bytes, modification time in ns) of a file
Stamp = tuple[int, int]


def file_stamp(path: Path) -> Stamp | None:
    """``(size, mtime_ns)`` of a file, or None if it cannot be stat'ed (it will be featurized and fail)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def make_recipe(featurizer_fingerprint: str, precision: str) -> dict[str, str]:
    """What must be equal for stored features to be reused: the network (weights + input recipe) and precision."""
    return {"featurizer_sha256": featurizer_fingerprint, "precision": precision}


@dataclass(frozen=True)
class ReusableFeatures:
    """Rows of the new feature file that can be copied from rows of the old one (possibly none)."""

    features_npy: Path | None
    new_rows: np.ndarray
    old_rows: np.ndarray

    @classmethod
    def none(cls) -> "ReusableFeatures":
        return cls(None, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.new_rows)

    def missing(self, n_rows: int) -> np.ndarray:
        """The rows (of ``n_rows``) that must be featurized, in order."""
        return np.setdiff1d(np.arange(n_rows, dtype=np.int64), self.new_rows)

    def copy_into(self, write: Callable[[np.ndarray, np.ndarray], None]) -> None:
        """Copy the reusable rows from the old ``features.npy`` with ``write(new_rows, features)``, in chunks.

        The old file is memory-mapped and released before returning, so it can
        be replaced afterwards (also on Windows).
        """
        if not len(self) or self.features_npy is None:
            return
        order = np.argsort(self.old_rows, kind="stable")  # read the old file front to back
        for start in range(0, len(order), COPY_CHUNK_ROWS):
            chunk = order[start:start + COPY_CHUNK_ROWS]
            old = np.load(self.features_npy, mmap_mode="r")  # mapped per chunk: memory stays one chunk
            try:
                values = np.array(old[self.old_rows[chunk]], dtype=np.float32)
            finally:
                del old
            write(self.new_rows[chunk], values)


def _read_index(index_path: Path) -> tuple[dict[str, str], dict[str, tuple[int, int, int]], Stamp] | None:
    try:
        data = json.loads(Path(index_path).read_text(encoding="utf-8"))
        if data.get("format") != CACHE_FORMAT:
            return None
        recipe = {str(k): str(v) for k, v in data["recipe"].items()}
        entries = {str(path): (int(size), int(mtime), int(row))
                   for path, (size, mtime, row) in data["entries"].items()}
        size, mtime = data["features_npy"]
        return recipe, entries, (int(size), int(mtime))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def find_reusable_features(index_path: Path, features_npy: Path, paths: Sequence[str],
                           stamps: Sequence[Stamp | None], recipe: Mapping[str, str],
                           feature_dim: int) -> ReusableFeatures:
    """Which of ``paths`` (with their current ``stamps``) have valid features in ``features_npy``.

    Nothing is reusable if there is no index, it belongs to another version
    of ``features_npy``, the recipe differs, or the stored rows have another
    width. Otherwise an image is reusable if its path, size and mtime match.
    """
    index = _read_index(index_path)
    if index is None:
        return ReusableFeatures.none()
    stored_recipe, entries, npy_stamp = index
    if stored_recipe != dict(recipe) or file_stamp(features_npy) != npy_stamp:
        return ReusableFeatures.none()
    try:
        old = np.load(features_npy, mmap_mode="r")
        shape = old.shape
        del old
    except (OSError, ValueError):
        return ReusableFeatures.none()
    if len(shape) != 2 or shape[1] != feature_dim:
        return ReusableFeatures.none()
    new_rows, old_rows = [], []
    for i, (path, stamp) in enumerate(zip(paths, stamps)):
        entry = entries.get(path)
        if entry is not None and stamp is not None and (entry[0], entry[1]) == stamp and entry[2] < shape[0]:
            new_rows.append(i)
            old_rows.append(entry[2])
    return ReusableFeatures(Path(features_npy), np.array(new_rows, dtype=np.int64),
                            np.array(old_rows, dtype=np.int64))


def write_cache_index(index_path: Path, features_npy: Path, recipe: Mapping[str, str], paths: Iterable[str],
                      stamps: Iterable[Stamp | None], ok: Iterable[bool]) -> None:
    """Write the index for a just-committed ``features.npy`` (rows of unreadable images are left out)."""
    entries = {path: [stamp[0], stamp[1], row]
               for row, (path, stamp, good) in enumerate(zip(paths, stamps, ok)) if good and stamp is not None}
    npy_stamp = file_stamp(features_npy)
    header = {"format": CACHE_FORMAT, "recipe": dict(recipe), "features_npy": list(npy_stamp) if npy_stamp else None}
    lines = [f" {json.dumps(key)}: {json.dumps(value)}," for key, value in header.items()]
    rows = ",\n".join(f"  {json.dumps(path)}: {json.dumps(entry)}" for path, entry in entries.items())
    body = "{\n" + "\n".join(lines) + '\n "entries": {' + (f"\n{rows}\n " if rows else "") + "}\n}\n"
    write_text(index_path, body)  # one image per line: readable, and small for thousands of images


class FeatureWriter:
    """Writes rows into a float32 ``.npy`` file as they come; the file appears only when complete.

    The file is created beside the target with its ``.npy`` header and full
    size, and each batch of rows is written at its offset with plain file
    writes: neither the matrix nor a memory map of it is held by the process,
    so its memory stays flat however many images there are (the operating
    system's page cache holds the written pages, outside the process).
    Rows may come in any order; a row never written reads as 0.
    """

    def __init__(self, target: Path, n_rows: int, dim: int):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.target.with_name(f".{self.target.name}.{os.getpid()}.tmp.npy")
        self.shape = (n_rows, dim)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": self.shape}
        self._file = open(self.tmp, "wb+")
        np.lib.format.write_array_header_1_0(self._file, header)
        self.data_offset = self._file.tell()
        self.row_bytes = dim * np.dtype(np.float32).itemsize
        self._file.truncate(self.data_offset + n_rows * self.row_bytes)  # sparse: no zeros written

    def write(self, rows: np.ndarray, features: np.ndarray) -> None:
        """Write ``features[i]`` as row ``rows[i]`` (each run of consecutive rows in one write)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        values = np.ascontiguousarray(features, dtype=np.float32).reshape(len(rows), self.shape[1])
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows outside 0..{self.shape[0] - 1}")
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            if len(run):
                self._file.seek(self.data_offset + int(rows[run[0]]) * self.row_bytes)
                self._file.write(values[run[0]:run[-1] + 1].data)

    def commit(self) -> None:
        """Close and rename onto the target."""
        self._file.close()
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
