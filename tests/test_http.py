"""Tests of imgclass.io.http, the guarded client, against real servers on the loopback interface.

Loopback addresses are exactly what the guard refuses, so the tests that must
get through it declare 127.0.0.1 alone public (:func:`loopback_is_public`) and
point host names at it through the one DNS lookup of a request
(:func:`imgclass.io.http.resolve`). A second server on 127.0.0.2, the same
port, stands for the private address an attacker wants to reach: it must
never receive a request.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from imgclass.io import http
from imgclass.io.http import FetchFailed, HttpClient, HttpPolicy, RateLimiter, address_problem, parse_retry_after

PUBLIC = ipaddress.ip_address("127.0.0.1")


class Server:
    """A threaded HTTP server on one loopback address; ``paths`` lists the requests it received."""

    def __init__(self, host: str, port: int = 0, context: ssl.SSLContext | None = None) -> None:
        self.paths: list[str] = []
        self.hosts: list[str] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                owner.paths.append(self.path)
                owner.hosts.append(self.headers.get("Host", ""))
                try:
                    owner.respond(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def respond(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        if path.startswith("/redirect?to="):
            handler.send_response(302)
            handler.send_header("Location", urllib.parse.unquote(path.split("=", 1)[1]))
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        elif path == "/drip-body":  # headers at once, then one byte every 50 ms
            handler.send_response(200)
            handler.send_header("Content-Length", "100000")
            handler.end_headers()
            while not self.release.wait(0.05):
                handler.wfile.write(b"x")
        elif path == "/drip-headers":  # even the status line comes one byte at a time
            for byte in b"HTTP/1.0 200 OK\r\nX-Slow: " + b"y" * 100000:
                if self.release.wait(0.05):
                    return
                handler.wfile.write(bytes([byte]))
        else:
            body = b"hello from " + handler.server.server_address[0].encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "text/plain")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    public = Server("127.0.0.1")
    yield public
    public.close()


@pytest.fixture
def private(server: Server) -> Iterator[Server]:
    """The server an attacker wants to reach: 127.0.0.2, on the public server's port."""
    target = Server("127.0.0.2", server.port)
    yield target
    target.close()


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard treats 127.0.0.1 (the test server) as public; every other address as usual."""
    real = http.address_problem
    monkeypatch.setattr(http, "address_problem", lambda address: None if address == PUBLIC else real(address))


def names_resolve_to(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """Make each lookup of a ``.test`` name answer the next of ``answers`` (the last one repeats); returns the
    names looked up. Other hosts (address literals) resolve as usual."""
    asked: list[str] = []
    real = http.resolve

    def resolve(host: str, port: int) -> list:
        if not host.endswith(".test"):
            return real(host, port)
        asked.append(host)
        answer = answers[min(len(asked), len(answers)) - 1]
        return [ipaddress.ip_address(answer)]

    monkeypatch.setattr(http, "resolve", resolve)
    return asked


def guarded(timeout: float = 2.0, **changes: object) -> HttpClient:
    return HttpClient(HttpPolicy(timeout=timeout, max_retries=0, min_seconds_between_calls=0.0, **changes))


def reason(client: HttpClient, url: str) -> str:
    with pytest.raises(FetchFailed) as failure:
        client.get(url)
    return failure.value.reason


# --------------------------------------------------------------------------- the address policy
@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254", "0.0.0.0", "100.64.0.1",
    "224.0.0.1", "255.255.255.255", "192.0.0.170", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "::127.0.0.1", "::10.0.0.1",                    # IPv4-compatible
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",        # NAT64 of 127.0.0.1, 169.254.169.254
    "64:ff9b:1::a00:1",                              # local-use NAT64
    "2002:7f00:1::", "2002:a9fe:a9fe::1",           # 6to4 of 127.0.0.1, 169.254.169.254
    "::ffff:0:7f00:1",                               # IPv4-translated
])
def test_non_public_addresses_and_ipv4_embedded_in_ipv6_are_refused(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) == http.PRIVATE_HOST


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


# --------------------------------------------------------------------------- the URL
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8766\\@8.8.8.8/x.png",  # the reported bypass: two parsers, two hosts
    "http://8.8.8.8\\@127.0.0.1/x.png",
    "http://user@8.8.8.8/x.png", "http://user:password@8.8.8.8/", "http://8.8.8.8@127.0.0.1/",
    "http://8.8.8.8/x\ty.png", "http://8.8.8.8/x y.png", "http://8.8.8.8/\x00", "http://8.8\r\n.8.8/",
    "ftp://8.8.8.8/x.jpg", "file:///etc/passwd", "gopher://8.8.8.8/", "8.8.8.8/x.jpg", "http:///x.jpg",
    "http://8.8.8.8:99999/x.jpg", "http://[fe80::1%25eth0]/", "",
])
def test_ambiguous_or_foreign_urls_are_refused_before_any_lookup(url: str, monkeypatch) -> None:
    asked = names_resolve_to(monkeypatch, "8.8.8.8")
    assert reason(guarded(), url) == http.BAD_URL
    assert asked == []


def test_a_url_is_connected_to_as_parsed() -> None:
    target = http.parse_target("HTTPS://Example.ORG:8443/a%20b/c.jpg?x=1#frag")
    assert (target.scheme, target.host, target.port, target.request_uri) == ("https", "example.org", 8443,
                                                                            "/a%20b/c.jpg?x=1")
    assert target.host_header == "example.org:8443"
    assert http.parse_target("http://[2606:4700::1]/").host_header == "[2606:4700::1]"


# --------------------------------------------------------------------------- against real servers
def test_every_form_of_a_loopback_url_is_refused_and_nothing_reaches_the_server(server: Server) -> None:
    port = server.port
    forms = [f"http://127.0.0.1:{port}/x", f"http://localhost:{port}/x", f"http://127.1:{port}/x",
             f"http://2130706433:{port}/x", f"http://0x7f.0.0.1:{port}/x", f"http://[::ffff:127.0.0.1]:{port}/x",
             f"http://[::127.0.0.1]:{port}/x", f"http://[::1]:{port}/x", f"http://0.0.0.0:{port}/x"]
    client = guarded()
    for url in forms:
        assert reason(client, url) == http.PRIVATE_HOST, url
    for url in (f"http://127.0.0.1:{port}\\@8.8.8.8/x", f"http://8.8.8.8@127.0.0.1:{port}/x"):
        assert reason(client, url) == http.BAD_URL, url
    assert server.paths == []
    assert guarded(allow_private_hosts=True).get(f"http://127.0.0.1:{port}/x").content == b"hello from 127.0.0.1"


def test_every_redirect_hop_is_checked(server: Server, private: Server, loopback_is_public, monkeypatch) -> None:
    names_resolve_to(monkeypatch, "127.0.0.1")
    base, port = f"http://images.test:{server.port}", server.port
    client = guarded()
    assert client.get(f"{base}/redirect?to=/final").content == b"hello from 127.0.0.1"
    for location, expected in [(f"http://127.0.0.2:{port}/secret", http.PRIVATE_HOST),
                               (f"http://[::ffff:127.0.0.2]:{port}/secret", http.PRIVATE_HOST),
                               (f"http://2130706434:{port}/secret", http.PRIVATE_HOST),
                               (f"http://127.0.0.1:{port}\\@127.0.0.2/secret", http.BAD_URL),
                               ("ftp://127.0.0.2/secret", http.BAD_URL)]:
        assert reason(client, f"{base}/redirect?to={location}") == expected, location
    assert private.paths == []
    loop = f"{base}/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/x"
    assert reason(client, loop) == http.TOO_MANY_REDIRECTS


def test_the_connection_goes_to_the_address_that_was_checked(server: Server, private: Server, loopback_is_public,
                                                             monkeypatch) -> None:
    # DNS rebinding: a public answer for the check, a private one for any later lookup
    asked = names_resolve_to(monkeypatch, "127.0.0.1", "127.0.0.2")
    body = guarded().get(f"http://rebind.test:{server.port}/x")
    assert body.content == b"hello from 127.0.0.1"
    assert asked == ["rebind.test"]  # one lookup: checked and connected
    assert server.hosts == [f"rebind.test:{server.port}"] and private.paths == []


def test_a_name_with_any_private_address_is_refused(server: Server, monkeypatch, loopback_is_public) -> None:
    monkeypatch.setattr(http, "resolve", lambda host, port: [PUBLIC, ipaddress.ip_address("10.0.0.1")])
    assert reason(guarded(), f"http://mixed.test:{server.port}/x") == http.PRIVATE_HOST
    assert server.paths == []


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_server_that_drips_is_cut_off_at_the_deadline(server: Server, path: str) -> None:
    client = guarded(timeout=0.5, allow_private_hosts=True)  # every read gets a byte well within 0.5 s
    started = time.monotonic()
    assert reason(client, f"http://127.0.0.1:{server.port}{path}") == http.TIMEOUT
    assert time.monotonic() - started < 1.5


def test_unreachable_and_unknown_hosts(monkeypatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert reason(guarded(allow_private_hosts=True), f"http://127.0.0.1:{port}/") == http.CONNECTION_ERROR

    def no_such_host(host: str, port: int) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(http, "resolve", no_such_host)
    assert reason(guarded(), "http://no-such-host.test/x.jpg") == http.DNS_ERROR


# --------------------------------------------------------------------------- HTTPS with the checked address
def _make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``images.test`` signed by it (openssl command line)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=imgclass test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=images.test")
    (folder / "san.cnf").write_text("subjectAltName=DNS:images.test\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_checks_the_certificate_against_the_name_in_the_url(tmp_path: Path, monkeypatch,
                                                                  loopback_is_public) -> None:
    ca, cert, key = _make_certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tls_server = Server("127.0.0.1", context=context)
    try:
        names_resolve_to(monkeypatch, "127.0.0.1")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
        body = guarded().get(f"https://images.test:{tls_server.port}/x")
        assert body.status == 200 and body.content == b"hello from 127.0.0.1"
        assert tls_server.hosts == [f"images.test:{tls_server.port}"]
        # the same server under another name: its certificate does not match, nothing is fetched
        assert reason(guarded(), f"https://other.test:{tls_server.port}/x") == http.CONNECTION_ERROR
        assert len(tls_server.paths) == 1
    finally:
        tls_server.close()


# --------------------------------------------------------------------------- politeness
class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limit_between_calls_to_the_same_host() -> None:
    fake_time = FakeTime()
    limiter = RateLimiter(0.5, fake_time.clock, fake_time.sleep)
    limiter.wait("a")
    limiter.wait("b")
    limiter.wait("a")
    fake_time.now += 0.2
    limiter.wait("a")
    assert fake_time.sleeps == [0.5, pytest.approx(0.3)]


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
