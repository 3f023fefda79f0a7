"""Tests of imgclass.data.download and scripts/0_downloadData.py, offline.

A tiny HTTP server on 127.0.0.1 serves generated images, broken files and
error responses; nothing leaves the machine.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from imgclass.data.download import (
    MAX_DOWNLOAD_BYTES,
    DownloadReport,
    UrlListError,
    download_images,
    file_name_for_url,
    install_demo_images,
    read_url_list,
    resolve_urls_file,
)
from imgclass.errors import DatasetError
from imgclass.io.http import HttpClient, HttpPolicy
from imgclass.io.images import load_rgb

PROJECT_DIR = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT_DIR / "scripts" / "0_downloadData.py"
DEMO_IMAGES_DIR = PROJECT_DIR / "resources" / "demoImages"
TIMEOUT = 0.5
MAX_SIDE = 100


def client(max_bytes: int = MAX_DOWNLOAD_BYTES, allow_private_hosts: bool = True) -> HttpClient:
    """Step 0's client (no retries, no rate limit); the test server is on 127.0.0.1, so private hosts are allowed."""
    return HttpClient(HttpPolicy(timeout=TIMEOUT, max_retries=0, min_seconds_between_calls=0.0,
                                 allow_private_hosts=allow_private_hosts, max_bytes=max_bytes))


