"""The one HTTP client for URLs that come from outside: URL lists (step 0) and image search results.

A URL in a list someone sent you, or in a search result, decides where this
machine connects. :class:`HttpClient` makes sure it can only fetch a public
web resource, and only within bounds:

- **The URL** (:func:`parse_target`): only ``http``/``https``; no white space,
  control characters, backslashes or ``user@`` part, so no parser can read a
  different host into it (``http://127.0.0.1:80\\@8.8.8.8/`` is refused, not
  argued about); two parsers must agree on the host.
- **The address** (:func:`address_problem`): the host is resolved once
  (:func:`resolve`), and every address it resolves to must be public; an IPv6
  address that embeds an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``,
  IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``)
  is judged by the IPv4 address inside it.
- **The connection** goes to exactly the address that was checked (no second
  DNS lookup between check and connect, so DNS rebinding cannot switch it);
  the ``Host`` header and, for HTTPS, the certificate check and SNI use the
  name from the URL. Proxies from the environment are not used: the guard
  must see the address it connects to.
- **Redirects** are followed by hand, at most :data:`MAX_REDIRECTS`, each hop
  checked like the first URL.
- **Bounds**: a size cap (stops reading as soon as it is passed), a timeout
  for connecting and for each read, and a wall-clock deadline for the whole
  download: a server that sends one byte a second is cut off when the
  deadline passes instead of holding the download forever.
- **Politeness**: at least ``min_seconds_between_calls`` between two requests
  to the same host; HTTP 429 and 5xx retried with backoff, honouring
  ``Retry-After``.

Failures raise :class:`FetchFailed` with a short reason code (the constants
below, or ``http_<status>`` made by callers); callers count and report them.

Why not a library: ``advocate`` (for requests) has had no release since 2020;
``safehttpx`` asks Google's public DNS over HTTPS when a name does not resolve
to a public address locally; ``drawbridge`` (alpha) and ``requests-hardened``
let IPv4-compatible ``::a.b.c.d`` addresses through, and none of them bounds
the total time of a download. urllib3, which requests is built on, does the
HTTP here.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import logging
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Mapping

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

log = logging.getLogger(__name__)

#: Some image hosts refuse requests without a User-Agent.
USER_AGENT = "imgclass/0.1 (image classification tutorial)"

# Reason codes of a failed request (a download's report turns them into words).
BAD_URL = "bad_url"                        # not an http(s) URL we accept
PRIVATE_HOST = "private_host"              # the host is (or resolves to) a non-public address
DNS_ERROR = "dns_error"                    # the host name does not resolve
TIMEOUT = "timeout"                        # no answer in time, or the deadline passed
CONNECTION_ERROR = "connection_error"      # refused, reset, TLS failure, not HTTP
TOO_LARGE = "too_large"                    # more than max_bytes
TOO_MANY_REDIRECTS = "too_many_redirects"  # more than MAX_REDIRECTS hops

#: Redirects followed (each hop checked like the first URL).
MAX_REDIRECTS = 5
#: A ``Retry-After`` longer than this is cut to it.
MAX_RETRY_AFTER_SECONDS = 120.0
#: Backoff without ``Retry-After``: 1, 2, 4, ... seconds, at most this.
MAX_BACKOFF_SECONDS = 60.0
#: Statuses worth asking again after a wait.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CHUNK_BYTES = 64 * 1024

#: Not public although Python's ``is_global`` may say so (it differs between versions).
_BLOCKED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15",
    "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "5f00::/16", "fc00::/7", "fe80::/10",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


class FetchFailed(Exception):
    """One request failed; ``reason`` is a short code (see the module), ``detail`` is for logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, "***") if secret else text


# --------------------------------------------------------------------------- the URL
@dataclass(frozen=True)
class Target:
    """What a URL asks for, as it will be connected to: scheme, host (ASCII, no brackets), port, path."""

    scheme: str
    host: str
    port: int
    request_uri: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.request_uri}"


def parse_target(url: str) -> Target:
    """The :class:`Target` of ``url``; :class:`FetchFailed` (``bad_url``) for anything ambiguous or not http(s)."""
    if not isinstance(url, str) or not url:
        raise FetchFailed(BAD_URL, "empty URL")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise FetchFailed(BAD_URL, f"white space or a control character in {url!r}")
    if "\\" in url:
        raise FetchFailed(BAD_URL, f"a backslash in {url!r}")
    try:
        parts = parse_url(url)
        split = urllib.parse.urlsplit(url)
        port = split.port  # raises ValueError when out of range
    except (LocationParseError, ValueError) as exc:
        raise FetchFailed(BAD_URL, f"{url!r}: {exc}") from None
    scheme = (parts.scheme or "").lower()
    if scheme not in ("http", "https"):
        raise FetchFailed(BAD_URL, f"not an http:// or https:// URL: {url!r}")
    if parts.auth is not None or "@" in split.netloc:
        raise FetchFailed(BAD_URL, f"a user name or password (user@host) in {url!r}")
    host = (parts.host or "").strip("[]")
    if not host or "%" in host:
        raise FetchFailed(BAD_URL, f"no host (or an IPv6 zone) in {url!r}")
    other = (split.hostname or "").lower()
    if other.isascii() and other != host:  # two parsers must read the same host
        raise FetchFailed(BAD_URL, f"ambiguous host in {url!r} ({host!r} or {other!r})")
    port = parts.port or port or (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise FetchFailed(BAD_URL, f"port {port} out of range in {url!r}")
    return Target(scheme, host, port, parts.request_uri)


# --------------------------------------------------------------------------- the address
def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses of ``host``: the one DNS lookup of a request (a literal address is returned as is)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos
                 if info[0] in (socket.AF_INET, socket.AF_INET6)]
    return list(dict.fromkeys(addresses))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, -translated, -compatible, NAT64 or 6to4 IPv6 address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in (_NAT64, _IPV4_COMPATIBLE, _IPV4_TRANSLATED)):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """``'private_host'`` unless ``address`` (or the IPv4 address it embeds) is a public unicast one."""
    if isinstance(address, ipaddress.IPv6Address):
        address = embedded_ipv4(address) or address
    if (not address.is_global or address.is_multicast or address.is_reserved
            or any(address in net for net in _BLOCKED_NETWORKS if net.version == address.version)):
        return PRIVATE_HOST
    return None


# --------------------------------------------------------------------------- politeness
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


# --------------------------------------------------------------------------- the client
@dataclass(frozen=True)
class HttpPolicy:
    """How :class:`HttpClient` behaves.

    ``timeout`` bounds connecting, each read, and (as a wall-clock deadline)
    one whole download, redirects included; a retry gets a new deadline.
    """

    timeout: float = 20.0
    max_retries: int = 4
    min_seconds_between_calls: float = 0.5
    allow_private_hosts: bool = False
    max_bytes: int = 20_000_000


@dataclass
class Body:
    """A response read in full: status, headers (case-insensitive) and content (at most ``max_bytes``)."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    url: str


def _ca_bundle() -> str:
    """The certificates HTTPS servers are checked against: requests' environment variables, else certifi's."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if os.environ.get(name):
            return os.environ[name]
    import certifi

    return certifi.where()


def _cut(sock: socket.socket, fired: threading.Event) -> None:
    """The deadline passed: shut the socket down, so a blocked read returns at once."""
    fired.set()
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS
    except OSError:
        pass


