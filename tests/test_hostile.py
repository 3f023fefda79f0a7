"""Hostile input against the REAL service (issue 12): scripts/6_deploy.py as a subprocess on 127.0.0.1.

A tiny model is trained once per session (random ResNet-18 at 32 px, two classes: the model's answers do
not matter here, the service's behaviour does) and served with small limits, as a user would run it, with
an API key. Each class of attack from the issue is sent while ``/health`` is polled; for each class the
test asserts the status codes, that ``/health`` answered every time in < 0.5 s, and that the server's peak
memory (VmHWM of /proc/<pid>/status) grew by < 300 MB. All traffic stays on the loopback interface.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from conftest import make_dataset
from test_images import gif_frame_bomb, jpeg_bytes, jpeg_declaring, png_bomb

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEPLOY = PROJECT_DIR / "scripts" / "6_deploy.py"
API_KEY = "hostile-test-key-5c1d7e"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: the service's limits in this module: small, so that the timeouts take seconds, not minutes
LIMITS = {"deploy_maxImages": 4, "deploy_maxConnections": 12, "deploy_headerTimeoutSeconds": 1.0,
          "deploy_bodyTimeoutSeconds": 2.0, "deploy_keepAliveSeconds": 1, "images_maxPixels": 40_000_000}
MAX_HEALTH_SECONDS = 0.5
MAX_PEAK_GROWTH_MB = 300.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")


# --------------------------------------------------------------------------- a tiny trained model, a real server
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Train a tiny model once per test session: ``(root, parameters file)`` (shared with tests/test_api_fuzz.py).

    Steps 1-4 run in this process on generated images (random ResNet-18 weights at 32 px: seconds).
    """
    from imgclass.parameters import load_parameters
    from imgclass.pipeline import build_featurizer, featurize_dataset, prepare_data, train_classifier

    root = tmp_path_factory.getbasetemp() / "tiny_hostile_model"
    params_file = root / "PARAMETERS_TINY.py"
    done = root / "DONE"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        values = {"rootDir": str(root), "datasetName": "tiny", "rf_pretrainedModelFilename": "resnet18",
                  "rf_inputResolution": 32, "svm_cvFolds": 2, "svm_nJobs": 1, "svm_CVals": [0.1, 1.0],
                  "run_workers": 0}
        params_file.write_text("".join(f"{key} = {value!r}\n" for key, value in values.items()))
        params = load_parameters(parameters_file=params_file)
        make_dataset(root / "images" / "tiny", {"plain": 6, "spotted": 6}, size=(48, 36))
        prepare_data(params)
        build_featurizer(params, pretrained=False, progress=False)
        featurize_dataset(params, progress=False)
        train_classifier(params)
        done.write_text("ok\n")
    return root, params_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    port: int
    process: subprocess.Popen
    log: Path

    def _status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def peak_mb(self) -> float:
        return self._status_kb("VmHWM") / 1024

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS") / 1024


def start_server(params_file: Path, log: Path, extra: dict[str, Any] | None = None) -> RunningServer:
    """scripts/6_deploy.py with ``LIMITS`` (and ``extra``) on a free loopback port, once /health answers."""
    port = free_port()
    overrides = [f"--{key}={value}" for key, value in {**LIMITS, **(extra or {})}.items()]
    env = {**os.environ, "IMGCLASS_PARAMETERS": str(params_file), "IMGCLASS_API_KEY": API_KEY}
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, str(DEPLOY), f"--parametersFile={params_file}",
                                    "--deploy_host=127.0.0.1", f"--deploy_port={port}", "--run_device=cpu",
                                    *overrides], stdout=handle, stderr=subprocess.STDOUT, env=env)
    server = RunningServer(f"http://127.0.0.1:{port}", port, process, log)
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the service did not start:\n{log.read_text()}")
        time.sleep(0.2)


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    _, params_file = tiny_model(tmp_path_factory)
    running = start_server(params_file, tmp_path_factory.mktemp("hostile") / "server.log")
    try:
        yield running
    finally:
        stop_server(running)


# --------------------------------------------------------------------------- the harness
@dataclass
class Attack:
    result: Any
    worst_health_seconds: float
    health_calls: int
    peak_growth_mb: float


def under_attack(server: RunningServer, attack: Callable[[], Any]) -> Attack:
    """Run ``attack`` in a thread while polling ``/health``; then check the class's two promises."""
    peak_before = server.peak_mb()
    worst, calls = 0.0, 0
    with ThreadPoolExecutor(max_workers=1) as pool, requests.Session() as session:
        future = pool.submit(attack)
        while not future.done() or calls < 2:
            start = time.perf_counter()
            response = session.get(f"{server.url}/health", timeout=10)
            worst = max(worst, time.perf_counter() - start)
            calls += 1
            assert response.status_code == 200, response.text
            time.sleep(0.05)
        result = future.result()
    attack_report = Attack(result, worst, calls, server.peak_mb() - peak_before)
    assert attack_report.worst_health_seconds < MAX_HEALTH_SECONDS, attack_report
    assert attack_report.peak_growth_mb < MAX_PEAK_GROWTH_MB, attack_report
    assert server.process.poll() is None, "the service died"
    return attack_report


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def predict_files(server: RunningServer, *files: tuple[str, bytes], headers: dict | None = None) -> requests.Response:
    return requests.post(f"{server.url}/predict", headers=AUTH if headers is None else headers, timeout=60,
                         files=[("images", (name, data, "application/octet-stream")) for name, data in files])


def post_json(server: RunningServer, path: str, body: bytes) -> requests.Response:
    return requests.post(f"{server.url}{path}", data=body, timeout=60,
                         headers={**AUTH, "Content-Type": "application/json"})


def raw_socket(server: RunningServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_until_closed(sock: socket.socket, limit_seconds: float) -> tuple[bytes, float | None]:
    """Everything the server sends until it closes the connection, and after how many seconds (None: it did not)."""
    start = time.monotonic()
    received = b""
    while time.monotonic() - start < limit_seconds:
        sock.settimeout(max(0.05, limit_seconds - (time.monotonic() - start)))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            break
        except ConnectionResetError:
            return received, time.monotonic() - start
        if not chunk:
            return received, time.monotonic() - start
        received += chunk
    return received, None


def drip(sock: socket.socket, data: bytes, interval: float, stop: threading.Event) -> None:
    """Send ``data`` one byte every ``interval`` seconds until it is sent, ``stop`` is set or the server hangs up."""
    for byte in data:
        if stop.wait(interval):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


# --------------------------------------------------------------------------- 1. decompression bombs
def test_bombs_are_refused_from_their_header_with_400(server: RunningServer) -> None:
    bomb = png_bomb(13000, 13000)  # 27 KB in the issue; 169 million pixels once inflated

    def attack() -> list[requests.Response]:
        return [
            predict_files(server, ("a.png", bomb), ("b.png", bomb), ("c.png", bomb)),
            post_json(server, "/score", json.dumps(
                {"input_df": [{"image base64 string": b64(gif_frame_bomb(9000, 9000))}]}).encode()),
            post_json(server, "/predict", json.dumps({"images": [b64(jpeg_declaring(30000, 30000))]}).encode()),
            post_json(server, "/predict", json.dumps(
                {"images": [b64(jpeg_declaring(12000, 12000, progressive=True))]}).encode()),
        ]

    report = under_attack(server, attack)
    multipart, gif, huge_jpeg, progressive = report.result
    for response in report.result:
        assert response.status_code == 400, response.text
    assert "a.png" in multipart.json()["detail"] and "over the limit of 40.0 MP" in multipart.json()["detail"]
    assert "9000x9000" in gif.json()["detail"]
    assert "decompression bomb" in huge_jpeg.json()["detail"]
    assert "12000x12000" in progressive.json()["detail"]


# --------------------------------------------------------------------------- 2. thread safety of the bomb checks
def test_after_a_burst_of_concurrent_bombs_large_images_still_work(server: RunningServer) -> None:
    """A per-call warnings.catch_warnings() once left an 'error' filter behind: a later large image got a 500."""
    inputs = [("bomb.png", png_bomb(13000, 13000)), ("warned.jpg", jpeg_declaring(9500, 9500)),
              ("frame.gif", gif_frame_bomb(60000, 60000)), ("ok.jpg", jpeg_bytes((64, 48)))] * 6

    def attack() -> tuple[list[int], requests.Response, requests.Response]:
        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(lambda item: predict_files(server, item).status_code, inputs))
        # above Pillow's warning threshold (89.5 MP in the header), 1.4 MP as decoded at 1/8 scale
        warned = predict_files(server, ("warned.jpg", jpeg_declaring(9500, 9500)))
        large = predict_files(server, ("large.png", png_bomb(6000, 5000)))  # 30 MP: within the budget
        return statuses, warned, large

    report = under_attack(server, attack)
    statuses, warned, large = report.result
    assert statuses == [400, 200, 400, 200] * 6
    assert warned.status_code == 200, warned.text
    assert large.status_code == 200 and large.json()["predictions"][0]["filename"] == "large.png", large.text


