"""Atomic file output: write to a temporary file beside the target, then rename.

A crash or Ctrl-C half way through a step must never leave a truncated
``split.csv`` or ``features.npy`` that the next step would silently read.
``os.replace`` is atomic on POSIX and Windows when source and target are on the
same file system, which holds because the temporary file lives in the target's
folder.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed onto ``target``.

    Parameters
    ----------
    target:
        Final file path. Its folder is created if needed.
    suffix:
        Suffix of the temporary file (default: the target's own suffix), for
        writers such as ``numpy.save`` or ``matplotlib`` that infer the format
        from the file name.

    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp_name)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(target: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]],
              delimiter: str = ",") -> None:
    """Write a CSV (``header`` then ``rows``, ``\n`` line ends, UTF-8) to ``target`` atomically.

    The one CSV writer of the toolkit: every table it writes (split, features,
    predictions, training log, reports) goes through here, so all share the
    same dialect and none is ever left half-written.
    """
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def unused_path(path: Path) -> Path:
    """``path``, or ``stem_1.ext``, ``stem_2.ext``, ... if it is taken: moves never overwrite a file."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate
