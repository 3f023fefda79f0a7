"""Build a dataset from an image search: query Bing Image Search v7 and download the results.

The original tutorial built its texture dataset by searching Bing for every
combination of an item and an attribute ("shirt striped", "dress dotted", ...)
and keeping the top results; the attribute is the class label. This module
does the same, for any endpoint that speaks the Bing Image Search v7 protocol
(the Bing service itself was retired in August 2025):

- :class:`BingImageSearch` pages through ``GET <endpoint>?q=&count=&offset=``
  by ``nextOffset``, with the key in the ``Ocp-Apim-Subscription-Key`` header.
- Every request goes through the guarded client of :mod:`imgclass.io.http`
  (the one step 0 uses too): no private, loopback or link-local address at
  any redirect hop, the connection pinned to the address checked, retries on
  429 and 5xx honouring ``Retry-After``, a minimum interval between two
  requests to the same host, a size cap and a deadline per download.
- :func:`scrape` downloads each result's ``contentUrl`` (or, if asked, its
  ``thumbnailUrl`` when that fails) with :func:`imgclass.data.download.fetch_image`
  (an image, EXIF orientation applied, shrunk to ``download_maxImageSide``) and
  saves a JPEG named after a hash of the URL in ``images/<dataset>/<label>/``.
  Every outcome is appended to the manifest (``DatasetLayout.scrape_manifest_tsv``)
  as it happens, so a re-run resumes: URLs already downloaded, or known to be
  bad, are not fetched again. The manifest travels with the images, so the
  files it names are trusted only inside the dataset folder.

The subscription key is read from the environment variable
``BING_SEARCH_V7_SUBSCRIPTION_KEY``, is sent only to the search endpoint (never
to image hosts), and is removed from every message this module produces.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from imgclass.data.download import fetch_image, file_name_for_url, resolve_urls_file
from imgclass.errors import ImgClassError
from imgclass.io import http
from imgclass.io.atomic import atomic_path
from imgclass.io.http import FetchFailed, HttpClient, HttpPolicy, redact
from imgclass.io.images import is_image_file, save_jpeg
from imgclass.io.moves import UnsafePathError, confined
from imgclass.io.names import label_problem
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec

log = logging.getLogger(__name__)

STEP = StepSpec("scrape", "scripts/scrapeImages.py",
                "search images for every query and download the top results into images/<datasetName>/<label>/",
                ("datasetName", "rootDir", "bing_endpoint", "scrape_items", "scrape_attributes", "scrape_queriesFile",
                 "scrape_imagesPerQuery", "scrape_countPerPage", "scrape_safeSearch", "scrape_mkt",
                 "scrape_imageType", "scrape_license", "scrape_useThumbnails", "scrape_allowPrivateHosts",
                 "scrape_timeoutSeconds", "scrape_maxBytes", "scrape_minSecondsBetweenCalls", "scrape_maxRetries",
                 "download_maxImageSide"))

#: The environment variable holding the search API key.
KEY_ENVIRONMENT_VARIABLE = "BING_SEARCH_V7_SUBSCRIPTION_KEY"
#: Columns of the manifest, ``images/<dataset>/scrapeManifest.tsv``.
MANIFEST_COLUMNS = ("label", "query", "url", "file", "sha256", "status")

STATUS_OK = "ok"                      # contentUrl downloaded
STATUS_OK_THUMBNAIL = "ok_thumbnail"  # contentUrl failed, Bing's thumbnail saved instead
#: Failures that a re-run would meet again: the URL is "known bad" and skipped.
#: Others (timeout, connection_error, dns_error, http_429, http_5xx, ...) are retried by a re-run.
PERMANENT_FAILURES = frozenset({http.BAD_URL, http.PRIVATE_HOST, http.TOO_LARGE, http.TOO_MANY_REDIRECTS,
                                "not_image", "undecodable", "empty"})


class ScrapeError(ImgClassError):
    """The search cannot run: no key, key rejected, bad queries, endpoint not answering the protocol."""


def subscription_key() -> str:
    """The search API key from ``$BING_SEARCH_V7_SUBSCRIPTION_KEY``; :class:`ScrapeError` if unset."""
    key = os.environ.get(KEY_ENVIRONMENT_VARIABLE, "").strip()
    if not key:
        raise ScrapeError(f"set the environment variable {KEY_ENVIRONMENT_VARIABLE} to your search API key "
                          f"(e.g. `export {KEY_ENVIRONMENT_VARIABLE}=...`); it is never read from a file")
    return key


# --------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Query:
    """One search: its text, and the class label its images are saved under."""

    label: str
    query: str


def build_queries(items: Sequence[str], attributes: Sequence[str]) -> list[Query]:
    """Every ``"<item> <attribute>"``, labelled by the attribute (items outer, attributes inner)."""
    return [Query(attribute, f"{item} {attribute}") for item in items for attribute in attributes]


def read_queries_file(path: str | os.PathLike[str]) -> list[Query]:
    """Read ``label<TAB>query`` lines (blank lines and ``#`` comments skipped) into queries.

    Raises :class:`ScrapeError` listing every malformed line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScrapeError(f"cannot read the queries file {path}: {exc}") from exc
    queries, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [part.strip() for part in line.split("\t")]
        if len(fields) != 2 or not fields[1]:
            problems.append(f"line {number}: expected 'label<TAB>query'")
            continue
        problem = label_problem(fields[0])
        if problem:
            problems.append(f"line {number}: {problem}")
            continue
        queries.append(Query(*fields))
    if problems:
        raise ScrapeError(f"{path} has malformed lines:\n  " + "\n  ".join(problems))
    return list(dict.fromkeys(queries))


def queries_from_parameters(params: Parameters) -> list[Query]:
    """The queries of ``scrape_queriesFile`` if set, else ``scrape_items`` x ``scrape_attributes``."""
    if params.scrape_queriesFile:
        queries = read_queries_file(resolve_urls_file(params.scrape_queriesFile, params.parametersFile))
    else:
        for attribute in params.scrape_attributes:
            problem = label_problem(attribute)
            if problem:
                raise ScrapeError(f"scrape_attributes: {problem} (attributes are class folder names)")
        queries = list(dict.fromkeys(build_queries(params.scrape_items, params.scrape_attributes)))
    if not queries:
        raise ScrapeError("no queries: set scrape_items and scrape_attributes, or scrape_queriesFile")
    return queries


def http_policy(params: Parameters) -> HttpPolicy:
    """The image search's HTTP rules, from the ``scrape_*`` parameters."""
    return HttpPolicy(timeout=params.scrape_timeoutSeconds, max_retries=params.scrape_maxRetries,
                      min_seconds_between_calls=params.scrape_minSecondsBetweenCalls,
                      allow_private_hosts=params.scrape_allowPrivateHosts, max_bytes=params.scrape_maxBytes)


# --------------------------------------------------------------------------- search
@dataclass(frozen=True)
class SearchResult:
    """One image of a search: the image's URL and Bing's thumbnail of it."""

    content_url: str
    thumbnail_url: str = ""


class BingImageSearch:
    """A client of the Bing Image Search v7 protocol (``value[]``, ``nextOffset``)."""

    def __init__(self, endpoint: str, key: str, client: HttpClient, count_per_page: int = 50,
                 safe_search: str = "Moderate", mkt: str = "en-US", image_type: str = "Photo",
                 license: str = "") -> None:
        self.endpoint = endpoint
        self._key = key
        self.client = client
        self.count_per_page = count_per_page
        self.options = {"safeSearch": safe_search, "mkt": mkt, "imageType": image_type, "license": license}

    @classmethod
    def from_parameters(cls, params: Parameters, key: str, client: HttpClient) -> "BingImageSearch":
        return cls(params.bing_endpoint, key, client, params.scrape_countPerPage, params.scrape_safeSearch,
                   params.scrape_mkt, params.scrape_imageType, params.scrape_license)

    def page(self, query: str, offset: int, count: int) -> dict:
        """One call: the decoded JSON answer for ``count`` results from ``offset``."""
        params = {"q": query, "count": count, "offset": offset,
                  **{name: value for name, value in self.options.items() if value}}
        body = self.client.get(self.endpoint, params=params, headers={"Ocp-Apim-Subscription-Key": self._key},
                               guard=False, follow_redirects=False, retry_network_errors=True)
        text = redact(body.content[:300].decode("utf-8", "replace"), self._key)
        if body.status in (401, 403):
            raise ScrapeError(f"the search endpoint {self.endpoint} refused the key (HTTP {body.status}): "
                              f"check {KEY_ENVIRONMENT_VARIABLE} and bing_endpoint. Answer: {text}")
        if 300 <= body.status < 400:
            raise ScrapeError(f"the search endpoint {self.endpoint} redirects (HTTP {body.status}) to "
                              f"{body.headers.get('Location')!r}: set bing_endpoint to the final address")
        if body.status in http.RETRY_STATUSES:
            raise FetchFailed(f"http_{body.status}", text)
        if body.status >= 400:
            raise ScrapeError(f"the search endpoint {self.endpoint} answered HTTP {body.status} to query "
                              f"{query!r}: {text}")
        try:
            answer = json.loads(body.content)
        except ValueError:
            raise ScrapeError(f"the search endpoint {self.endpoint} did not answer JSON (is bing_endpoint an "
                              f"Image Search v7 endpoint?): {text}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("value", []), list):
            raise ScrapeError(f"the search endpoint {self.endpoint} answered JSON without a 'value' list")
        return answer

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        """The first ``max_results`` distinct results of ``query``, paging by ``nextOffset``."""
        results: dict[str, SearchResult] = {}
        offset = 0
        while len(results) < max_results:
            answer = self.page(query, offset, min(self.count_per_page, 150))
            values = answer.get("value") or []
            for value in values:
                url = value.get("contentUrl") if isinstance(value, dict) else None
                if isinstance(url, str) and url and url not in results:
                    thumbnail = value.get("thumbnailUrl")
                    results[url] = SearchResult(url, thumbnail if isinstance(thumbnail, str) else "")
            next_offset = answer.get("nextOffset")
            if not values or not isinstance(next_offset, int) or next_offset <= offset:
                break
            offset = next_offset
        return list(results.values())[:max_results]


# --------------------------------------------------------------------------- manifest
def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The manifest's rows as dicts (no file = no rows; a line cut by a crash is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            return []
        if tuple(header) != MANIFEST_COLUMNS:
            raise ScrapeError(f"{path} is not a scrape manifest (its header is {header})")
        return [dict(zip(MANIFEST_COLUMNS, row)) for row in reader if len(row) == len(MANIFEST_COLUMNS)]


class ManifestWriter:
    """Appends rows to the manifest, one flushed line at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        if not new:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"  # the last line was cut by a crash: start a new one
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, delimiter="\t", lineterminator="\n")
        if new:
            self._writer.writerow(MANIFEST_COLUMNS)
        elif cut:
            self._file.write("\n")
        self._file.flush()

    def append(self, label: str, query: str, url: str, file: str = "", sha256: str = "",
               status: str = STATUS_OK) -> None:
        self._writer.writerow([label, query, url, file, sha256, status])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------- scraping
@dataclass
class QuerySummary:
    """What happened to one query's results."""

    query: Query
    found: int = 0
    downloaded: int = 0
    already_had: int = 0
    known_bad: int = 0
    failed: Counter = field(default_factory=Counter)
    search_error: str = ""

    def line(self) -> str:
        head = f"{self.query.query!r} -> {self.query.label}: "
        if self.search_error:
            return head + f"search failed ({self.search_error})"
        failures = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.failed.items()))
        return (head + f"found {self.found}, downloaded {self.downloaded}, already had {self.already_had}, "
                f"skipped {self.known_bad} known bad, failed {sum(self.failed.values())}"
                + (f" ({failures})" if failures else ""))


