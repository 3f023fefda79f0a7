"""Benchmark of the REST service (step 6): latency and throughput next to the bare model.

Measures, on the trained model of datasetName (run `make demo` first):

1. the bare model in this process: ``Predictor.predict([image])`` on one
   decoded image (transform + forward + classifier), and decode + predict
   from the JPEG bytes;
2. the service, started as a separate process (scripts/6_deploy.py) on a free
   loopback port so that this client does not share its interpreter:
   single-image ``POST /score`` and ``POST /predict`` (multipart) one request
   at a time (latency p50/p95, and the server's own executionTimeMs), then
   ``/score`` from ``--concurrency`` client threads (throughput).

Usage::

    python benchmarks/serving.py [--requests=200] [--concurrency=4] [--key=value parameter overrides]

Prints a Markdown table (BENCHMARKS.md, section "Serving (issue 4)").
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import sys
from pathlib import Path
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
import torch

from imgclass.io.images import decode_image_bytes, load_rgb
from imgclass.layout import DatasetLayout
from imgclass.parameters import parse_command_line
from imgclass.serve.predictor import load_predictor
from imgclass.serve.process import start_service

PROJECT_DIR = Path(__file__).resolve().parents[1]

IMAGE = PROJECT_DIR / "resources" / "demoImages" / "mammals" / "bovines_cow.jpg"


def percentiles(values_ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(values_ms, 50)), float(np.percentile(values_ms, 95))


def time_calls(call, repeats: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times






def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads for the throughput run")
    args, overrides = parser.parse_known_args(argv)
    load_before = os.getloadavg()[0]
    params = parse_command_line(overrides, ["datasetName", "rootDir"], __doc__)
    overrides = [f"--parametersFile={params.parametersFile}", *overrides]
    layout = DatasetLayout.from_parameters(params)
    data = IMAGE.read_bytes()

    # The bare model here, the service in its own process; their sequential
    # measurements are interleaved in blocks so that both see the same load.
    predictor = load_predictor(layout, "cpu", params.run_precision)
    draft = predictor.transform.draft_size
    image = load_rgb(IMAGE, draft_size=draft)
    info = predictor.featurizer.describe()
    os.environ.pop("IMGCLASS_API_KEY", None)  # the requests carry no key: the service must not ask for one
    service = start_service(extra_args=[*overrides, "--run_device=cpu"])
    url = service.url
    try:
        score_body = {"input_df": [{"image base64 string": base64.b64encode(data).decode("ascii")}]}
        server_ms: list[float] = []
        with requests.Session() as session:
            def score() -> None:
                response = session.post(f"{url}/score", json=score_body, timeout=60)
                response.raise_for_status()
                server_ms.append(response.json()["executionTimeMs"])

            def predict() -> None:
                response = session.post(f"{url}/predict", files=[("images", (IMAGE.name, data, "image/jpeg"))],
                                        timeout=60)
                response.raise_for_status()

            # The server runs the model in worker threads; so does the bare measurement (on a
            # shared, busy CPU the main thread was measured several times slower than a worker).
            worker = ThreadPoolExecutor(1)
            calls = {"bare": lambda: worker.submit(predictor.predict, [image]).result(),
                     "bare_decode": lambda: worker.submit(
                         lambda: predictor.predict([decode_image_bytes(data, draft_size=draft)])).result(),
                     "score": score, "predict": predict}
            for call in calls.values():  # warm-up: the first forward passes are slow
                time_calls(call, 0, warmup=20)
            server_ms.clear()
            times: dict[str, list[float]] = {name: [] for name in calls}
            blocks = 10
            for _ in range(blocks):
                for name, call in calls.items():
                    times[name] += time_calls(call, max(1, args.requests // blocks), warmup=1)
            server_ms = server_ms[-len(times["score"]):]
            worker.shutdown()
        bare, bare_decode, single, multipart = (times[n] for n in ("bare", "bare_decode", "score", "predict"))

        local = threading.local()
        loaded: list[float] = []
        lock = threading.Lock()

        def one_request(_: int) -> None:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            start = time.perf_counter()
            response = session.post(f"{url}/score", json=score_body, timeout=120)
            response.raise_for_status()
            with lock:
                loaded.append((time.perf_counter() - start) * 1000.0)

        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one_request, range(args.concurrency * 2)))  # warm-up
            loaded.clear()
            start = time.perf_counter()
            list(pool.map(one_request, range(args.requests)))
            wall = time.perf_counter() - start
    finally:
        service.stop(timeout=30)

    cpu = platform.processor() or platform.machine()
    print(f"Model {layout.dataset}: {info['backbone']} at {info['resolution']} px + SVM; image {IMAGE.name} "
          f"({len(data)} bytes); {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; {args.requests} requests per row; 1-min load average "
          f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (other work on the machine "
          f"inflates the numbers, p95 most)\n")
    print("| measurement | p50 (ms) | p95 (ms) |")
    print("|---|---|---|")
    rows = [("bare model: `Predictor.predict([image])`, decoded image", bare),
            ("bare model: decode JPEG bytes + predict", bare_decode),
            ("`POST /score`, 1 image, sequential: round trip", single),
            ("`POST /score`, 1 image, sequential: server `executionTimeMs`", server_ms),
            ("`POST /predict` multipart, 1 image, sequential: round trip", multipart),
            (f"`POST /score`, 1 image, concurrency {args.concurrency}: round trip", loaded)]
    for name, values in rows:
        p50, p95 = percentiles(values)
        print(f"| {name} | {p50:.1f} | {p95:.1f} |")
    overhead = statistics.median(single) - statistics.median(bare_decode)
    print(f"\nThroughput at concurrency {args.concurrency}: {args.requests / wall:.1f} requests/s "
          f"({args.requests} requests in {wall:.1f} s); sequential: {1000 / statistics.median(single):.1f} "
          f"requests/s. Service overhead over bare decode + predict (p50): {overhead:.1f} ms.")


if __name__ == "__main__":
    main(sys.argv[1:])
