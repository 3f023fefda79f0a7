"""Getting images onto disk: the bundled demo set, or a list of URLs to download.

Step 0 of the pipeline fills ``<root>/images/<dataset>/<class>/`` in one of two
ways:

- :func:`install_demo_images` copies the demo photographs that ship with the
  project (``resources/demoImages/<class>/*.jpg``), so the tutorial runs
  offline.
- :func:`read_url_list` + :func:`download_images` fetch the images of a TSV
  file of ``label<TAB>url`` lines (the format of the original tutorial's
  ``fashionTextureUrls.tsv``), through the guarded client of
  :mod:`imgclass.io.http` (the one the image search uses too): no private or
  loopback address, a size cap, a deadline per download.

Both are safe to re-run: a file that is already there is skipped, never
overwritten, and nothing is ever deleted, so a user's own images and edits in
the image folder survive. Every file is written atomically, so an interrupted
run leaves no half-written image that a later step would trip over. A
download that fails (HTTP error, timeout, not an image, ...) is counted by
reason and leaves no file: one dead link must not stop a list of thousands.

:func:`fetch_image` (download, check, decode, shrink) is shared with the
image search (:mod:`imgclass.data.scraping`), so both fail for the same
reasons with the same codes.
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

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from imgclass.errors import DatasetError, ImgClassError
from imgclass.io import http
from imgclass.io.atomic import atomic_path
from imgclass.io.http import FetchFailed, HttpClient, HttpPolicy
from imgclass.io.images import (
    UnreadableImageError,
    decode_image_bytes,
    list_image_files,
    save_jpeg,
    shrink_to_max_side,
)
from imgclass.io.names import label_problem
from imgclass.parameters import Parameters, StepSpec

STEP = StepSpec("download", "scripts/0_downloadData.py",
                "put images into images/<datasetName>/<class>/: the bundled demo set, or a list of URLs",
                ("datasetName", "rootDir", "download_urlsFile", "download_timeoutSeconds", "download_maxImageSide",
                 "scrape_allowPrivateHosts"))

#: Responses larger than this are abandoned: no photograph worth training on is
#: bigger, and it bounds the memory a hostile or mistaken URL can take.
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024

_MAX_STEM_LENGTH = 60
_HASH_LENGTH = 10
_MAX_REPORTED_LINES = 10

# Reasons an image download fails beyond those of the HTTP client (imgclass.io.http).
NOT_IMAGE = "not_image"      # the Content-Type is not an image, or the bytes are no image format
UNDECODABLE = "undecodable"  # an image format, but corrupt or truncated
EMPTY = "empty"              # the server answered nothing
_GENERIC_CONTENT_TYPES = ("", "application/octet-stream", "binary/octet-stream")

#: How step 0's report words each reason code.
REASON_TEXT = {
    http.TIMEOUT: "timeout", http.CONNECTION_ERROR: "connection error", http.DNS_ERROR: "host not found",
    http.TOO_LARGE: "too large", http.BAD_URL: "invalid URL", http.PRIVATE_HOST: "private address refused",
    http.TOO_MANY_REDIRECTS: "too many redirects", EMPTY: "empty response", NOT_IMAGE: "not an image",
    UNDECODABLE: "corrupt image",
}


def describe_reason(reason: str) -> str:
    """The words for a reason code: ``'http_404'`` -> ``'HTTP 404'``, ``'not_image'`` -> ``'not an image'``."""
    if reason.startswith("http_"):
        return f"HTTP {reason[5:]}"
    return REASON_TEXT.get(reason, reason)


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
def url_problem(url: str) -> str | None:
    """Why ``url`` is not a URL the guarded client accepts (:func:`imgclass.io.http.parse_target`), or None."""
    if not url:
        return "the URL is empty"
    try:
        http.parse_target(url)
    except FetchFailed as failure:
        return f"URL {url!r} is not accepted: {failure.detail}"
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


def fetch_image(client: HttpClient, url: str, max_side: int) -> Image.Image:
    """Download ``url``, check it is an image, decode it (EXIF orientation applied) and shrink it to ``max_side``.

    Raises :class:`~imgclass.io.http.FetchFailed` with the client's reason codes,
    ``http_<status>`` for an HTTP error, :data:`NOT_IMAGE` (the ``Content-Type``
    is not an image, or the bytes are no image format), :data:`EMPTY` or
    :data:`UNDECODABLE` (corrupt or truncated).
    """
    body = client.get(url)
    if body.status >= 300:
        raise FetchFailed(f"http_{body.status}")
    content_type = body.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if not content_type.startswith("image/") and content_type not in _GENERIC_CONTENT_TYPES:
        raise FetchFailed(NOT_IMAGE, content_type)
    if not body.content:
        raise FetchFailed(EMPTY)
    try:
        image = decode_image_bytes(body.content, source=url, draft_size=(max_side, max_side))
    except UnreadableImageError as exc:
        unidentified = isinstance(exc.__cause__, UnidentifiedImageError)
        raise FetchFailed(NOT_IMAGE if unidentified else UNDECODABLE, str(exc)) from None
    return shrink_to_max_side(image, max_side)


def http_policy(params: Parameters) -> HttpPolicy:
    """Step 0's download rules: ``download_timeoutSeconds`` (also the deadline of each download), no retries,
    the private-address guard of the image search (``scrape_allowPrivateHosts``), :data:`MAX_DOWNLOAD_BYTES`."""
    return HttpPolicy(timeout=params.download_timeoutSeconds, max_retries=0, min_seconds_between_calls=0.0,
                      allow_private_hosts=params.scrape_allowPrivateHosts, max_bytes=MAX_DOWNLOAD_BYTES)


def download_images(entries: Sequence[tuple[str, str]], target_dir: str | Path, client: HttpClient,
                    max_side: int, progress: bool = True) -> DownloadReport:
    """Download ``(label, url)`` entries into ``target_dir/<label>/<name>.jpg``.

    Parameters
    ----------
    entries:
        ``(label, url)`` pairs, e.g. from :func:`read_url_list`.
    target_dir:
        ``images/<dataset>/``; class folders are created as needed.
    client:
        The guarded HTTP client (see :func:`http_policy` for step 0's rules).
    max_side:
        The longer side of each saved image is at most this many pixels:
        training never needs more, and the folder stays small.
    progress:
        Show a tqdm progress bar on stderr.

    Returns
    -------
    DownloadReport
        Counts of downloaded, already present and failed (with reasons in words).

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
    report = DownloadReport(total=len(entries))
    for label, url in tqdm(entries, desc="downloading", unit="image", disable=not progress):
        target = target_dir / label / file_name_for_url(url)
        if target.exists():
            report.already_present += 1
            continue
        try:
            image = fetch_image(client, url, max_side)
        except FetchFailed as failure:
            report.failed.append((url, describe_reason(failure.reason)))
            continue
        save_jpeg(image, target)
        report.downloaded += 1
    return report


def count_images(folder: str | Path) -> int:
    """Number of image files under ``folder`` (0 if it does not exist), for summaries."""
    folder = Path(folder)
    return len(list_image_files(folder)[0]) if folder.is_dir() else 0