# --------------------------------------------------------------------------- test data
def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _gradient(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    return image


def _rotated_jpeg() -> bytes:
    """A JPEG stored 80x40 whose EXIF says 'rotate 90 degrees': it displays 40x80."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_gradient(80, 40), "JPEG", exif=exif)


VALID_JPEG = _encode(_gradient(64, 48), "JPEG", quality=90)
BIG_PNG = _encode(_gradient(400, 250), "PNG")
ROUTES: dict[str, tuple[int, str, bytes]] = {
    "/photos/Red%20Rose.jpg": (200, "image/jpeg", VALID_JPEG),
    "/big.png": (200, "image/png", BIG_PNG),
    "/rotated.jpg": (200, "image/jpeg", _rotated_jpeg()),
    "/corrupt.jpg": (200, "image/jpeg", VALID_JPEG[: len(VALID_JPEG) // 2]),
    "/page.html": (200, "text/html", b"<html><body>not an image</body></html>"),
    "/empty.jpg": (200, "image/jpeg", b""),
}


class _Handler(BaseHTTPRequestHandler):
    release = threading.Event()  # set at teardown so a sleeping handler ends at once

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        try:
            if self.path == "/slow.jpg":
                self.release.wait(TIMEOUT * 6)  # longer than the client's timeout
                self._send(200, "image/jpeg", VALID_JPEG)
            elif self.path == "/nolength.jpg":
                # No Content-Length: the size limit must hold while streaming.
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                self.wfile.write(BIG_PNG)
            elif self.path in ROUTES:
                self._send(*ROUTES[self.path])
            else:
                self._send(404, "text/plain", b"not found")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of a local HTTP server running in a thread."""
    _Handler.release.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        _Handler.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing.jpg"


def _all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _good_entries(base: str) -> list[tuple[str, str]]:
    return [
        ("flowers", f"{base}/photos/Red%20Rose.jpg"),
        ("flowers", f"{base}/big.png"),
        ("trees", f"{base}/rotated.jpg"),
    ]


def _bad_entries(base: str) -> list[tuple[str, str]]:
    return [
        ("trees", f"{base}/corrupt.jpg"),
        ("trees", f"{base}/page.html"),
        ("trees", f"{base}/missing.jpg"),
        ("trees", f"{base}/slow.jpg"),
        ("trees", f"{base}/empty.jpg"),
        ("trees", _closed_port_url()),
    ]


# --------------------------------------------------------------------------- download_images
def test_download_keeps_only_decodable_shrunk_images_and_counts_failures(server: str, tmp_path: Path) -> None:
    entries = _good_entries(server) + _bad_entries(server)
    report = download_images(entries, tmp_path, client(), MAX_SIDE, progress=False)

    assert report.total == len(entries)
    assert report.downloaded == 3
    assert report.already_present == 0
    reasons = dict(report.failed)
    assert reasons == {
        f"{server}/corrupt.jpg": "corrupt image",
        f"{server}/page.html": "not an image",
        f"{server}/missing.jpg": "HTTP 404",
        f"{server}/slow.jpg": "timeout",
        f"{server}/empty.jpg": "empty response",
        entries[-1][1]: "connection error",
    }
    assert report.failures_by_reason() == {reason: 1 for reason in reasons.values()}
    assert "downloaded 3 of 9" in report.summary()
    assert "HTTP 404" in report.summary()

    # Only the three good images are on disk: no file, no temporary file for the failures.
    files = _all_files(tmp_path)
    expected = {tmp_path / label / file_name_for_url(url) for label, url in _good_entries(server)}
    assert set(files) == expected
    for path in files:
        assert path.suffix == ".jpg"
        image = load_rgb(path)
        assert max(image.size) <= MAX_SIDE
        assert Image.open(path).format == "JPEG"

    sizes = {url.rsplit("/", 1)[1]: load_rgb(tmp_path / label / file_name_for_url(url)).size
             for label, url in _good_entries(server)}
    assert sizes["Red%20Rose.jpg"] == (64, 48)  # small images are not upscaled
    assert sizes["big.png"] == (100, 62)  # 400x250 shrunk to the longer side 100
    assert sizes["rotated.jpg"] == (40, 80)  # EXIF orientation applied before saving


def test_private_addresses_are_refused_unless_allowed(server: str, tmp_path: Path) -> None:
    entries = _good_entries(server) + [("trees", "http://[::ffff:127.0.0.1]:9/x.jpg")]
    report = download_images(entries, tmp_path, client(allow_private_hosts=False), MAX_SIDE, progress=False)
    assert report.failures_by_reason() == {"private address refused": 4}
    assert _all_files(tmp_path) == []


def test_second_run_downloads_nothing(server: str, tmp_path: Path) -> None:
    entries = _good_entries(server)
    first = download_images(entries, tmp_path, client(), MAX_SIDE, progress=False)
    assert first.downloaded == 3
    before = {p: p.stat().st_mtime_ns for p in _all_files(tmp_path)}

    second = download_images(entries, tmp_path, client(), MAX_SIDE, progress=False)
    assert (second.downloaded, second.already_present, second.failed) == (0, 3, [])
    assert "downloaded 0 of 3 (3 already present, 0 failed)" in second.summary()
    assert {p: p.stat().st_mtime_ns for p in _all_files(tmp_path)} == before


def test_size_limit_holds_with_and_without_content_length(server: str, tmp_path: Path) -> None:
    entries = [("a", f"{server}/big.png"), ("a", f"{server}/nolength.jpg")]
    report = download_images(entries, tmp_path, client(max_bytes=len(BIG_PNG) // 2), MAX_SIDE, progress=False)
    assert report.downloaded == 0
    assert [reason for _, reason in report.failed] == ["too large", "too large"]
    assert _all_files(tmp_path) == []


def test_download_rejects_unsafe_labels_before_any_request(tmp_path: Path) -> None:
    with pytest.raises(UrlListError, match="dot"):
        download_images([("../escape", "http://127.0.0.1:9/x.jpg")], tmp_path, client(), MAX_SIDE,
                        progress=False)
    assert _all_files(tmp_path) == []


def test_report_summary_lists_reasons() -> None:
    report = DownloadReport(total=4, downloaded=1, already_present=1,
                            failed=[("u1", "HTTP 404"), ("u2", "HTTP 404")])
    text = report.summary()
    assert "2 download(s) failed" in text
    assert "2 x HTTP 404" in text
    assert text.endswith("downloaded 1 of 4 (1 already present, 2 failed)")


def test_file_names_are_readable_stable_and_distinct() -> None:
    name = file_name_for_url("https://example.org/pics/Red%20Rose.JPG?size=large")
    assert name.startswith("Red_Rose_") and name.endswith(".jpg")
    assert name == file_name_for_url("https://example.org/pics/Red%20Rose.JPG?size=large")
    assert name != file_name_for_url("https://example.org/pics/Red%20Rose.JPG?size=small")
    assert file_name_for_url("https://example.org/").startswith("image_")
    assert file_name_for_url("https://example.org/a/../..%2F..%2Fetc%2Fpasswd").count("/") == 0
    assert len(file_name_for_url("https://example.org/" + "x" * 500 + ".png")) < 80


# --------------------------------------------------------------------------- install_demo_images
def _make_source(tmp_path: Path) -> Path:
    source = tmp_path / "demo"
    for label, count in (("cats", 2), ("dogs", 1)):
        (source / label).mkdir(parents=True)
        for i in range(count):
            (source / label / f"{label}{i}.jpg").write_bytes(VALID_JPEG)
    (source / "LICENSE.md").write_text("licence")
    (source / "dogs" / "notes.txt").write_text("not an image")
    return source


def test_install_demo_copies_then_skips_and_never_overwrites(tmp_path: Path) -> None:
    source, target = _make_source(tmp_path), tmp_path / "images" / "demo"
    report = install_demo_images(source, target)
    assert (report.copied, report.already_present, report.classes) == (3, 0, ["cats", "dogs"])
    assert [p.relative_to(target).as_posix() for p in _all_files(target)] == [
        "cats/cats0.jpg", "cats/cats1.jpg", "dogs/dogs0.jpg"]
    assert "copied 3 of 3" in report.summary()

    # The user edits one image, deletes another and adds their own: re-running
    # restores the deleted one only and touches nothing else.
    (target / "cats" / "cats0.jpg").write_bytes(b"my edited image")
    (target / "cats" / "cats1.jpg").unlink()
    (target / "cats" / "mine.jpg").write_bytes(b"mine")
    again = install_demo_images(source, target)
    assert (again.copied, again.already_present) == (1, 2)
    assert (target / "cats" / "cats0.jpg").read_bytes() == b"my edited image"
    assert (target / "cats" / "cats1.jpg").read_bytes() == VALID_JPEG
    assert (target / "cats" / "mine.jpg").read_bytes() == b"mine"
    assert not any(p.name.startswith(".") for p in _all_files(target))


def test_install_demo_errors_on_missing_or_empty_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing"):
        install_demo_images(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no demo images"):
        install_demo_images(tmp_path / "empty", tmp_path / "out")


def test_bundled_demo_images_are_class_folders() -> None:
    classes = sorted(p.name for p in DEMO_IMAGES_DIR.iterdir() if p.is_dir())
    assert len(classes) >= 2


# --------------------------------------------------------------------------- read_url_list
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "urls.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_read_url_list_skips_comments_blanks_and_duplicates(tmp_path: Path) -> None:
    path = _write(tmp_path, "\ufeff# header\n\n  \ncat\thttps://e.org/a.jpg\n"
                            " dog \t http://e.org/b.png \t\n# another\ncat\thttps://e.org/a.jpg\r\n")
    assert read_url_list(path) == [("cat", "https://e.org/a.jpg"), ("dog", "http://e.org/b.png")]


@pytest.mark.parametrize(("line", "message"), [
    ("cat https://e.org/a.jpg", "use a TAB"),
    ("\thttps://e.org/a.jpg", "label is empty"),
    ("cat\tftp://e.org/a.jpg", "not an http"),
    ("cat\te.org/a.jpg", "not an http"),
    ("cat\t", "URL is empty"),
    ("../up\thttps://e.org/a.jpg", "dot"),
    (".hidden\thttps://e.org/a.jpg", "dot"),
    ("a/b\thttps://e.org/a.jpg", "not allowed"),
    ("cat\thttps://e.org/a.jpg\textra", "found 3"),
])
def test_read_url_list_names_the_malformed_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path, f"# header\nok\thttps://e.org/ok.jpg\n{line}\n")
    with pytest.raises(UrlListError, match=message) as info:
        read_url_list(path)
    assert "line 3" in str(info.value)


def test_read_url_list_reports_all_bad_lines_and_label_conflicts(tmp_path: Path) -> None:
    path = _write(tmp_path, "cat\thttps://e.org/a.jpg\nbad line\ndog\thttps://e.org/a.jpg\n")
    with pytest.raises(UrlListError) as info:
        read_url_list(path)
    text = str(info.value)
    assert "2 malformed line(s)" in text and "line 2:" in text and "line 3:" in text
    assert "labelled 'dog' here but 'cat' on line 1" in text


def test_read_url_list_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(UrlListError, match="not found"):
        read_url_list(tmp_path / "missing.tsv")
    with pytest.raises(UrlListError, match="no 'label<TAB>url' lines"):
        read_url_list(_write(tmp_path, "# only comments\n\n"))


def test_sample_url_list_is_valid() -> None:
    entries = read_url_list(PROJECT_DIR / "resources" / "sampleImageUrls.tsv")
    assert len(entries) >= 2


def test_resolve_urls_file_falls_back_to_the_parameters_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "u.tsv").write_text("")
    monkeypatch.chdir(PROJECT_DIR)
    assert resolve_urls_file("lists/u.tsv", str(tmp_path / "PARAMETERS.py")) == tmp_path / "lists" / "u.tsv"
    assert resolve_urls_file("nowhere.tsv", str(tmp_path / "PARAMETERS.py")) == Path("nowhere.tsv")


# --------------------------------------------------------------------------- the script
def _run_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run script 0 with an empty parameters file, so the user's PARAMETERS.py cannot change the test."""
    parameters = tmp_path / "PARAMETERS.py"
    parameters.write_text("# defaults only\n")
    env = {**os.environ, "IMGCLASS_PARAMETERS": str(parameters)}
    return subprocess.run([sys.executable, str(SCRIPT), f"--rootDir={tmp_path}", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_script_downloads_a_url_list(server: str, tmp_path: Path) -> None:
    lines = [f"{label}\t{url}" for label, url in _good_entries(server)] + [f"trees\t{server}/missing.jpg"]
    tsv = tmp_path / "urls.tsv"
    tsv.write_text("# test list\n" + "\n".join(lines) + "\n")
    args = ("--datasetName=x", f"--download_urlsFile={tsv}", f"--download_timeoutSeconds={TIMEOUT}",
            f"--download_maxImageSide={MAX_SIDE}")

    guarded = _run_script(tmp_path, *args)  # the test server is on 127.0.0.1: refused by default
    assert guarded.returncode == 0, guarded.stderr
    assert "4 x private address refused" in guarded.stdout and "downloaded 0 of 4" in guarded.stdout

    args += ("--scrape_allowPrivateHosts=True",)
    result = _run_script(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "downloaded 3 of 4" in result.stdout
    assert "1 x HTTP 404" in result.stdout
    images = _all_files(tmp_path / "images" / "x")
    assert len(images) == 3 and all(max(load_rgb(p).size) <= MAX_SIDE for p in images)

    again = _run_script(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert "downloaded 0 of 4 (3 already present, 1 failed)" in again.stdout


def test_script_installs_demo_images_under_another_name(tmp_path: Path) -> None:
    result = _run_script(tmp_path, "--datasetName=mine")
    assert result.returncode == 0, result.stderr
    assert "under the dataset name 'mine'" in result.stdout
    expected = sorted(p.relative_to(DEMO_IMAGES_DIR) for p in DEMO_IMAGES_DIR.glob("*/*.jpg"))
    installed = sorted(p.relative_to(tmp_path / "images" / "mine") for p in _all_files(tmp_path / "images" / "mine"))
    assert installed == expected
    assert f"copied {len(expected)} of {len(expected)}" in result.stdout


def test_script_malformed_list_is_a_clean_error(tmp_path: Path) -> None:
    tsv = tmp_path / "urls.tsv"
    tsv.write_text("cat https://e.org/a.jpg\n")
    result = _run_script(tmp_path, "--datasetName=x", f"--download_urlsFile={tsv}")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "line 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "images").exists()


def test_script_help_and_unknown_parameter(tmp_path: Path) -> None:
    help_run = _run_script(tmp_path, "--help")
    assert help_run.returncode == 0
    assert "download_urlsFile" in help_run.stdout and "Step 0" in help_run.stdout

    unknown = _run_script(tmp_path, "--foo=1")
    assert unknown.returncode == 2
    assert "error:" in unknown.stderr and "foo" in unknown.stderr
    assert "Traceback" not in unknown.stderr
