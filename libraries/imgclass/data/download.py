"""Getting images onto disk: the bundled demo set, or a list of URLs to download.

Step 0 of the pipeline fills ``<root>/images/<dataset>/<class>/`` in one of two
ways:

- :func:`install_demo_images` copies the demo photographs that ship with the
  project (``resources/demoImages/<class>/*.jpg``), so the tutorial runs
  offline.
- :func:`read_url_list` + :func:`download_images` fetch the images of a TSV
  file of ``label<TAB>url`` lines (the format of the original tutorial's
  ``fashionTextureUrls.tsv``).

Both are safe to re-run: a file that is already there is skipped, never
overwritten, and nothing is ever deleted, so a user's own images and edits in
the image folder survive. Every file is written atomically, so an interrupted
run leaves no half-written image that a later step would trip over. A
download that fails (HTTP error, timeout, not an image, ...) is counted by
reason and leaves no file: one dead link must not stop a list of thousands.
"""

from __future__ import annotations

import collections
import hashlib
import re
import shutil
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import requests
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from imgclass.io.atomic import atomic_path
from imgclass.errors import DatasetError, ImgClassError
from imgclass.io.images import (
    UnreadableImageError,
    decode_image_bytes,
    list_image_files,
    save_jpeg,
    shrink_to_max_side,
)

#: Responses larger than this are abandoned: no photograph worth training on is
#: bigger, and it bounds the memory a hostile or mistaken URL can take.
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024

#: Some image hosts refuse requests without a User-Agent.
USER_AGENT = "imgclass/0.1 (image classification tutorial; python-requests)"

#: Characters that are unsafe in a folder name on Windows, macOS or Linux.
_UNSAFE_LABEL_CHARS = set('/\\<>:"|?*')
_MAX_LABEL_LENGTH = 100
_MAX_STEM_LENGTH = 60
_HASH_LENGTH = 10
_CHUNK_BYTES = 64 * 1024
_MAX_REPORTED_LINES = 10

# Short failure reasons; the report counts failures by these.
REASON_TIMEOUT = "timeout"
REASON_CONNECTION = "connection error"
REASON_TOO_LARGE = "too large"
REASON_EMPTY = "empty response"
REASON_NOT_IMAGE = "not an image"
REASON_CORRUPT = "corrupt image"
REASON_BAD_URL = "invalid URL"
REASON_REQUEST = "request error"


class UrlListError(ImgClassError):
    """The URL list file is missing, empty or has malformed lines."""


# --------------------------------------------------------------------------- demo
@dataclass
class InstallReport:
    """What :func:`install_demo_images` did."""

    target_dir: Path
    copied: int = 0
    already_present: int = 0
    classes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.copied + self.already_present

    def summary(self) -> str:
        """One line for the user, e.g. ``copied 179 of 179 demo images (6 classes) ...``."""
        return (f"copied {self.copied} of {self.total} demo images ({len(self.classes)} classes: "
                f"{', '.join(self.classes)}) into {self.target_dir}; "
                f"{self.already_present} already present")


def install_demo_images(source_dir: str | Path, target_dir: str | Path) -> InstallReport:
    """Copy the demo images' class folders into ``target_dir`` without touching what is there.

    Parameters
    ----------
    source_dir:
        Folder with one sub-folder per class (normally ``Parameters.demo_images_dir``, ``resources/demoImages/``).
        Files directly in it (such as its ``LICENSE.md``) are not copied: only
        images inside class folders are, so the target holds nothing but classes.
    target_dir:
        ``images/<dataset>/``. Created if needed.

    Returns
    -------
    InstallReport
        How many images were copied and how many were already present.

    Notes
    -----
    A target file with the same relative path is never overwritten, even if its
    content differs: the user may have replaced or edited it on purpose, and
    re-running step 0 must be harmless. Each copy is atomic.
    """
    source_dir, target_dir = Path(source_dir), Path(target_dir)
    if not source_dir.is_dir():
        raise DatasetError(f"the bundled demo images are missing: {source_dir} is not a folder "
                           "(restore it from the repository, e.g. `git checkout resources/demoImages`)")
    images, _ = list_image_files(source_dir)
    images = [path for path in images if path.parent != source_dir]
    if not images:
        raise DatasetError(f"no demo images found in the class folders of {source_dir}")
    report = InstallReport(target_dir=target_dir)
    report.classes = sorted({path.relative_to(source_dir).parts[0] for path in images})
    for source in images:
        target = target_dir / source.relative_to(source_dir)
        if target.exists():
            report.already_present += 1
            continue
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        report.copied += 1
    return report


