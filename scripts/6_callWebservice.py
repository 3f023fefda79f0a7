"""Step 6 (client): send an image to the running service's /score, print the label and scores.

Like the original tutorial's client: the image is sent base64-encoded in
{"input_df": [{"image base64 string": ...}]}; the request is repeated
deploy_clientRepeats times and the total round-trip time is printed next to
the server's own compute time (executionTimeMs), so the HTTP and encoding
overhead is visible. Start the service first (scripts/6_deploy.py). If the
environment variable IMGCLASS_API_KEY is set, it is sent as a Bearer token.
"""

import base64
import os
import statistics
import sys
import time
from pathlib import Path

import requests

from imgclass.cli import run_main
from imgclass.errors import ImgClassError
from imgclass.parameters import parse_command_line

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]

USED = ["deploy_url", "deploy_host", "deploy_port", "deploy_clientImage", "deploy_clientRepeats"]
#: Sent when deploy_clientImage is '': a demo image (relative to resources/demoImages/) every model
#: trained on the demo data knows.
DEFAULT_IMAGE = "mammals/bovines_cow.jpg"


def main(argv: list[str]) -> int:
    params = parse_command_line(argv, USED, __doc__, project_dir=PROJECT_DIR)
    url = (params.deploy_url or f"http://{params.deploy_host}:{params.deploy_port}").rstrip("/") + "/score"
    image_path = Path(params.deploy_clientImage).expanduser() if params.deploy_clientImage else params.demo_images_dir / DEFAULT_IMAGE
    if not image_path.is_file():
        raise ImgClassError(f"image not found: {image_path}")
    payload = {"input_df": [{"image base64 string": base64.b64encode(image_path.read_bytes()).decode("ascii")}]}
    api_key = os.environ.get("IMGCLASS_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    print(f"Sending {image_path} ({image_path.stat().st_size} bytes) to {url} "
          f"{params.deploy_clientRepeats} time(s)")
    round_trips, server_times = [], []
    with requests.Session() as session:
        for _ in range(params.deploy_clientRepeats):
            start = time.perf_counter()
            try:
                response = session.post(url, json=payload, headers=headers, timeout=60)
            except requests.RequestException as exc:
                raise ImgClassError(f"cannot reach {url}: {exc} (is scripts/6_deploy.py running?)") from exc
            round_trips.append((time.perf_counter() - start) * 1000.0)
            if response.status_code != 200:
                try:
                    detail = response.json().get("detail", response.text)
                except ValueError:
                    detail = response.text
                print(f"error: HTTP {response.status_code}: {detail}", file=sys.stderr)
                return 1
            result = response.json()
            server_times.append(float(result["executionTimeMs"]))

    print(f"label: {result['label']}  (score {result['score']:.3f})")
    id2labels = result["Id2Labels"]
    for class_id, score in sorted(enumerate(result["allScores"]), key=lambda item: -item[1]):
        print(f"  {id2labels[str(class_id)]:<20s} {score:.4f}")
    total, compute = sum(round_trips), sum(server_times)
    print(f"{len(round_trips)} request(s): total round trip {total:.1f} ms "
          f"(median {statistics.median(round_trips):.1f} ms), server compute {compute:.1f} ms "
          f"(median {statistics.median(server_times):.1f} ms); overhead {total - compute:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