@dataclass
class ScrapeReport:
    """Per-query summaries and where the images and the manifest are."""

    images_dir: Path
    manifest: Path
    queries: list[QuerySummary] = field(default_factory=list)
    #: manifest lines ignored because their file lies outside the dataset folder (or is no image)
    untrusted_rows: int = 0

    @property
    def search_errors(self) -> int:
        return sum(1 for q in self.queries if q.search_error)

    def summary(self) -> str:
        total = Counter()
        for q in self.queries:
            total.update(q.failed)
        lines = [q.line() for q in self.queries]
        lines.append(f"total: {len(self.queries)} queries, found {sum(q.found for q in self.queries)}, "
                     f"downloaded {sum(q.downloaded for q in self.queries)}, "
                     f"already had {sum(q.already_had for q in self.queries)}, "
                     f"skipped {sum(q.known_bad for q in self.queries)} known bad, "
                     f"failed {sum(total.values())}"
                     + (f" ({', '.join(f'{r}: {n}' for r, n in sorted(total.items()))})" if total else "")
                     + (f"; {self.search_errors} searches failed (re-run to retry them)"
                        if self.search_errors else ""))
        if self.untrusted_rows:
            lines.append(f"ignored {self.untrusted_rows} line(s) of the manifest naming a file outside "
                         f"{self.images_dir} or no image")
        lines.append(f"images in {self.images_dir}; manifest {self.manifest}")
        return "\n".join(lines)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_known_bad(status: str) -> bool:
    """True for a manifest status that a re-run would meet again (see :data:`PERMANENT_FAILURES`)."""
    if status in PERMANENT_FAILURES:
        return True
    return status.startswith("http_4") and status not in ("http_408", "http_429")


