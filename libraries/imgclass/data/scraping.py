"""Build a dataset from an image search: query Bing Image Search v7 and download the results.

The original tutorial built its texture dataset by searching Bing for every
combination of an item and an attribute ("shirt striped", "dress dotted", ...)
and keeping the top results; the attribute is the class label. This module
does the same, for any endpoint that speaks the Bing Image Search v7 protocol
(the Bing service itself was retired in August 2025):

- :class:`BingImageSearch` pages through ``GET <endpoint>?q=&count=&offset=``
  by ``nextOffset``, with the key in the ``Ocp-Apim-Subscription-Key`` header.
- :class:`HttpClient` is the only place that talks to the network: only
  http/https, hosts that resolve to private, loopback or link-local addresses
  refused (unless allowed), redirects followed hop by hop under the same rule,
  retries with backoff on 429 and 5xx honouring ``Retry-After``, a minimum
  interval between two requests to the same host, a size cap and timeouts.
- :func:`scrape` downloads each result's ``contentUrl`` (or, if asked, its
  ``thumbnailUrl`` when that fails), checks it is an image, applies the EXIF
  orientation, shrinks it to ``download_maxImageSide`` and saves a JPEG named
  after a hash of the URL in ``images/<dataset>/<label>/``. Every outcome is
  appended to a manifest TSV as it happens, so a re-run resumes: URLs already
  downloaded, or known to be bad, are not fetched again.

The subscription key is read from the environment variable
``BING_SEARCH_V7_SUBSCRIPTION_KEY``, is sent only to the search endpoint (never
to image hosts), and is removed from every message this module produces.
"""

from __future__ import annotations

import csv
import email.utils
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import requests

from imgclass.io.atomic import atomic_path
from imgclass.data.download import USER_AGENT, file_name_for_url, label_problem, resolve_urls_file
from imgclass.errors import ImgClassError
from imgclass.io.images import UnreadableImageError, decode_image_bytes, save_jpeg, shrink_to_max_side
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters

log = logging.getLogger(__name__)

#: The environment variable holding the search API key.
KEY_ENVIRONMENT_VARIABLE = "BING_SEARCH_V7_SUBSCRIPTION_KEY"
#: Columns of the manifest, ``images/<dataset>/scrapeManifest.tsv``.
MANIFEST_COLUMNS = ("label", "query", "url", "file", "sha256", "status")
MANIFEST_NAME = "scrapeManifest.tsv"

STATUS_OK = "ok"                      # contentUrl downloaded
STATUS_OK_THUMBNAIL = "ok_thumbnail"  # contentUrl failed, Bing's thumbnail saved instead
#: Failures that a re-run would meet again: the URL is "known bad" and skipped.
#: Others (timeout, connection_error, http_429, http_5xx, ...) are retried by a re-run.
PERMANENT_FAILURES = frozenset({"bad_url", "private_host", "not_image", "undecodable", "too_large",
                                "empty", "too_many_redirects"})

#: A ``Retry-After`` longer than this is cut to it.
MAX_RETRY_AFTER_SECONDS = 120.0
#: Backoff without ``Retry-After``: 1, 2, 4, ... seconds, at most this.
MAX_BACKOFF_SECONDS = 60.0
MAX_REDIRECTS = 5
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CHUNK_BYTES = 64 * 1024
_GENERIC_CONTENT_TYPES = ("", "application/octet-stream", "binary/octet-stream")


class ScrapeError(ImgClassError):
    """The search cannot run: no key, key rejected, bad queries, endpoint not answering the protocol."""


class _Failed(Exception):
    """Internal: one request or download failed; ``reason`` is a short code, ``detail`` for the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, "***") if secret else text


def subscription_key(environ: Mapping[str, str] | None = None) -> str:
    """The search API key from ``$BING_SEARCH_V7_SUBSCRIPTION_KEY``; :class:`ScrapeError` if unset."""
    key = (os.environ if environ is None else environ).get(KEY_ENVIRONMENT_VARIABLE, "").strip()
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


# --------------------------------------------------------------------------- HTTP
def host_problem(url: str, allow_private_hosts: bool = False) -> str | None:
    """Why ``url`` must not be fetched (``'bad_url'``, ``'private_host'``, ``'dns_error'``), or None.

    Every address the host resolves to must be a public (global) one unless
    ``allow_private_hosts``: a search result must not make us fetch from the
    user's own network (router pages, cloud metadata at 169.254.169.254, ...).
    The check runs before each hop; a host that changes its DNS answer between
    the check and the connection (DNS rebinding) is not covered.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return "bad_url"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "bad_url"
    if allow_private_hosts:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        return "dns_error"
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            return "private_host"
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