# --------------------------------------------------------------------------- 3. work on the event loop
def test_big_or_deep_json_is_refused_without_blocking_the_server(server: RunningServer) -> None:
    million_zeros = b'{"images": [' + b",".join([b"0"] * 1_000_000) + b"]}"  # 2 MB
    deep = b'{"images": ' + b"[" * 200_000
    long_number = b'{"images": [' + b"7" * 1_000_000 + b"]}"
    spaces = b'{"images": ["' + b" " * 2_000_000 + b'"]}'

    def attack() -> list[requests.Response]:
        many_files = predict_files(server, *[(f"{i}.png", b"x") for i in range(3000)])
        return [post_json(server, "/predict", million_zeros), post_json(server, "/score", million_zeros),
                post_json(server, "/predict", deep), post_json(server, "/predict", long_number),
                post_json(server, "/predict", spaces), many_files]

    start = time.perf_counter()
    report = under_attack(server, attack)
    zeros, zeros_score, nested, number, blank, files = report.result
    assert time.perf_counter() - start < 10  # a million-item list took 4.9 s to refuse
    assert zeros.status_code == 413 and "more than" in zeros.json()["detail"], zeros.text
    assert zeros_score.status_code == 413
    assert nested.status_code == 400 and "nested too deeply" in nested.json()["detail"], nested.text
    assert number.status_code == 400 and "not valid JSON" in number.json()["detail"], number.text
    assert blank.status_code == 400 and "empty" in blank.json()["detail"], blank.text
    assert files.status_code == 413 and "limit is 4" in files.json()["detail"], files.text


def test_five_images_where_four_are_allowed_is_413_before_any_is_decoded(server: RunningServer) -> None:
    bomb = b64(png_bomb(13000, 13000))
    response = post_json(server, "/predict", json.dumps({"images": [bomb] * 5}).encode())
    assert response.status_code == 413 and "limit is 4" in response.json()["detail"]


