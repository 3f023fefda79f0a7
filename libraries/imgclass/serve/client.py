"""The service's client: send images to a running service's ``/score`` in the original tutorial's format.

What ``scripts/6_callWebservice.py``, the deploy notebook and the tests use. Light to import (requests
only), so a client needs neither torch nor FastAPI.
"""

from __future__ import annotations

import base64
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from imgclass.errors import ImgClassError
from imgclass.parameters import Parameters, StepSpec

#: Environment variable holding the API key; unset or empty = no key required (server) / sent (client).
API_KEY_ENV = "IMGCLASS_API_KEY"
#: The original client's field name for a base64 image in each ``input_df`` row.
SCORE_IMAGE_FIELD = "image base64 string"
#: Sent when deploy_clientImage is '': a demo image (relative to resources/demoImages/) every model
#: trained on the demo data knows.
DEFAULT_CLIENT_IMAGE = "mammals/bovines_cow.jpg"

STEP = StepSpec("call", "scripts/6_callWebservice.py", "send an image to the running service and print its answer",
                ("deploy_url", "deploy_host", "deploy_port", "deploy_clientImage", "deploy_clientRepeats"))


class ServiceError(ImgClassError):
    """The service did not start, or a request to it failed."""


def api_key_headers(api_key: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer <key>`` from ``api_key`` or ``$IMGCLASS_API_KEY``; {} when there is none."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def score_request(image_bytes: bytes) -> dict[str, Any]:
    """The original tutorial's ``/score`` request body for one image."""
    return {"input_df": [{SCORE_IMAGE_FIELD: base64.b64encode(image_bytes).decode("ascii")}]}


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        return response.text


def post_score(url: str, payload: dict[str, Any], api_key: str | None = None, timeout: float = 60.0,
               session: requests.Session | None = None) -> dict[str, Any]:
    """POST ``payload`` to ``<url>/score``; the JSON answer, or :class:`ServiceError` naming the problem."""
    endpoint = f"{url.rstrip('/')}/score"
    try:
        response = (session or requests).post(endpoint, json=payload, headers=api_key_headers(api_key),
                                              timeout=timeout)
    except requests.RequestException as exc:
        raise ServiceError(f"cannot reach {endpoint}: {exc} (is the service running?)") from exc
    if response.status_code != 200:
        raise ServiceError(f"HTTP {response.status_code} from {endpoint}: {_detail(response)}")
    return response.json()


def score_image(url: str, image_path: str | os.PathLike[str], api_key: str | None = None,
                timeout: float = 60.0) -> dict[str, Any]:
    """Send one image file to ``<url>/score`` as the original tutorial's client did; return the JSON answer.

    The answer has ``label``, ``score`` (its probability), ``allScores`` (one
    probability per class id), ``Id2Labels`` and ``executionTimeMs``.
    """
    return post_score(url, score_request(Path(image_path).read_bytes()), api_key, timeout)


@dataclass
class ClientReport:
    """The answer to the last request and the timings of all of them."""

    url: str
    image: Path
    answer: dict[str, Any]
    round_trips_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"label: {self.answer['label']}  (score {self.answer['score']:.3f})"]
        id2labels = self.answer["Id2Labels"]
        for class_id, score in sorted(enumerate(self.answer["allScores"]), key=lambda item: -item[1]):
            lines.append(f"  {id2labels[str(class_id)]:<20s} {score:.4f}")
        total, compute = sum(self.round_trips_ms), sum(self.server_ms)
        lines.append(f"{len(self.round_trips_ms)} request(s): total round trip {total:.1f} ms "
                     f"(median {statistics.median(self.round_trips_ms):.1f} ms), server compute {compute:.1f} ms "
                     f"(median {statistics.median(self.server_ms):.1f} ms); overhead {total - compute:.1f} ms")
        return "\n".join(lines)


def client_image(params: Parameters) -> Path:
    """The image the client sends: ``deploy_clientImage``, or a bundled demo image."""
    path = Path(params.deploy_clientImage).expanduser() if params.deploy_clientImage \
        else params.demo_images_dir / DEFAULT_CLIENT_IMAGE
    if not path.is_file():
        raise ImgClassError(f"image not found: {path}")
    return path


def service_url(params: Parameters) -> str:
    """``deploy_url``, or the address the service listens on (``deploy_host``:``deploy_port``)."""
    return (params.deploy_url or f"http://{params.deploy_host}:{params.deploy_port}").rstrip("/")


def call_service(params: Parameters, image: Path, api_key: str | None = None) -> ClientReport:
    """Send ``image`` to the service ``deploy_clientRepeats`` times (timing each); the last answer."""
    url = service_url(params)
    payload = score_request(image.read_bytes())
    report = ClientReport(url, image, {})
    with requests.Session() as session:
        for _ in range(params.deploy_clientRepeats):
            start = time.perf_counter()
            report.answer = post_score(url, payload, api_key, session=session)
            report.round_trips_ms.append((time.perf_counter() - start) * 1000.0)
            report.server_ms.append(float(report.answer["executionTimeMs"]))
    return report