# --------------------------------------------------------------------------- URL list
def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a class folder name, or None if it can.

    Labels become folder names under ``images/<dataset>/``, so they must not
    escape that folder (``..``, slashes), be hidden (a leading dot: hidden
    folders are ignored when images are listed) or be invalid on Windows.
    """
    if not label:
        return "the label is empty"
    if label in (".", "..") or label.startswith("."):
        return f"label {label!r} starts with a dot (hidden or parent folder)"
    bad = sorted({c for c in label if c in _UNSAFE_LABEL_CHARS or unicodedata.category(c) == "Cc"})
    if bad:
        return f"label {label!r} contains characters not allowed in a folder name: {' '.join(map(repr, bad))}"
    if label.endswith((" ", ".")):
        return f"label {label!r} ends with a space or a dot (not a valid folder name on Windows)"
    if len(label) > _MAX_LABEL_LENGTH:
        return f"label is longer than {_MAX_LABEL_LENGTH} characters"
    return None


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a downloadable http(s) URL, or None if it is."""
    if not url:
        return "the URL is empty"
    if any(c.isspace() for c in url):
        return f"URL {url!r} contains white space"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        return f"URL {url!r} cannot be parsed: {exc}"
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return f"URL {url!r} is not an http:// or https:// address"
    return None


def _parse_line(line: str) -> tuple[str, str] | str:
    """A ``(label, url)`` pair, or the problem with the line."""
    fields = [part.strip() for part in line.split("\t")]
    while len(fields) > 2 and not fields[-1]:
        fields.pop()  # tolerate trailing tabs left by spreadsheets
    if len(fields) == 1:
        hint = " (found spaces: use a TAB)" if " " in line.strip() else ""
        return f"expected 'label<TAB>url'{hint}"
    if len(fields) > 2:
        return f"expected 2 TAB-separated fields 'label<TAB>url', found {len(fields)}"
    label, url = fields
    return label_problem(label) or url_problem(url) or (label, url)


def read_url_list(tsv_path: str | Path) -> list[tuple[str, str]]:
    """Read a TSV file of ``label<TAB>url`` lines into ``(label, url)`` pairs, in file order.

    Blank lines and lines starting with ``#`` are skipped; white space around
    each field is ignored; a UTF-8 byte-order mark (Excel) is accepted. An
    exact duplicate of an earlier line is dropped.

    Raises
    ------
    UrlListError
        If the file is missing or holds no URL, if any line is malformed (no
        TAB, empty or unsafe label, not an http(s) URL) or if one URL is given
        two different labels. All bad lines are listed by number at once.

    Notes
    -----
    Malformed lines are an error, not skipped with a warning: a typo in a
    label would otherwise quietly create a wrong class, or lose a class's
    images, and the mistake would only show up as a worse classifier. Nothing
    is downloaded until the list is clean.
    """
    tsv_path = Path(tsv_path)
    try:
        text = tsv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UrlListError(f"URL list not found: {tsv_path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UrlListError(f"cannot read URL list {tsv_path}: {exc}") from exc
    entries: list[tuple[str, str]] = []
    first_line_of: dict[str, tuple[int, str]] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parsed = _parse_line(line)
        if isinstance(parsed, str):
            problems.append(f"line {number}: {parsed}")
            continue
        label, url = parsed
        if url in first_line_of:
            earlier_number, earlier_label = first_line_of[url]
            if earlier_label != label:
                problems.append(f"line {number}: URL {url!r} is labelled {label!r} here but "
                                f"{earlier_label!r} on line {earlier_number}")
            continue
        first_line_of[url] = (number, label)
        entries.append((label, url))
    if problems:
        shown = problems[:_MAX_REPORTED_LINES]
        more = len(problems) - len(shown)
        raise UrlListError(f"{tsv_path} has {len(problems)} malformed line(s); fix them and re-run:\n  "
                           + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""))
    if not entries:
        raise UrlListError(f"{tsv_path} holds no 'label<TAB>url' lines")
    return entries


def resolve_urls_file(name: str, parameters_file: str = "") -> Path:
    """The URL list a user named: as given (relative to the current folder) or next to the parameters file.

    ``rootDir`` is relative to the parameters file's folder; accepting that
    folder here too means ``download_urlsFile = "resources/x.tsv"`` in
    ``PARAMETERS.py`` works whatever folder the script is started from.
    """
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists() or not parameters_file:
        return path
    beside = Path(parameters_file).parent / path
    return beside if beside.exists() else path


# --------------------------------------------------------------------------- download
def file_name_for_url(url: str) -> str:
    """A stable, readable, collision-free ``.jpg`` file name for ``url``.

    The readable part is the last path segment without its extension,
    reduced to ``[A-Za-z0-9_-]``; a hash of the whole URL (query included)
    follows it, so two URLs never map to the same file and a re-run finds the
    file again.
    """
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    stem = path.rstrip("/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")[:_MAX_STEM_LENGTH].rstrip("_-") or "image"
    digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:_HASH_LENGTH]
    return f"{stem}_{digest}.jpg"


