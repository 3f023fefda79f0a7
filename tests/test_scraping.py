"""Tests of imgclass.data.scraping against a fake Bing endpoint and image host on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import runpy
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from conftest import natural_photo
import imgclass.data.scraping as scraping
from imgclass.data.download import file_name_for_url
from conftest import PROJECT_DIR
from imgclass.parameters import Parameters, parse_override
from imgclass.data.scraping import (
    KEY_ENVIRONMENT_VARIABLE,
    MANIFEST_COLUMNS,
    Query,
    ScrapeError,
    build_queries,
    http_policy,
    read_manifest,
    read_queries_file,
    scrape,
)
from imgclass.io.http import HttpClient

KEY = "test-SECRET-key-0123456789"
MAX_BYTES = 3_000_000


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, exif=exif.tobytes())


# --------------------------------------------------------------------------- fake web
class FakeWeb:
    """Routes of the fake host: ``path -> [responses]`` (consumed in order, the last one repeats)."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
        self.results: dict[str, list[dict[str, str]]] = {}
        self.page_cap = 3
        self.throttle_search_once: set[tuple[str, int]] = set()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.base = ""

    def add(self, path: str, *responses: tuple[int, dict[str, str], bytes]) -> str:
        self.routes[path] = list(responses)
        return self.base + path

    def image(self, path: str, data: bytes, content_type: str = "image/jpeg") -> str:
        return self.add(path, (200, {"Content-Type": content_type}, data))

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def respond(self, raw_path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        parts = urllib.parse.urlsplit(raw_path)
        with self.lock:
            self.requests.append((parts.path, headers))
            if parts.path == "/v7.0/images/search":
                return self.search(urllib.parse.parse_qs(parts.query), headers)
            responses = self.routes.get(parts.path)
            if not responses:
                return 404, {"Content-Type": "text/plain"}, b"not found"
            return responses.pop(0) if len(responses) > 1 else responses[0]

    def search(self, query: dict[str, list[str]], headers: dict[str, str]):
        given = headers.get("Ocp-Apim-Subscription-Key", "")
        if given != KEY:  # echo the key back, like a careless service: it must not reach our output
            return 401, {"Content-Type": "application/json"}, json.dumps(
                {"error": {"code": "401", "message": f"Access denied: invalid key {given}"}}).encode()
        q, offset, count = query["q"][0], int(query["offset"][0]), int(query["count"][0])
        if (q, offset) in self.throttle_search_once:
            self.throttle_search_once.discard((q, offset))
            return 429, {"Retry-After": "1"}, b"slow down"
        results = self.results.get(q, [])
        page = results[offset: offset + min(count, self.page_cap)]
        answer = {"_type": "Images", "totalEstimatedMatches": len(results), "value": page,
                  "nextOffset": offset + len(page)}
        return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()


@pytest.fixture
def web():
    fake = FakeWeb()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, headers, body = fake.respond(self.path, dict(self.headers))
            if headers.get("X-Delay"):
                time.sleep(float(headers["X-Delay"]))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers and not headers.get("X-No-Length"):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


class FakeTime:
    """An injectable clock and sleep: sleeping advances the clock instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client(params: Parameters, fake_time: FakeTime | None = None) -> HttpClient:
    """The scraper's client, waiting on a fake clock (instant sleeps)."""
    fake_time = fake_time or FakeTime()
    return HttpClient(http_policy(params), sleep=fake_time.sleep, clock=fake_time.clock, secret=KEY)


def make_params(tmp_path: Path, web: FakeWeb, **changes) -> Parameters:
    values = dict(rootDir=str(tmp_path / "data"), datasetName="scraped",
                  bing_endpoint=web.base + "/v7.0/images/search", scrape_countPerPage=5,
                  scrape_imagesPerQuery=50, scrape_allowPrivateHosts=True, scrape_useThumbnails=True,
                  scrape_minSecondsBetweenCalls=0.0, scrape_maxRetries=3, scrape_maxBytes=MAX_BYTES,
                  scrape_timeoutSeconds=10.0)
    values.update(changes)
    return Parameters().replace(**values)


@functools.lru_cache(maxsize=None)
def image_files() -> dict[str, bytes]:
    """The bytes the fake host serves (made once per test session)."""
    a_photo = natural_photo(1, (640, 480))
    a = encode(a_photo, quality=90)
    return {
        "a": a, "a_corrupt": a[: len(a) // 3],
        "a_half": encode(a_photo.resize((320, 240), Image.Resampling.LANCZOS)),
        "a_q50": encode(a_photo, quality=50),
        "b_png": encode(natural_photo(2), "PNG"),
        "exif": jpeg_with_orientation(natural_photo(3, (300, 200)), 6),
        "big": encode(natural_photo(4, (1600, 1200)), quality=85),
        **{name: encode(natural_photo(seed)) for name, seed in {"e": 5, "f": 6, "g": 7, "i": 9}.items()},
        "h": encode(natural_photo(8, (160, 120))),
    }


@pytest.fixture
def catalogue(web: FakeWeb) -> dict[str, str]:
    """Serve the images of two queries; returns name -> URL."""
    files = image_files()
    huge = b"\xff\xd8\xff\xe0" + bytes(MAX_BYTES)
    urls = {
        "a": web.image("/img/a.jpg", files["a"]),
        "a_copy": web.image("/img/a_copy.jpg", files["a"]),
        "a_half": web.image("/img/a_half.jpg", files["a_half"]),
        "a_q50": web.image("/img/a_q50.jpg", files["a_q50"]),
        "b_png": web.image("/img/b.png", files["b_png"], "image/png"),
        "exif": web.image("/img/exif.jpg", files["exif"]),
        "big": web.image("/img/big.jpg", files["big"]),
        "corrupt": web.image("/img/corrupt.jpg", files["a_corrupt"]),
        "html": web.image("/img/page.html", b"<html><body>not an image</body></html>", "text/html"),
        "huge": web.image("/img/huge.jpg", huge),
        "huge_stream": web.add("/img/huge_stream.jpg",
                               (200, {"Content-Type": "image/jpeg", "X-No-Length": "1"}, huge)),
        "missing": web.base + "/img/missing.jpg",
        "flaky": web.add("/img/flaky.jpg", (500, {}, b"oops"),
                         (200, {"Content-Type": "image/jpeg"}, files["e"])),
        "throttled": web.add("/img/throttled.jpg", (429, {"Retry-After": "1"}, b"slow down"),
                             (200, {"Content-Type": "image/jpeg"}, files["f"])),
        "redirect": web.add("/img/redirect.jpg", (302, {"Location": "/img/g.jpg"}, b"")),
        "thumbfail": web.base + "/img/thumbfail.jpg",
        "ftp": "ftp://127.0.0.1/x.jpg",
        "i": web.image("/img/i.jpg", files["i"]),
    }
    web.image("/img/g.jpg", files["g"])
    thumb = web.image("/thumb/h.jpg", files["h"])
    striped = [name for name in urls if name != "i"]
    web.results["shirt striped"] = [
        {"contentUrl": urls[name], "thumbnailUrl": thumb if name == "thumbfail" else ""} for name in striped]
    web.results["dress dotted"] = [{"contentUrl": urls[name]} for name in ("a", "i", "missing")]
    web.throttle_search_once.add(("shirt striped", 3))
    return urls


QUERIES = [Query("striped", "shirt striped"), Query("dotted", "dress dotted")]
EXPECTED_STATUS = {
    "a": "ok", "a_copy": "ok", "a_half": "ok", "a_q50": "ok", "b_png": "ok", "exif": "ok", "big": "ok",
    "corrupt": "undecodable", "html": "not_image", "huge": "too_large", "huge_stream": "too_large",
    "missing": "http_404", "flaky": "ok", "throttled": "ok", "redirect": "ok", "thumbfail": "ok_thumbnail",
    "ftp": "bad_url",
}


def statuses(manifest: Path, label: str) -> dict[str, str]:
    return {row["url"]: row["status"] for row in read_manifest(manifest) if row["label"] == label}


# --------------------------------------------------------------------------- tests
def test_scrape_downloads_checks_and_records_everything(tmp_path, web, catalogue, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    params = make_params(tmp_path, web)
    fake_time = FakeTime()
    report = scrape(params, key=KEY, queries=QUERIES, client=client(params, fake_time))
    images = Path(params.rootDir) / "images" / "scraped"

    # the manifest: a header, then one line per result, in the documented columns
    manifest = images / "scrapeManifest.tsv"
    assert manifest.read_text().splitlines()[0].split("\t") == list(MANIFEST_COLUMNS)
    striped = statuses(manifest, "striped")
    assert striped == {catalogue[name]: status for name, status in EXPECTED_STATUS.items()}
    assert statuses(manifest, "dotted") == {catalogue["a"]: "ok", catalogue["i"]: "ok"}

    # files: JPEGs named by a hash of the URL, decodable, shrunk, EXIF applied
    for row in read_manifest(manifest):
        if row["status"].startswith("ok"):
            path = images / row["file"]
            assert row["file"] == f"{row['label']}/{file_name_for_url(row['url'])}"
            with Image.open(path) as image:
                assert image.format == "JPEG" and max(image.size) <= 1000
            assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
    with Image.open(images / "striped" / file_name_for_url(catalogue["big"])) as image:
        assert image.size == (1000, 750)
    with Image.open(images / "striped" / file_name_for_url(catalogue["exif"])) as image:
        assert image.size == (200, 300)  # orientation 6: rotated upright
    assert sorted(p.name for p in (images / "striped").iterdir()) == sorted(
        file_name_for_url(catalogue[n]) for n, s in EXPECTED_STATUS.items() if s.startswith("ok"))

    # the summary, per query
    striped_summary, dotted_summary = report.queries
    assert striped_summary.found == len(EXPECTED_STATUS)
    assert striped_summary.downloaded == 11
    assert striped_summary.failed == Counter({"too_large": 2, "undecodable": 1, "not_image": 1,
                                              "http_404": 1, "bad_url": 1})
    assert (dotted_summary.downloaded, dotted_summary.known_bad) == (2, 1)
    assert "found 17, downloaded 11" in report.summary()

    # retries: the search API's 429 and the image host's 429 waited Retry-After (1 s), the 500 backed off 1 s
    assert fake_time.sleeps.count(1.0) == 3
    assert web.count("/img/flaky.jpg") == 2 and web.count("/img/throttled.jpg") == 2
    # the same URL under a second label is copied, a known-bad URL is not fetched again
    assert web.count("/img/a.jpg") == 1 and web.count("/img/missing.jpg") == 1
    # paging by nextOffset, at most 3 results a page: 6 pages + 1 empty + the 429'd one; 1 page + 1 empty
    assert web.count("/v7.0/images/search") == (6 + 1 + 1) + (1 + 1)

    # the key went to the search API only, and appears nowhere
    for path, headers in web.requests:
        assert (path == "/v7.0/images/search") == ("Ocp-Apim-Subscription-Key" in headers)
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err + caplog.text + manifest.read_text() + report.summary()


def test_rerun_after_an_interrupted_run_resumes(tmp_path, web, catalogue, monkeypatch):
    params = make_params(tmp_path, web)
    real_save = scraping.save_jpeg
    saved = []

    def save_then_crash(image, path, *args, **kwargs):
        if len(saved) == 3:
            raise KeyboardInterrupt
        real_save(image, path, *args, **kwargs)
        saved.append(path)

    monkeypatch.setattr(scraping, "save_jpeg", save_then_crash)
    fake_time = FakeTime()
    with pytest.raises(KeyboardInterrupt):
        scrape(params, key=KEY, queries=QUERIES, client=client(params, fake_time))
    monkeypatch.setattr(scraping, "save_jpeg", real_save)
    manifest = Path(params.rootDir) / "images" / "scraped" / "scrapeManifest.tsv"
    done_before = {row["url"] for row in read_manifest(manifest)}
    assert len([r for r in read_manifest(manifest) if r["status"] == "ok"]) == 3
    counts_before = Counter(path for path, _ in web.requests)

    report = scrape(params, key=KEY, queries=QUERIES, client=client(params, fake_time))
    counts_after = Counter(path for path, _ in web.requests)
    for url in done_before:  # downloaded or known bad: not fetched again
        path = urllib.parse.urlsplit(url).path
        if url.startswith("http"):
            assert counts_after[path] == counts_before[path], url
    assert statuses(manifest, "striped") == {catalogue[n]: s for n, s in EXPECTED_STATUS.items()}
    rows = read_manifest(manifest)
    ok_urls = [(r["label"], r["url"]) for r in rows if r["status"].startswith("ok")]
    assert len(ok_urls) == len(set(ok_urls)) == 11 + 2
    assert report.queries[0].already_had == 3

    # a third run fetches no image at all, even for a file moved away since (e.g. by removeDuplicates.py)
    (Path(params.rootDir) / "images" / "scraped" / "striped" / file_name_for_url(catalogue["a_copy"])).unlink()
    before = sum(1 for path, _ in web.requests if path.startswith("/img/"))
    third = scrape(params, key=KEY, queries=QUERIES, client=client(params, fake_time))
    assert sum(1 for path, _ in web.requests if path.startswith("/img/")) == before
    assert third.queries[0].already_had == 11 and third.queries[0].known_bad == 6


def test_slow_image_host_times_out(tmp_path, web):
    slow = web.add("/img/slow.jpg", (200, {"Content-Type": "image/jpeg", "X-Delay": "1"}, image_files()["a"]))
    web.results["slow"] = [{"contentUrl": slow}]
    params = make_params(tmp_path, web, scrape_timeoutSeconds=0.3)
    report = scrape(params, key=KEY, queries=[Query("x", "slow")], client=client(params))
    assert report.queries[0].failed == Counter({"timeout": 1})
    assert web.count("/img/slow.jpg") == 1  # a silent host is not retried


def test_private_hosts_are_refused_by_default(tmp_path, web, catalogue):
    params = make_params(tmp_path, web, scrape_allowPrivateHosts=False)
    report = scrape(params, key=KEY, queries=QUERIES[:1], client=client(params))
    assert report.queries[0].found == len(EXPECTED_STATUS)
    assert report.queries[0].downloaded == 0
    assert report.queries[0].failed["private_host"] == len(EXPECTED_STATUS) - 1  # and one ftp:// bad_url
    assert not any(path.startswith(("/img/", "/thumb/")) for path, _ in web.requests)


def test_refused_key_is_a_clear_error_without_the_key(tmp_path, web, catalogue):
    params = make_params(tmp_path, web)
    wrong = "wrong-" + KEY
    with pytest.raises(ScrapeError) as error:
        scrape(params, key=wrong, queries=QUERIES, client=client(params))
    assert "HTTP 401" in str(error.value) and KEY_ENVIRONMENT_VARIABLE in str(error.value)
    assert wrong not in str(error.value) and KEY not in str(error.value)


def test_missing_key_names_the_environment_variable(tmp_path, web, monkeypatch):
    monkeypatch.delenv(KEY_ENVIRONMENT_VARIABLE, raising=False)
    with pytest.raises(ScrapeError, match=KEY_ENVIRONMENT_VARIABLE):
        scrape(make_params(tmp_path, web), queries=QUERIES)


def test_search_failing_after_retries_is_reported_and_the_next_query_runs(tmp_path, web, catalogue):
    web.results["dress dotted"] = [{"contentUrl": catalogue["i"]}]
    for offset in (0,):
        web.throttle_search_once.add(("shirt striped", offset))
    params = make_params(tmp_path, web, scrape_maxRetries=0)
    report = scrape(params, key=KEY, queries=QUERIES, client=client(params))
    assert report.queries[0].search_error == "http_429"
    assert report.queries[1].downloaded == 1
    assert "searches failed" in report.summary()


def test_images_per_query_caps_the_results_and_pages(tmp_path, web, catalogue):
    params = make_params(tmp_path, web, scrape_imagesPerQuery=4, scrape_countPerPage=2)
    report = scrape(params, key=KEY, queries=QUERIES[:1], client=client(params))
    assert report.queries[0].found == 4
    searches = [h for p, h in web.requests if p == "/v7.0/images/search"]
    assert len(searches) == 2


def test_queries_from_items_attributes_and_file(tmp_path):
    queries = build_queries(["shirt", "dress"], ["striped", "dotted"])
    assert queries == [Query("striped", "shirt striped"), Query("dotted", "shirt dotted"),
                       Query("striped", "dress striped"), Query("dotted", "dress dotted")]
    defaults = Parameters()
    assert len(build_queries(defaults.scrape_items, defaults.scrape_attributes)) == 21
    good = tmp_path / "queries.tsv"
    good.write_text("# label<TAB>query\nstriped\tzebra pattern scarf\n\nleopard\tleopard print coat\n")
    assert read_queries_file(good) == [Query("striped", "zebra pattern scarf"),
                                       Query("leopard", "leopard print coat")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("../x\tquery\nno tab here\n")
    with pytest.raises(ScrapeError, match="line 1.*\n.*line 2"):
        read_queries_file(bad)


def test_list_of_strings_parameters_from_the_command_line():
    assert parse_override("--scrape_items=t-shirt, winter coat") == ("scrape_items",
                                                                      ["t-shirt", "winter coat"])
    assert parse_override('--scrape_attributes=["a b", "c"]') == ("scrape_attributes", ["a b", "c"])


def test_script_scrapes_and_prints_a_summary(tmp_path, web, catalogue, monkeypatch, capsys):
    web.results["plain"] = [{"contentUrl": catalogue["a"]}, {"contentUrl": catalogue["i"]},
                            {"contentUrl": catalogue["missing"]}]
    queries = tmp_path / "queries.tsv"
    queries.write_text("plainLabel\tplain\n")
    parameters_file = tmp_path / "PARAMETERS.py"
    parameters_file.write_text(
        f"rootDir = {str(tmp_path / 'data')!r}\ndatasetName = 'fromScript'\n"
        f"bing_endpoint = {web.base + '/v7.0/images/search'!r}\nscrape_queriesFile = 'queries.tsv'\n"
        "scrape_allowPrivateHosts = True\nscrape_minSecondsBetweenCalls = 0.0\n")
    monkeypatch.setenv(KEY_ENVIRONMENT_VARIABLE, KEY)
    main = runpy.run_path(str(PROJECT_DIR / "scripts" / "scrapeImages.py"))["main"]
    assert main([f"--parametersFile={parameters_file}"]) == 0
    out = capsys.readouterr().out
    assert "'plain' -> plainLabel: found 3, downloaded 2" in out and KEY not in out
    assert len(list((tmp_path / "data" / "images" / "fromScript" / "plainLabel").glob("*.jpg"))) == 2


def test_manifest_lines_naming_files_outside_the_dataset_are_ignored(tmp_path, web, catalogue):
    """The manifest travels with the images: a crafted ``file`` must not make the scraper copy a file in."""
    params = make_params(tmp_path, web)
    images = Path(params.rootDir) / "images" / "scraped"
    (images / "striped").mkdir(parents=True)
    secret = tmp_path / "data" / "secret.jpg"
    secret.write_bytes(b"not for the dataset")
    (images / "striped" / "link.jpg").symlink_to(secret)
    crafted = {"../../secret.jpg": catalogue["a"], str(secret): catalogue["i"],
               "striped/link.jpg": catalogue["b_png"], "scrapeManifest.tsv": catalogue["exif"]}
    lines = ["\t".join(MANIFEST_COLUMNS)] + [f"elsewhere\tq\t{url}\t{file}\t\tok" for file, url in crafted.items()]
    (images / "scrapeManifest.tsv").write_text("\n".join(lines) + "\n")
    web.results["plain"] = [{"contentUrl": url} for url in crafted.values()]

    report = scrape(params, key=KEY, queries=[Query("dotted", "plain")], client=client(params))

    assert report.untrusted_rows == 4 and "ignored 4 line(s) of the manifest" in report.summary()
    assert report.queries[0].downloaded == 4  # fetched from the web, not copied from the named files
    for url in crafted.values():
        saved = images / "dotted" / file_name_for_url(url)
        with Image.open(saved) as image:
            assert image.format == "JPEG"
        assert saved.read_bytes() != secret.read_bytes()
    assert secret.read_bytes() == b"not for the dataset"
