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

A run that is killed before it finishes (SIGKILL, a power cut, a preempted
machine) keeps what it has committed: :class:`ResumableFeatureWriter` writes
into ``features.partial/`` and commits its progress every
:data:`COMMIT_SECONDS`, and the next run with the same recipe takes over the
finished rows of unchanged images and featurizes only the rest
(docs/featurize.md).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from imgclass.io.atomic import atomic_path, write_text

CACHE_FORMAT = "imgclass-feature-cache-1"
PROGRESS_FORMAT = "imgclass-feature-progress-1"
#: seconds between two commits of an unfinished step 3's progress (:class:`ResumableFeatureWriter`): a crash
#: loses at most this much work, and a commit (an fsync of the rows since the last one and a small JSON file)
#: costs far less than 30 s of featurizing (BENCHMARKS.md, issue 18); not a parameter, as no trade-off is left
COMMIT_SECONDS = 30.0
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

    def without(self, done: np.ndarray) -> "ReusableFeatures":
        """The same, less the rows already ``done`` (a boolean mask over the new rows)."""
        keep = ~np.asarray(done, dtype=bool)[self.new_rows]
        return ReusableFeatures(self.features_npy, self.new_rows[keep], self.old_rows[keep])

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
    shape = _npy_shape(features_npy)
    if shape is None or len(shape) != 2 or shape[1] != feature_dim:
        return ReusableFeatures.none()
    stored = {path: (row, (size, mtime)) for path, (size, mtime, row) in entries.items() if row < shape[0]}
    return _matching_rows(Path(features_npy), stored, paths, stamps)


def _npy_shape(npy: Path) -> tuple[int, ...] | None:
    """The shape of the array in ``npy``, or None if it cannot be read (the file is then not reused)."""
    try:
        old = np.load(npy, mmap_mode="r")
        shape = old.shape
        del old  # released at once: the file may be replaced afterwards (also on Windows)
    except (OSError, ValueError):
        return None
    return tuple(shape)


def _matching_rows(npy: Path, stored: Mapping[str, tuple[int, Stamp | None]], paths: Sequence[str],
                   stamps: Sequence[Stamp | None]) -> ReusableFeatures:
    """The rows of ``paths`` whose image is unchanged since its row in ``npy`` was computed.

    ``stored`` maps an image's path to its row in ``npy`` and the stamp the
    image had then; an image whose path and current stamp both match is reusable.
    """
    new_rows, old_rows = [], []
    for i, (path, stamp) in enumerate(zip(paths, stamps)):
        entry = stored.get(path)
        if entry is not None and stamp is not None and entry[1] == tuple(stamp):
            new_rows.append(i)
            old_rows.append(entry[0])
    return ReusableFeatures(npy, np.array(new_rows, dtype=np.int64), np.array(old_rows, dtype=np.int64))


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


def _npy_layout(handle: Any) -> tuple[tuple[int, ...], int]:
    """``(shape, offset of the data)`` of an open float32 C-order ``.npy`` file; ValueError if it is not one."""
    handle.seek(0)
    version = np.lib.format.read_magic(handle)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(handle)
    if fortran or dtype != np.dtype(np.float32):
        raise ValueError("not a C-order float32 array")
    return tuple(shape), handle.tell()