# --------------------------------------------------------------------------- 4. slow and idle connections
def test_idle_and_dripping_connections_are_closed_and_slow_bodies_get_408(server: RunningServer) -> None:
    header_timeout, body_timeout = LIMITS["deploy_headerTimeoutSeconds"], LIMITS["deploy_bodyTimeoutSeconds"]
    stop = threading.Event()

    def attack() -> dict[str, tuple[bytes, float | None]]:
        idle = [raw_socket(server) for _ in range(2)]
        head = raw_socket(server)
        head.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        body = raw_socket(server)
        body.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 100000\r\n\r\n")
        drippers = [threading.Thread(target=drip, args=(head, b"X-Slow: " + b"a" * 200, 0.2, stop)),
                    threading.Thread(target=drip, args=(body, b'{"images": ["' + b"A" * 200, 0.2, stop))]
        for thread in drippers:
            thread.start()
        with ThreadPoolExecutor(max_workers=4) as pool:
            waits = {"idle0": pool.submit(read_until_closed, idle[0], header_timeout + 3),
                     "idle1": pool.submit(read_until_closed, idle[1], header_timeout + 3),
                     "head": pool.submit(read_until_closed, head, header_timeout + 3),
                     "body": pool.submit(read_until_closed, body, body_timeout + 3)}
            results = {name: future.result() for name, future in waits.items()}
        stop.set()
        for thread in drippers:
            thread.join()
        for sock in [*idle, head, body]:
            sock.close()
        return results

    report = under_attack(server, attack)
    for name in ("idle0", "idle1", "head"):
        data, closed_after = report.result[name]
        assert closed_after is not None and closed_after < header_timeout + 1.5, (name, report.result[name])
    data, closed_after = report.result["body"]
    assert data.startswith(b"HTTP/1.1 408"), data
    assert closed_after is not None and closed_after < body_timeout + 1.5


def test_a_connection_flood_gets_503_until_the_idle_connections_time_out(server: RunningServer) -> None:
    peak_before = server.peak_mb()
    flood = [raw_socket(server) for _ in range(LIMITS["deploy_maxConnections"])]
    try:
        time.sleep(0.2)
        assert requests.get(f"{server.url}/health", timeout=10).status_code == 503
        time.sleep(LIMITS["deploy_headerTimeoutSeconds"] + 0.5)  # the idle ones are closed by then
        start = time.perf_counter()
        assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
        assert time.perf_counter() - start < MAX_HEALTH_SECONDS
    finally:
        for sock in flood:
            sock.close()
    assert server.peak_mb() - peak_before < MAX_PEAK_GROWTH_MB


def test_oversized_bodies_are_refused_by_length_and_while_streaming(server: RunningServer) -> None:
    def attack() -> tuple[bytes, requests.Response]:
        sock = raw_socket(server)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 10000000000\r\n\r\n")
        declared, _ = read_until_closed(sock, 10)
        sock.close()

        def chunks() -> Iterator[bytes]:
            yield b'{"images": ["'
            for _ in range(2100):
                yield b"A" * 10_000  # 21 MB in all, no Content-Length
        streamed = requests.post(f"{server.url}/predict", data=chunks(), timeout=60,
                                 headers={**AUTH, "Content-Type": "application/json"})
        return declared, streamed

    declared, streamed = under_attack(server, attack).result
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert streamed.status_code == 413


# --------------------------------------------------------------------------- 7. keys in query strings
def test_only_the_authorization_header_is_read_and_query_strings_never_reach_the_log(server: RunningServer) -> None:
    in_url = requests.get(f"{server.url}/labels", params={"api_key": API_KEY}, timeout=30)
    assert in_url.status_code == 401  # a key in the URL is not a key
    secret = "query-secret-0b9e4f"
    assert requests.get(f"{server.url}/labels", params={"token": secret}, headers=AUTH, timeout=30).status_code == 200
    time.sleep(0.2)
    log = server.log.read_text()
    assert '"GET /labels?<redacted> HTTP/1.1" 401' in log and '"GET /labels?<redacted> HTTP/1.1" 200' in log
    assert API_KEY not in log and secret not in log


def test_the_server_is_still_well_and_says_what_its_limits_are(server: RunningServer) -> None:
    response = predict_files(server, ("ok.jpg", jpeg_bytes((64, 48))))
    assert response.status_code == 200, response.text
    log = server.log.read_text()
    assert "12 connections, headers within 1 s, bodies within 2 s" in log
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