@dataclass
class DownloadReport:
    """What :func:`download_images` did; ``failed`` lists ``(url, reason)``."""

    total: int = 0
    downloaded: int = 0
    already_present: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def failures_by_reason(self) -> dict[str, int]:
        """Failure counts per reason, most frequent first."""
        return dict(collections.Counter(reason for _, reason in self.failed).most_common())

    def summary(self) -> str:
        """Per-reason failure counts, then ``downloaded N of M (...)``."""
        lines = [f"  {count:5d} x {reason}" for reason, count in self.failures_by_reason().items()]
        if lines:
            lines.insert(0, f"{len(self.failed)} download(s) failed:")
        lines.append(f"downloaded {self.downloaded} of {self.total} "
                     f"({self.already_present} already present, {len(self.failed)} failed)")
        return "\n".join(lines)


class _DownloadFailed(Exception):
    """Internal: one URL could not be turned into an image; ``args[0]`` is the reason."""


def _fetch(session: requests.Session, url: str, timeout: float, max_bytes: int) -> bytes:
    """GET ``url`` and return its body, or raise :class:`_DownloadFailed` with a short reason."""
    try:
        with session.get(url, timeout=timeout, stream=True) as response:
            if response.status_code >= 400:
                raise _DownloadFailed(f"HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _DownloadFailed(REASON_TOO_LARGE)
            body = bytearray()
            for chunk in response.iter_content(_CHUNK_BYTES):
                body += chunk
                if len(body) > max_bytes:
                    raise _DownloadFailed(REASON_TOO_LARGE)
            return bytes(body)
    except requests.exceptions.Timeout:
        raise _DownloadFailed(REASON_TIMEOUT) from None
    except requests.exceptions.ConnectionError as exc:
        # requests reports a read timeout in the middle of the body as a ConnectionError.
        timed_out = "timed out" in str(exc).lower()
        raise _DownloadFailed(REASON_TIMEOUT if timed_out else REASON_CONNECTION) from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema):
        raise _DownloadFailed(REASON_BAD_URL) from None
    except requests.exceptions.RequestException:
        raise _DownloadFailed(REASON_REQUEST) from None


def _decode(data: bytes, url: str, max_side: int) -> Image.Image:
    """Decode downloaded bytes (EXIF orientation applied) and shrink to ``max_side``."""
    if not data:
        raise _DownloadFailed(REASON_EMPTY)
    try:
        image = decode_image_bytes(data, source=url, draft_size=(max_side, max_side))
    except UnreadableImageError as exc:
        unidentified = isinstance(exc.__cause__, UnidentifiedImageError)
        raise _DownloadFailed(REASON_NOT_IMAGE if unidentified else REASON_CORRUPT) from None
    return shrink_to_max_side(image, max_side)


def download_images(entries: Sequence[tuple[str, str]], target_dir: str | Path, timeout: float,
                    max_side: int, session: requests.Session | None = None, progress: bool = True,
                    max_bytes: int = MAX_DOWNLOAD_BYTES) -> DownloadReport:
    """Download ``(label, url)`` entries into ``target_dir/<label>/<name>.jpg``.

    Parameters
    ----------
    entries:
        ``(label, url)`` pairs, e.g. from :func:`read_url_list`.
    target_dir:
        ``images/<dataset>/``; class folders are created as needed.
    timeout:
        Seconds to wait for the connection and for each read (requests'
        semantics: a slow but steady download is not cut off).
    max_side:
        The longer side of each saved image is at most this many pixels:
        training never needs more, and the folder stays small.
    session:
        A ``requests.Session`` to use (connection reuse, custom headers,
        tests); default a new one with a User-Agent.
    progress:
        Show a tqdm progress bar on stderr.
    max_bytes:
        Larger responses are abandoned as ``"too large"``.

    Returns
    -------
    DownloadReport
        Counts of downloaded, already present and failed (with reasons).

    Notes
    -----
    A file that already exists is skipped without any network access, so a
    re-run only fetches what is missing. Every image is decoded before it is
    kept (then re-encoded as JPEG, with EXIF orientation applied), so HTML
    error pages, truncated files and other non-images never reach the
    dataset; one bad URL is counted and skipped, never fatal.
    """
    target_dir = Path(target_dir)
    for label, _ in entries:
        problem = label_problem(label)
        if problem:
            raise UrlListError(problem)
    own_session = session is None
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
    report = DownloadReport(total=len(entries))
    try:
        for label, url in tqdm(entries, desc="downloading", unit="image", disable=not progress):
            target = target_dir / label / file_name_for_url(url)
            if target.exists():
                report.already_present += 1
                continue
            try:
                image = _decode(_fetch(session, url, timeout, max_bytes), url, max_side)
            except _DownloadFailed as failure:
                report.failed.append((url, str(failure)))
                continue
            save_jpeg(image, target)
            report.downloaded += 1
    finally:
        if own_session:
            session.close()
    return report


def count_images(folder: str | Path) -> int:
    """Number of image files under ``folder`` (0 if it does not exist), for summaries."""
    folder = Path(folder)
    return len(list_image_files(folder)[0]) if folder.is_dir() else 0