class Scraper:
    """Downloads search results into ``images/<dataset>/<label>/`` and keeps the manifest.

    The manifest is read back to resume; a row whose ``file`` is not an image
    path inside the dataset folder (``../``, an absolute path, a symbolic link
    leading out: a manifest travels with the images and may have been edited)
    is ignored, counted in :attr:`untrusted_rows` and logged.
    """

    def __init__(self, layout: DatasetLayout, client: HttpClient, max_side: int = 1000,
                 use_thumbnails: bool = False) -> None:
        self.images_dir = layout.images_dir
        self.manifest = layout.scrape_manifest_tsv
        self.client = client
        self.max_side = max_side
        self.use_thumbnails = use_thumbnails
        self.untrusted_rows = 0
        self._good: dict[tuple[str, str], str] = {}  # (label, url) -> file
        self._good_by_url: dict[str, str] = {}
        self._bad: dict[str, str] = {}  # url -> status
        for row in read_manifest(self.manifest):
            if row["status"] in (STATUS_OK, STATUS_OK_THUMBNAIL):
                problem = self._file_problem(row["file"])
                if problem:
                    self.untrusted_rows += 1
                    log.warning("%s: ignoring the line of %s: %s", self.manifest, row["url"], problem)
                    continue
                self._good[row["label"], row["url"]] = row["file"]
                self._good_by_url[row["url"]] = row["file"]
                self._bad.pop(row["url"], None)
            elif is_known_bad(row["status"]):
                self._bad[row["url"]] = row["status"]

    def _file_problem(self, file: str) -> str | None:
        try:
            path = confined(self.images_dir, file)
        except UnsafePathError as exc:
            return str(exc)
        return None if is_image_file(path) else f"{file!r} is not an image file name"

    def _download(self, url: str, target: Path) -> None:
        """Fetch ``url`` as an image and save it as ``target`` (:class:`FetchFailed` if that fails)."""
        save_jpeg(fetch_image(self.client, url, self.max_side), target)

    def _record_ok(self, writer: ManifestWriter, query: Query, url: str, target: Path, status: str) -> None:
        rel = target.relative_to(self.images_dir).as_posix()
        writer.append(query.label, query.query, url, rel, _sha256_of(target), status)
        self._good[query.label, url] = rel
        self._good_by_url[url] = rel

    def handle(self, writer: ManifestWriter, query: Query, result: SearchResult,
               summary: QuerySummary) -> None:
        """Download one result (or skip it) and record the outcome in the manifest and ``summary``."""
        url = result.content_url
        target = self.images_dir / query.label / file_name_for_url(url)
        if (query.label, url) in self._good:  # even if the file was since moved (dedup) or deleted
            summary.already_had += 1
            return
        if url in self._bad:
            summary.known_bad += 1
            return
        if target.exists():  # saved by a run interrupted before its manifest line
            self._record_ok(writer, query, url, target, STATUS_OK)
            summary.already_had += 1
            return
        other = self._good_by_url.get(url)
        if other and (self.images_dir / other).is_file():  # same image found for another label
            with atomic_path(target) as tmp:
                shutil.copyfile(self.images_dir / other, tmp)
            self._record_ok(writer, query, url, target, STATUS_OK)
            summary.downloaded += 1
            return
        try:
            self._download(url, target)
            status = STATUS_OK
        except FetchFailed as failure:
            log.debug("%s: %s %s", url, failure.reason, failure.detail)
            if not (self.use_thumbnails and result.thumbnail_url):
                self._record_failure(writer, query, url, failure.reason, summary)
                return
            try:
                self._download(result.thumbnail_url, target)
                status = STATUS_OK_THUMBNAIL
            except FetchFailed as thumbnail_failure:
                log.debug("thumbnail %s: %s", result.thumbnail_url, thumbnail_failure.reason)
                self._record_failure(writer, query, url, failure.reason, summary)
                return
        self._record_ok(writer, query, url, target, status)
        summary.downloaded += 1

    def _record_failure(self, writer: ManifestWriter, query: Query, url: str, reason: str,
                        summary: QuerySummary) -> None:
        writer.append(query.label, query.query, url, "", "", reason)
        summary.failed[reason] += 1
        if is_known_bad(reason):
            self._bad[url] = reason