class RateLimiter:
    """At least ``min_interval`` seconds between two calls of :meth:`wait` for the same host."""

    def __init__(self, min_interval: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.min_interval = min_interval
        self.clock = clock
        self.sleep = sleep
        self._last: dict[str, float] = {}

    def wait(self, host: str) -> None:
        last = self._last.get(host)
        if last is not None:
            remaining = self.min_interval - (self.clock() - last)
            if remaining > 0:
                self.sleep(remaining)
        self._last[host] = self.clock()


@dataclass(frozen=True)
class HttpPolicy:
    """How :class:`HttpClient` behaves; see the ``scrape_*`` parameters."""

    timeout: float = 20.0
    max_retries: int = 4
    min_seconds_between_calls: float = 0.5
    allow_private_hosts: bool = False
    max_bytes: int = 20_000_000

    @classmethod
    def from_parameters(cls, params: Parameters) -> "HttpPolicy":
        return cls(timeout=params.scrape_timeoutSeconds, max_retries=params.scrape_maxRetries,
                   min_seconds_between_calls=params.scrape_minSecondsBetweenCalls,
                   allow_private_hosts=params.scrape_allowPrivateHosts, max_bytes=params.scrape_maxBytes)


@dataclass
class Body:
    """A response read in full: status, headers and content (at most ``max_bytes``)."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    url: str


class HttpClient:
    """GET requests with the guard, the rate limit, retries, redirects and the size cap.

    ``sleep`` and ``clock`` are injectable so tests need not wait.
    """

    def __init__(self, policy: HttpPolicy, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 secret: str | None = None) -> None:
        self.policy = policy
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", USER_AGENT)
        self.sleep = sleep
        self.clock = clock
        self.secret = secret
        self.limiter = RateLimiter(policy.min_seconds_between_calls, clock, sleep)

    def get(self, url: str, params: Mapping[str, object] | None = None,
            headers: Mapping[str, str] | None = None, guard: bool = True,
            follow_redirects: bool = True, retry_network_errors: bool = False) -> Body:
        """GET ``url`` and read the body; raise :class:`_Failed` with a reason code.

        Parameters
        ----------
        guard:
            Refuse private, loopback and link-local hosts (unless the policy
            allows them) at every hop. Off only for the user's own endpoint.
        follow_redirects:
            Follow up to :data:`MAX_REDIRECTS` redirects, each checked like the
            first URL. Off for the search API, whose key must not travel on.
        retry_network_errors:
            Also retry timeouts and connection errors (for the search API; an
            image host that does not answer is not worth minutes of retries).
        """
        for _ in range(MAX_REDIRECTS + 1):
            body = self._get_one(url, params, headers, guard, retry_network_errors)
            location = body.headers.get("Location")
            if not (300 <= body.status < 400 and location and follow_redirects):
                return body
            url, params = urllib.parse.urljoin(url, location), None
        raise _Failed("too_many_redirects", f"more than {MAX_REDIRECTS} redirects")

    def _get_one(self, url: str, params: Mapping[str, object] | None,
                 headers: Mapping[str, str] | None, guard: bool, retry_network_errors: bool) -> Body:
        problem = host_problem(url, self.policy.allow_private_hosts or not guard)
        if problem:
            raise _Failed(problem, url)
        host = urllib.parse.urlsplit(url).netloc.lower()
        for attempt in range(self.policy.max_retries + 1):
            self.limiter.wait(host)
            try:
                body = self._read(url, params, headers)
            except _Failed as failure:
                transient = failure.reason in ("timeout", "connection_error")
                if not (transient and retry_network_errors) or attempt == self.policy.max_retries:
                    raise
                delay = min(MAX_BACKOFF_SECONDS, 2.0 ** attempt)
                log.debug("%s: %s, retrying in %.0f s", redact(url, self.secret), failure.reason, delay)
                self.sleep(delay)
                continue
            if body.status not in _RETRY_STATUSES or attempt == self.policy.max_retries:
                return body
            retry_after = parse_retry_after(body.headers.get("Retry-After"))
            delay = min(MAX_RETRY_AFTER_SECONDS, retry_after) if retry_after is not None \
                else min(MAX_BACKOFF_SECONDS, 2.0 ** attempt)
            log.info("%s answered HTTP %d; retrying in %.1f s", host, body.status, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")

    def _read(self, url: str, params: Mapping[str, object] | None, headers: Mapping[str, str] | None) -> Body:
        timeout = self.policy.timeout
        started = self.clock()
        try:
            with self.session.get(url, params=params, headers=headers, timeout=timeout, stream=True,
                                  allow_redirects=False) as response:
                declared = response.headers.get("Content-Length", "")
                limit = self.policy.max_bytes
                if response.status_code < 300 and declared.isdigit() and int(declared) > limit:
                    raise _Failed("too_large", f"{declared} bytes")
                content = bytearray()
                if response.status_code < 300 or response.status_code >= 400:
                    for chunk in response.iter_content(_CHUNK_BYTES):
                        content += chunk
                        if len(content) > limit:
                            raise _Failed("too_large", f"more than {limit} bytes")
                        if self.clock() - started > timeout:
                            raise _Failed("timeout", f"not complete after {timeout:g} s")
                return Body(response.status_code, response.headers, bytes(content), url)
        except requests.exceptions.Timeout as exc:
            raise _Failed("timeout", redact(str(exc), self.secret)) from None
        except requests.exceptions.ConnectionError as exc:
            timed_out = "timed out" in str(exc).lower()
            reason = "timeout" if timed_out else "connection_error"
            raise _Failed(reason, redact(str(exc), self.secret)) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            raise _Failed("bad_url", redact(str(exc), self.secret)) from None
        except requests.exceptions.RequestException as exc:
            raise _Failed("connection_error", redact(str(exc), self.secret)) from None


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
        if body.status in _RETRY_STATUSES:
            raise _Failed(f"http_{body.status}", text)
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
def manifest_path(layout: DatasetLayout) -> Path:
    """``images/<dataset>/scrapeManifest.tsv``: one line per URL tried (:data:`MANIFEST_COLUMNS`)."""
    return layout.images_dir / MANIFEST_NAME


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
    """Downloads search results into ``images_dir/<label>/`` and keeps the manifest."""

    def __init__(self, images_dir: Path, client: HttpClient, max_side: int = 1000,
                 use_thumbnails: bool = False) -> None:
        self.images_dir = images_dir
        self.client = client
        self.max_side = max_side
        self.use_thumbnails = use_thumbnails
        self.manifest = images_dir / MANIFEST_NAME
        self._good: dict[tuple[str, str], str] = {}  # (label, url) -> file
        self._good_by_url: dict[str, str] = {}
        self._bad: dict[str, str] = {}  # url -> status
        for row in read_manifest(self.manifest):
            if row["status"] in (STATUS_OK, STATUS_OK_THUMBNAIL):
                self._good[row["label"], row["url"]] = row["file"]
                self._good_by_url[row["url"]] = row["file"]
                self._bad.pop(row["url"], None)
            elif is_known_bad(row["status"]):
                self._bad[row["url"]] = row["status"]

    def fetch_image(self, url: str) -> bytes:
        """Download ``url`` and return the body of an image response; :class:`_Failed` otherwise."""
        body = self.client.get(url)
        if body.status >= 300:
            raise _Failed(f"http_{body.status}")
        content_type = body.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if not content_type.startswith("image/") and content_type not in _GENERIC_CONTENT_TYPES:
            raise _Failed("not_image", content_type)
        if not body.content:
            raise _Failed("empty")
        return body.content

    def _save(self, data: bytes, url: str, target: Path) -> None:
        try:
            image = decode_image_bytes(data, source=url, draft_size=(self.max_side, self.max_side))
        except UnreadableImageError as exc:
            raise _Failed("undecodable", str(exc)) from None
        save_jpeg(shrink_to_max_side(image, self.max_side), target)

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
            self._save(self.fetch_image(url), url, target)
            status = STATUS_OK
        except _Failed as failure:
            log.debug("%s: %s %s", url, failure.reason, failure.detail)
            if not (self.use_thumbnails and result.thumbnail_url):
                self._record_failure(writer, query, url, failure.reason, summary)
                return
            try:
                self._save(self.fetch_image(result.thumbnail_url), result.thumbnail_url, target)
                status = STATUS_OK_THUMBNAIL
            except _Failed as thumbnail_failure:
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
           session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> ScrapeReport:
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
    session, sleep, clock:
        Injectable for tests (a ``requests.Session``, ``time.sleep``, ``time.monotonic``).

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
    client = HttpClient(HttpPolicy.from_parameters(params), session=session, sleep=sleep, clock=clock,
                        secret=key)
    search = BingImageSearch.from_parameters(params, key, client)
    scraper = Scraper(layout.images_dir, client, params.download_maxImageSide, params.scrape_useThumbnails)
    report = ScrapeReport(layout.images_dir, scraper.manifest)
    writer = ManifestWriter(scraper.manifest)
    try:
        for number, query in enumerate(queries, start=1):
            summary = QuerySummary(query)
            report.queries.append(summary)
            log.info("[%d/%d] searching %r", number, len(queries), query.query)
            try:
                results = search.search(query.query, params.scrape_imagesPerQuery)
            except _Failed as failure:
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