class FeatureWriter:
    """Writes rows into a float32 ``.npy`` file as they come; the file appears only when complete.

    The file is created beside the target with its ``.npy`` header and full
    size, and each batch of rows is written at its offset with plain file
    writes: neither the matrix nor a memory map of it is held by the process,
    so its memory stays flat however many images there are (the operating
    system's page cache holds the written pages, outside the process).
    Rows may come in any order; a row never written reads as 0.
    """

    def __init__(self, target: Path, n_rows: int, dim: int, tmp: Path | None = None, reopen: bool = False):
        """``tmp``: where the file grows (default: a hidden name beside ``target``, private to this process);
        ``reopen``: continue an existing ``tmp`` of the same shape (a resumed run) instead of creating it."""
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tmp) if tmp is not None else self.target.with_name(f".{self.target.name}.{os.getpid()}.tmp.npy")
        self.shape = (n_rows, dim)
        self.row_bytes = dim * np.dtype(np.float32).itemsize
        if reopen:
            self._file = open(self.tmp, "rb+")
            shape, offset = _npy_layout(self._file)
            if shape != self.shape:
                self._file.close()
                raise ValueError(f"{self.tmp} holds a {shape} matrix, not {self.shape}")
            self.data_offset = offset
        else:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": self.shape}
            self._file = open(self.tmp, "wb+")
            np.lib.format.write_array_header_1_0(self._file, header)
            self.data_offset = self._file.tell()
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

    def sync(self) -> None:
        """Force the rows written so far onto the disk (before an index that names them is committed)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        """Close the file, leaving it where it is (a resumable run keeps it for the next one)."""
        if not self._file.closed:
            self._file.close()

    def commit(self) -> None:
        """Close and rename onto the target."""
        self.close()
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class _DatasetLock:
    """An exclusive lock on a dataset's ``proc`` folder while step 3 writes its progress there.

    ``flock`` on the folder itself: nothing to clean up, and the kernel drops
    the lock when the process dies, however it dies (a SIGKILLed run never
    leaves a stale lock). Where ``fcntl`` does not exist (Windows) there is
    no lock: two step 3 runs of one dataset at once are then the user's to avoid.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it."""
        try:
            import fcntl
        except ImportError:
            return True
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def partial_folder(features_npy: Path) -> Path:
    """Where an unfinished step 3 keeps its progress: ``features.partial/`` beside ``features.npy``."""
    features_npy = Path(features_npy)
    return features_npy.with_name(f"{features_npy.stem}.partial")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; elsewhere the rename is all there is)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(target: Path, text: str, before_rename: Callable[[], None] | None = None) -> None:
    """Write ``text`` to a temporary file, force it to disk, rename it onto ``target``, force the rename.

    A crash at any point leaves either the previous ``target`` or the new one,
    never a mixture, also after a power cut (the data is on disk before the
    name points at it). ``before_rename`` runs between the two (fault injection in tests).
    """
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename()
    _fsync_folder(target.parent)