def scrape(params: Parameters, key: str | None = None, queries: Iterable[Query] | None = None,
           client: HttpClient | None = None) -> ScrapeReport:
    """Search every query and download its top ``scrape_imagesPerQuery`` results.

    Parameters
    ----------
    params:
        ``datasetName``/``rootDir`` (where), ``bing_endpoint``, the ``scrape_*``
        parameters and ``download_maxImageSide``.
    key:
        The API key; default ``$BING_SEARCH_V7_SUBSCRIPTION_KEY``.
    queries:
        Default :func:`queries_from_parameters`.
    client:
        Default a client with :func:`http_policy` that removes ``key`` from its
        messages (one of your own, e.g. with another ``sleep``, should too).

    Returns
    -------
    ScrapeReport
        Per query: results found, downloaded, already had, known bad skipped,
        failures by reason. A query whose search fails (HTTP 429/5xx after the
        retries, network down) is reported and the next query runs.

    Raises
    ------
    ScrapeError
        No key, the key is refused, or the endpoint does not speak the protocol.
    """
    key = key or subscription_key()
    queries = list(queries) if queries is not None else queries_from_parameters(params)
    layout = DatasetLayout.from_parameters(params)
    client = client or HttpClient(http_policy(params), secret=key)
    search = BingImageSearch.from_parameters(params, key, client)
    scraper = Scraper(layout, client, params.download_maxImageSide, params.scrape_useThumbnails)
    report = ScrapeReport(layout.images_dir, scraper.manifest, untrusted_rows=scraper.untrusted_rows)
    writer = ManifestWriter(scraper.manifest)
    try:
        for number, query in enumerate(queries, start=1):
            summary = QuerySummary(query)
            report.queries.append(summary)
            log.info("[%d/%d] searching %r", number, len(queries), query.query)
            try:
                results = search.search(query.query, params.scrape_imagesPerQuery)
            except FetchFailed as failure:
                summary.search_error = failure.reason
                log.info("  %s", summary.line())
                continue
            summary.found = len(results)
            for result in results:
                scraper.handle(writer, query, result, summary)
            log.info("  %s", summary.line())
    except ImgClassError as exc:  # make sure no message carries the key
        raise type(exc)(redact(str(exc), key)) from None
    finally:
        writer.close()
    return report
