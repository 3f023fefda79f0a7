"""Load and soak benchmark of the REST service (issue 12): valid requests mixed with hostile ones.

Starts the real service (scripts/6_deploy.py, the trained model of datasetName: run `make demo` first) on a
free loopback port and sends requests from ``--concurrency`` client threads for ``--seconds``: valid
single-image requests (``/predict`` multipart and ``/score`` JSON, demo photos), and a ``--hostile``
fraction of hostile ones that must be refused cheaply (decompression bombs, a GIF frame bomb, a JPEG
declaring 900 MP, a million-item JSON list, JSON nested 200,000 deep, more images than allowed, thousands of
multipart files). While it runs, the server's memory (VmRSS, VmHWM of /proc/<pid>/status) is sampled.

Stops by itself: the run takes ``--seconds`` (at most 170) plus the server's start, about 3 minutes in all.
All traffic stays on 127.0.0.1.

Usage::

    python benchmarks/load.py [--seconds=150] [--concurrency=8] [--hostile=0.1] [--key=value parameter overrides]

Prints a Markdown table (BENCHMARKS.md, section "Load and soak with hostile requests (issue 12)").
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import requests

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEMO_IMAGES = PROJECT_DIR / "resources" / "demoImages"
sys.path.insert(0, str(PROJECT_DIR / "tests"))
from test_images import gif_frame_bomb, jpeg_declaring, png_bomb  # noqa: E402  (the crafted files of the tests)

#: most seconds the request loop may run, so that the whole benchmark ends within about 3 minutes
MAX_SECONDS = 170




def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]




@dataclass(frozen=True)
class Call:
    kind: str
    status: int
    milliseconds: float


def valid_requests(url: str) -> list[tuple[str, Callable[[requests.Session], requests.Response]]]:
    photos = sorted(DEMO_IMAGES.glob("*/*.jpg"))[::8][:12]

    def multipart(path: Path) -> Callable[[requests.Session], requests.Response]:
        data = path.read_bytes()
        return lambda s: s.post(f"{url}/predict", files=[("images", (path.name, data, "image/jpeg"))], timeout=60)

    def score(path: Path) -> Callable[[requests.Session], requests.Response]:
        body = {"input_df": [{"image base64 string": base64.b64encode(path.read_bytes()).decode()}]}
        return lambda s: s.post(f"{url}/score", json=body, timeout=60)

    return [(f"valid {name}", make(p)) for p in photos for name, make in (("/predict", multipart), ("/score", score))]


def hostile_requests(url: str, max_images: int) -> list[tuple[str, Callable[[requests.Session], requests.Response]]]:
    bomb = png_bomb(13000, 13000)
    gif = gif_frame_bomb(9000, 9000)
    huge_jpeg = jpeg_declaring(30000, 30000)
    zeros = b'{"images": [' + b",".join([b"0"] * 1_000_000) + b"]}"
    deep = b'{"images": ' + b"[" * 200_000
    tiny = base64.b64encode(jpeg_declaring(16, 16)).decode()
    too_many = json.dumps({"images": [tiny] * (max_images + 1)}).encode()
    json_headers = {"Content-Type": "application/json"}

    def files(*items: tuple[str, bytes]) -> list:
        return [("images", (name, data, "application/octet-stream")) for name, data in items]

    return [
        ("hostile PNG bombs", lambda s: s.post(f"{url}/predict", files=files(*[("b.png", bomb)] * 3), timeout=60)),
        ("hostile GIF frame", lambda s: s.post(f"{url}/predict", files=files(("f.gif", gif)), timeout=60)),
        ("hostile 900 MP JPEG", lambda s: s.post(f"{url}/predict", files=files(("j.jpg", huge_jpeg)), timeout=60)),
        ("hostile 1M-item JSON", lambda s: s.post(f"{url}/predict", data=zeros, headers=json_headers, timeout=60)),
        ("hostile deep JSON", lambda s: s.post(f"{url}/score", data=deep, headers=json_headers, timeout=60)),
        ("hostile too many images", lambda s: s.post(f"{url}/predict", data=too_many, headers=json_headers,
                                                     timeout=60)),
        ("hostile 3000 files", lambda s: s.post(f"{url}/predict", files=files(*[("x.png", b"x")] * 3000),
                                                timeout=60)),
    ]


def run_load(url: str, pid: int, seconds: float, concurrency: int, hostile_fraction: float,
             max_images: int) -> tuple[list[Call], list[tuple[float, float, float]]]:
    """Send requests for ``seconds`` from ``concurrency`` threads; sample the server's memory meanwhile."""
    valid, hostile = valid_requests(url), hostile_requests(url, max_images)
    deadline = time.monotonic() + seconds
    samples: list[tuple[float, float, float]] = []
    done = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not done.is_set():
            rss, hwm = memory_mb(pid)
            samples.append((time.monotonic() - start, rss, hwm))
            done.wait(0.5)

    def client(seed: int) -> list[Call]:
        rng = random.Random(seed)
        calls = []
        with requests.Session() as session:
            while time.monotonic() < deadline:
                kind, send = rng.choice(hostile if rng.random() < hostile_fraction else valid)
                start = time.perf_counter()
                try:
                    status = send(session).status_code
                except requests.RequestException:
                    status = 0  # the connection failed: counted apart from any HTTP status
                calls.append(Call(kind, status, (time.perf_counter() - start) * 1000.0))
        return calls

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        calls = [call for result in pool.map(client, range(concurrency)) for call in result]
    done.set()
    sampler.join()
    return calls, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--hostile", type=float, default=0.1, help="fraction of hostile requests")
    args, overrides = parser.parse_known_args()
    from imgclass.parameters import parse_command_line
    from imgclass.serve.process import start_service

    params = parse_command_line(overrides)
    seconds = min(args.seconds, MAX_SECONDS)
    os.environ.pop("IMGCLASS_API_KEY", None)  # the requests carry no key: the service must not ask for one
    service = start_service(extra_args=[*overrides, "--run_device=cpu"])
    url, pid = service.url, service.process.pid
    try:
        with requests.Session() as session:  # a few valid requests first: the start RSS is a served model's
            for _, send in valid_requests(url)[:6]:
                send(session).raise_for_status()
        rss_start, _ = memory_mb(pid)
        calls, samples = run_load(url, pid, seconds, args.concurrency, args.hostile,
                                  params.deploy_maxImages)
        time.sleep(2.0)
        rss_end, hwm = memory_mb(pid)
    finally:
        service.stop(timeout=30)

    valid = [c for c in calls if c.kind.startswith("valid")]
    hostile = [c for c in calls if c.kind.startswith("hostile")]
    latencies = [c.milliseconds for c in valid if c.status == 200]
    thirds = np.array_split(np.array([rss for _, rss, _ in samples]), 3)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {seconds:.0f} s, "
          f"concurrency {args.concurrency}, {args.hostile:.0%} hostile; model of {params.datasetName}\n")
    print("| measure | value |\n|---|---|")
    print(f"| requests | {len(calls)} ({len(valid)} valid, {len(hostile)} hostile; "
          f"{len(calls) / seconds:.1f}/s) |")
    print(f"| 5xx responses | {sum(500 <= c.status < 600 for c in calls)} |")
    print(f"| failed connections | {sum(c.status == 0 for c in calls)} |")
    print(f"| valid requests answered 200 | {len(latencies)} of {len(valid)} |")
    print(f"| valid latency p50 / p99 | {np.percentile(latencies, 50):.0f} / {np.percentile(latencies, 99):.0f} ms |")
    print(f"| server RSS start / peak (VmHWM) / end | {rss_start:.0f} / {hwm:.0f} / {rss_end:.0f} MB |")
    print(f"| server RSS median per third of the run | "
          f"{' / '.join(f'{statistics.median(part):.0f}' for part in thirds)} MB |")
    print("\n| request kind | count | statuses | p50 ms |\n|---|---|---|---|")
    for kind in sorted({c.kind for c in calls}):
        group = [c for c in calls if c.kind == kind]
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(Counter(c.status for c in group).items()))
        print(f"| {kind} | {len(group)} | {statuses} | "
              f"{np.percentile([c.milliseconds for c in group], 50):.0f} |")


if __name__ == "__main__":
    main()