class HttpClient:
    """GET requests under the guard, the rate limit, retries, redirects, the size cap and the deadline.

    ``sleep`` and ``clock`` (of the rate limit and the retry waits) can be
    replaced so tests need not wait; the deadline always uses real time.
    ``secret`` is removed from every detail message.
    """

    def __init__(self, policy: HttpPolicy, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, secret: str | None = None) -> None:
        self.policy = policy
        self.sleep = sleep
        self.secret = secret
        self.limiter = RateLimiter(policy.min_seconds_between_calls, clock, sleep)

    def get(self, url: str, params: Mapping[str, object] | None = None,
            headers: Mapping[str, str] | None = None, guard: bool = True,
            follow_redirects: bool = True, retry_network_errors: bool = False) -> Body:
        """GET ``url`` and read the body; :class:`FetchFailed` with a reason code if that fails.

        A response with an HTTP error status is returned, not raised (after
        the retries for :data:`RETRY_STATUSES`).

        Parameters
        ----------
        params:
            Query parameters appended to ``url``.
        guard:
            Refuse non-public addresses (unless the policy allows them), at
            every hop. Off only for the user's own endpoint (the search API).
        follow_redirects:
            Follow up to :data:`MAX_REDIRECTS` redirects, each checked like the
            first URL. Off for the search API, whose key must not travel on.
        retry_network_errors:
            Also retry timeouts and connection errors (for the search API; an
            image host that does not answer is not worth minutes of retries).
        """
        if params:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        for attempt in range(self.policy.max_retries + 1):
            last = attempt == self.policy.max_retries
            try:
                body = self._follow(url, headers or {}, guard, follow_redirects)
            except FetchFailed as failure:
                if not (retry_network_errors and failure.reason in (TIMEOUT, CONNECTION_ERROR)) or last:
                    raise
                delay = min(MAX_BACKOFF_SECONDS, 2.0 ** attempt)
                log.debug("%s: %s, retrying in %.0f s", redact(url, self.secret), failure.reason, delay)
                self.sleep(delay)
                continue
            if body.status not in RETRY_STATUSES or last:
                return body
            retry_after = parse_retry_after(body.headers.get("Retry-After"))
            delay = (min(MAX_RETRY_AFTER_SECONDS, retry_after) if retry_after is not None
                     else min(MAX_BACKOFF_SECONDS, 2.0 ** attempt))
            log.info("%s answered HTTP %d; retrying in %.1f s", parse_target(url).host, body.status, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")

    def _follow(self, url: str, headers: Mapping[str, str], guard: bool, follow_redirects: bool) -> Body:
        """One download, redirects included, under one deadline."""
        deadline = time.monotonic() + self.policy.timeout
        for _ in range(MAX_REDIRECTS + 1):
            body = self._one(url, headers, guard, deadline)
            location = body.headers.get("Location")
            if not (300 <= body.status < 400 and location and follow_redirects):
                return body
            url = urllib.parse.urljoin(url, location)
        raise FetchFailed(TOO_MANY_REDIRECTS, f"more than {MAX_REDIRECTS} redirects")

    def _addresses(self, target: Target, guard: bool) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        try:
            addresses = resolve(target.host, target.port)
        except (OSError, UnicodeError, ValueError) as exc:
            raise FetchFailed(DNS_ERROR, f"{target.host}: {exc}") from None
        if not addresses:
            raise FetchFailed(DNS_ERROR, f"{target.host} has no IPv4 or IPv6 address")
        if guard and not self.policy.allow_private_hosts:
            for address in addresses:
                problem = address_problem(address)
                if problem:
                    raise FetchFailed(problem, f"{target.host} is {address}")
        return addresses

    def _one(self, url: str, headers: Mapping[str, str], guard: bool, deadline: float) -> Body:
        """One request to the address checked for ``url``'s host (the first that accepts the connection)."""
        target = parse_target(url)
        addresses = self._addresses(target, guard)
        self.limiter.wait(target.host_header)
        request_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate", "Accept": "*/*",
                           **headers, "Host": target.host_header}
        error: FetchFailed | None = None
        for address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchFailed(TIMEOUT, f"not complete after {self.policy.timeout:g} s")
            timeout = min(self.policy.timeout, remaining)
            if target.scheme == "https":
                connection: HTTPConnection = HTTPSConnection(
                    str(address), target.port, timeout=timeout, server_hostname=target.host,
                    cert_reqs="CERT_REQUIRED", ca_certs=_ca_bundle())
            else:
                connection = HTTPConnection(str(address), target.port, timeout=timeout)
            try:
                connection.connect()
            except (OSError, Urllib3Error) as exc:
                connection.close()
                error = self._failure(exc, deadline)
                continue
            return self._exchange(connection, target, request_headers, deadline)
        assert error is not None
        raise error

    def _exchange(self, connection: HTTPConnection, target: Target, headers: Mapping[str, str],
                  deadline: float) -> Body:
        fired = threading.Event()
        # the socket itself: http.client lets go of it once a response that closes the connection starts
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (connection.sock, fired))
        timer.daemon = True
        timer.start()
        try:
            connection.request("GET", target.request_uri, headers=dict(headers), preload_content=False)
            response = connection.getresponse()
            status, limit = response.status, self.policy.max_bytes
            declared = response.headers.get("Content-Length", "")
            if status < 300 and declared.isdigit() and int(declared) > limit:
                raise FetchFailed(TOO_LARGE, f"{declared} bytes")
            content = bytearray()
            if not 300 <= status < 400:  # a redirect's body is not read
                while chunk := response.read1(_CHUNK_BYTES):
                    content += chunk
                    if len(content) > limit:
                        raise FetchFailed(TOO_LARGE, f"more than {limit} bytes")
            if fired.is_set():
                raise FetchFailed(TIMEOUT, f"not complete after {self.policy.timeout:g} s")
            return Body(status, response.headers, bytes(content), target.url)
        except (OSError, Urllib3Error, http.client.HTTPException) as exc:
            raise (FetchFailed(TIMEOUT, f"not complete after {self.policy.timeout:g} s") if fired.is_set()
                   else self._failure(exc, deadline)) from None
        finally:
            timer.cancel()
            connection.close()

    def _failure(self, exc: BaseException, deadline: float) -> FetchFailed:
        detail = redact(f"{type(exc).__name__}: {exc}", self.secret)
        timed_out = isinstance(exc, (TimeoutError, socket.timeout)) or "timed out" in str(exc).lower()
        if timed_out or time.monotonic() >= deadline:
            return FetchFailed(TIMEOUT, detail)
        return FetchFailed(CONNECTION_ERROR, detail)