def _read_progress(folder: Path) -> tuple[str, dict[str, Any], np.ndarray] | None:
    """``(id, manifest, finished-rows mask)`` of the committed progress in ``folder``, or None if there is none
    (or it is unreadable: it is then ignored, never trusted)."""
    try:
        progress = json.loads((folder / "progress.json").read_text(encoding="utf-8"))
        if progress.get("format") != PROGRESS_FORMAT:
            return None
        ident = str(progress["id"])
        if not ident.isalnum():  # a name inside this folder, nothing else
            return None
        manifest = json.loads((folder / f"{ident}.json").read_text(encoding="utf-8"))
        n_rows = int(progress["rows"])
        bits = np.frombuffer(base64.b64decode(progress["done"], validate=True), dtype=np.uint8)
        if n_rows != len(manifest["paths"]) or n_rows != len(manifest["stamps"]) or len(bits) != -(-n_rows // 8):
            return None
        return ident, manifest, np.unpackbits(bits, count=n_rows).astype(bool)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return None


class ResumableFeatureWriter:
    """Step 3's feature file, written so that a killed run can be continued instead of started over.

    The rows go into a preallocated ``.npy`` (a :class:`FeatureWriter`) inside
    ``features.partial/`` beside ``features.npy``, and every
    ``commit_seconds`` (:data:`COMMIT_SECONDS` by default) the progress is
    committed: the rows written so far are forced to disk, then
    ``progress.json`` (which rows are finished) is replaced atomically. A
    row is named there only after it is on disk, so a batch that was being
    written when the process died is never reused: it is featurized again.
    The folder holds:

    - ``<id>.npy``: the rows so far, float32, at their final positions;
    - ``<id>.json``: the images in row order (path, size, mtime), the
      featurizer's recipe and the width, written once before any commit names ``<id>``;
    - ``progress.json``: ``<id>`` and a bit mask of the finished rows.

    A new run with the same recipe, width and images (path, size, mtime, in
    the same order) continues ``<id>.npy`` in place. With another split or
    changed images it copies the finished rows of unchanged images into a new
    ``<id>.npy`` (both exist until the new one's first commit); with another
    recipe or width the old progress is deleted. Rows of unreadable images
    are never marked finished, so they are retried.

    When every row is written, :meth:`finish` commits, writes the caller's
    index (the reuse cache, stamped with the finished file), renames the file
    onto ``features.npy`` and removes the folder: the final files appear only
    complete, and nothing partial is left behind.

    One step 3 per dataset holds the progress at a time (a lock on the
    dataset's folder, dropped by the kernel when the process dies); a second
    concurrent run writes a private temporary file as before and cannot resume.
    """

    #: fault injection for tests: called with the commit's number (1, 2, ...) between writing
    #: ``progress.json``'s temporary file and renaming it
    before_rename: ClassVar[Callable[[int], None] | None] = None
    #: called with the commit's number after each commit (tests wait there to kill a run mid-way)
    after_commit: ClassVar[Callable[[int], None] | None] = None

    def __init__(self, target: Path, paths: Sequence[str], stamps: Sequence[Stamp | None],
                 recipe: Mapping[str, str], dim: int, commit_seconds: float | None = None, resumable: bool = True):
        """``resumable=False``: keep no progress, write a private temporary file (as before issue 18)."""
        self.target = Path(target)
        self.folder = partial_folder(self.target)
        n_rows = len(paths)
        self.commit_seconds = COMMIT_SECONDS if commit_seconds is None else float(commit_seconds)
        #: rows written (and readable) so far; the committed ones are on disk
        self.done = np.zeros(n_rows, dtype=bool)
        #: rows taken over from an interrupted run's progress
        self.n_resumed = 0
        self.n_commits = 0
        self._finished = False
        self._last_commit = time.monotonic()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _DatasetLock(self.target.parent)
        self.resumable = resumable and self._lock.acquire()
        if not self.resumable:
            self.writer = FeatureWriter(self.target, n_rows, dim)
            return
        try:
            self._open_progress(paths, stamps, recipe, dim)
        except BaseException:
            self._lock.release()
            raise

    def _open_progress(self, paths: Sequence[str], stamps: Sequence[Stamp | None], recipe: Mapping[str, str],
                       dim: int) -> None:
        """Continue the interrupted run's progress, take over what fits of it, or start afresh."""
        n_rows = len(paths)
        self.folder.mkdir(exist_ok=True)
        _remove_orphaned_temporaries(self.target)
        manifest = {"format": PROGRESS_FORMAT, "recipe": dict(recipe), "dim": int(dim), "paths": list(paths),
                    "stamps": [list(stamp) if stamp is not None else None for stamp in stamps]}
        old = _read_progress(self.folder)
        if old is not None and old[1] == manifest:
            try:
                self.writer = FeatureWriter(self.target, n_rows, dim, tmp=self.folder / f"{old[0]}.npy", reopen=True)
            except (OSError, ValueError):
                old = None
            else:  # the same images in the same order: continue the file where it is
                self.id, self.done = old[0], old[2].copy()
                self.n_resumed = int(self.done.sum())
                self._remove_files_but(self.id)
                return
        self.id = uuid.uuid4().hex
        _write_durably(self.folder / f"{self.id}.json", json.dumps(manifest))
        self.writer = FeatureWriter(self.target, n_rows, dim, tmp=self.folder / f"{self.id}.npy")
        if old is not None and old[1]["recipe"] == manifest["recipe"] and old[1]["dim"] == manifest["dim"]:
            reusable = _finished_rows(self.folder / f"{old[0]}.npy", old[1], old[2], paths, stamps, dim)
            reusable.copy_into(self.write)
            self.n_resumed = len(reusable)
        self.commit()  # from here on the progress names the new file: the old one can go
        self._remove_files_but(self.id)

    def write(self, rows: np.ndarray, features: np.ndarray, readable: np.ndarray | None = None) -> None:
        """Write ``features[i]`` as row ``rows[i]``; rows not ``readable`` (NaN) are written but not finished."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self.writer.write(rows, features)
        self.done[rows if readable is None else rows[np.asarray(readable, dtype=bool)]] = True

    def maybe_commit(self) -> None:
        """Commit if ``commit_seconds`` have passed since the last commit."""
        if self.resumable and time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        """Force the rows written so far to disk, then name them in ``progress.json`` (atomically)."""
        if not self.resumable:
            return
        self.writer.sync()
        self.n_commits += 1
        number, hook = self.n_commits, type(self).before_rename
        progress = {"format": PROGRESS_FORMAT, "id": self.id, "rows": len(self.done),
                    "done": base64.b64encode(np.packbits(self.done).tobytes()).decode("ascii")}
        _write_durably(self.folder / "progress.json", json.dumps(progress),
                       (lambda: hook(number)) if hook is not None else None)
        self._last_commit = time.monotonic()
        if type(self).after_commit is not None:
            type(self).after_commit(number)  # type: ignore[misc]

    def finish(self, write_index: Callable[[Path], None]) -> None:
        """Every row is written: commit, ``write_index(finished file)``, rename it onto the target, clean up.

        The index is written before the rename, stamped with the finished
        file (a rename keeps size and mtime), so that a crash between the two
        leaves an index that matches no ``features.npy`` (ignored) and the
        progress that still names the whole file (a rerun reuses every row).
        """
        self.commit()
        self.writer.close()
        write_index(self.writer.tmp)
        os.replace(self.writer.tmp, self.target)
        self._finished = True
        if self.resumable:
            _fsync_folder(self.target.parent)
            with contextlib.suppress(FileNotFoundError):
                (self.folder / "progress.json").unlink()  # first: nothing names the remaining files any more
            self._remove_files_but(None)
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def close(self) -> None:
        """Stop without finishing: a resumable run commits what it has and keeps it; a private one discards it."""
        if self._finished:
            return
        if self.resumable:
            if not self.writer.closed:  # closed: finish() failed after its last commit
                with contextlib.suppress(OSError):  # e.g. a full disk: the last committed progress stands
                    self.commit()
            self.writer.close()
        else:
            self.writer.discard()

    def _remove_files_but(self, keep: str | None) -> None:
        """Remove the folder's files other than ``keep``'s and the progress (older runs, killed commits' temps)."""
        wanted = {"progress.json", f"{keep}.npy", f"{keep}.json"} if keep else set()
        for path in self.folder.iterdir():
            if path.suffix in (".npy", ".json") and path.name not in wanted and path.is_file():
                with contextlib.suppress(OSError):
                    path.unlink()

    def __enter__(self) -> "ResumableFeatureWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.close()
        finally:
            self._lock.release()


def _remove_orphaned_temporaries(target: Path) -> None:
    """Remove private temporary feature files (``.features.npy.<pid>.tmp.npy``) whose process is gone.

    A run that writes privately (no progress kept: ``resumable=False``, or
    another run held the lock, or step 3 before resuming existed) and is
    killed leaves such a file, as large as ``features.npy``, that nothing can
    use. Files of a process that still runs are left alone.
    """
    prefix = f".{target.name}."
    for path in target.parent.glob(f"{prefix}*.tmp.npy"):
        pid = path.name[len(prefix):-len(".tmp.npy")]
        if pid.isdigit() and not _process_exists(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()


def _process_exists(pid: int) -> bool:
    """Whether process ``pid`` runs (True when unsure: then its file is kept)."""
    if pid == os.getpid() or os.name != "posix":  # Windows' os.kill would terminate the process, not probe it
        return True
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # e.g. another user's process
        return True
    return True


def _finished_rows(npy: Path, manifest: Mapping[str, Any], done: np.ndarray, paths: Sequence[str],
                   stamps: Sequence[Stamp | None], dim: int) -> ReusableFeatures:
    """The finished rows of an interrupted run's ``npy`` that belong to unchanged images of ``paths``."""
    if _npy_shape(npy) != (len(done), dim):
        return ReusableFeatures.none()
    stored = {path: (row, tuple(stamp) if stamp is not None else None)
              for row, (path, stamp) in enumerate(zip(manifest["paths"], manifest["stamps"])) if done[row]}
    return _matching_rows(Path(npy), stored, paths, stamps)
