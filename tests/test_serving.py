"""Tests of imgclass.serve.app and scripts 6: the real server over HTTP on a free loopback port.

A model is trained once per session with the real pipeline (scripts 0-4 on
the bundled demo images, EfficientNet-Lite0 at 128 px); :func:`train_demo_model`
is shared with tests/test_batch_scoring.py and tests/test_web_page.py. All
traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import requests
from PIL import Image

from imgclass.io.images import list_image_files, load_rgb
from imgclass.layout import DatasetLayout
from imgclass.parameters import DEMO_DATASET_NAME, load_parameters
from imgclass.model.predictor import Predictor
from imgclass.serve.predictor import load_predictor
from imgclass.serve.app import API_KEY_ENV, ServiceSettings, create_app, serve_in_background

PROJECT_DIR = Path(__file__).resolve().parents[1]
SCRIPTS = PROJECT_DIR / "scripts"
DEMO_IMAGES = PROJECT_DIR / "resources" / "demoImages"
#: The image the client script sends by default; the demo model calls it 'mammals'.
COW = DEMO_IMAGES / "mammals" / "bovines_cow.jpg"
TRAIN_ARGS = ["--rf_pretrainedModelFilename=efficientnet_lite0", "--rf_inputResolution=128", "--svm_cvFolds=3",
              "--svm_nJobs=1"]  # joblib worker processes cost more than they save on 2 busy cores
SETTINGS = ServiceSettings(max_request_bytes=300_000, max_images=4, top_k=3)
API_KEY = "test-key-7f3a9c1e5b"


# --------------------------------------------------------------------------- shared trained model
def train_demo_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Train the demo model once per test session: ``(root, parameters file)``.

    The result is cached in the session's base temp folder, so every test
    file that calls this gets the same model and only the first pays for it.
    Its own (empty) parameters file keeps a user's PARAMETERS.py out of it.
    """
    root = tmp_path_factory.getbasetemp() / "trained_demo_model"
    params_file = root / "PARAMETERS_DEFAULTS.py"
    done = root / "DONE"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        params_file.write_text("# library defaults\n")
        env = {**os.environ, "IMGCLASS_PARAMETERS": str(params_file)}
        for script in ["0_downloadData.py", "1_prepareData.py", "2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py"]:
            result = subprocess.run([sys.executable, str(SCRIPTS / script), f"--parametersFile={params_file}",
                                     f"--rootDir={root}", *TRAIN_ARGS], capture_output=True, text=True, env=env,
                                    timeout=600)
            assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
        done.write_text("ok\n")
    return root, params_file


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_demo_model(tmp_path_factory)


@pytest.fixture(scope="session")
def predictor(trained_model: tuple[Path, Path]) -> Predictor:
    return load_predictor(DatasetLayout(trained_model[0], DEMO_DATASET_NAME), "cpu")


@pytest.fixture(scope="module")
def server(predictor: Predictor) -> Iterator[str]:
    with serve_in_background(create_app(predictor, SETTINGS)) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(predictor: Predictor) -> Iterator[str]:
    settings = ServiceSettings(max_request_bytes=300_000, max_images=4, top_k=3, api_key=API_KEY)
    with serve_in_background(create_app(predictor, settings)) as url:
        yield url


# --------------------------------------------------------------------------- helpers
def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def score_body(*paths: Path) -> dict:
    return {"input_df": [{"image base64 string": b64(p)} for p in paths]}


def png_bytes(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def demo_images(count: int) -> list[Path]:
    images, _ = list_image_files(DEMO_IMAGES)
    return images[:: max(1, len(images) // count)][:count]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- the original /score
def test_score_answers_the_original_request_with_real_json(server: str, predictor: Predictor) -> None:
    response = requests.post(f"{server}/score", json=score_body(COW), timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    result = response.json()
    assert isinstance(result, dict)  # a JSON object, not a JSON string inside JSON
    assert result["label"] == "mammals"
    assert result["Id2Labels"] == {str(i): label for i, label in enumerate(predictor.labels)}
    assert len(result["allScores"]) == len(predictor.labels)
    assert sum(result["allScores"]) == pytest.approx(1.0)
    assert result["score"] == max(result["allScores"])
    assert result["Id2Labels"][str(int(np.argmax(result["allScores"])))] == result["label"]
    assert result["executionTimeMs"] > 0
    expected = predictor.predict([load_rgb(COW, draft_size=predictor.transform.draft_size)]).probabilities[0]
    np.testing.assert_allclose(result["allScores"], expected, atol=1e-4)
    assert result["results"] == [{"label": result["label"], "score": result["score"],
                                  "allScores": result["allScores"]}]


def test_score_with_several_rows_lists_each_in_results(server: str) -> None:
    paths = [COW, DEMO_IMAGES / "flowers" / "flowers_daffodil.jpg"]
    result = requests.post(f"{server}/score", json=score_body(*paths), timeout=30).json()
    assert [r["label"] for r in result["results"]] == ["mammals", "flowers"]
    assert result["label"] == result["results"][0]["label"]  # top level = first row
    assert result["allScores"] == result["results"][0]["allScores"]


# --------------------------------------------------------------------------- /predict
def test_predict_multipart_returns_top_k_per_image(server: str, predictor: Predictor) -> None:
    files = [("images", ("cow.jpg", COW.read_bytes(), "image/jpeg")),
             ("images", ("red.png", png_bytes(), "image/png"))]
    response = requests.post(f"{server}/predict", files=files, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == predictor.model_name and body["model_version"] == predictor.model_version
    first, second = body["predictions"]
    assert (first["index"], first["filename"], second["filename"]) == (0, "cow.jpg", "red.png")
    assert first["label"] == "mammals"
    for prediction in body["predictions"]:
        probabilities = [entry["probability"] for entry in prediction["top_k"]]
        assert len(probabilities) == SETTINGS.top_k
        assert probabilities == sorted(probabilities, reverse=True)
        assert prediction["label"] == prediction["top_k"][0]["label"]
        assert 0 < sum(probabilities) <= 1 + 1e-9


def test_predict_json_with_all_labels_sums_to_one(server: str, predictor: Predictor) -> None:
    data_url = "data:image/jpeg;base64," + b64(COW)
    response = requests.post(f"{server}/predict", params={"top_k": 100},
                             json={"images": [b64(COW), data_url]}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for prediction in predictions:
        assert prediction["label"] == "mammals" and prediction["filename"] is None
        assert sorted(e["label"] for e in prediction["top_k"]) == sorted(predictor.labels)
        assert sum(e["probability"] for e in prediction["top_k"]) == pytest.approx(1.0)


# --------------------------------------------------------------------------- errors
TRUNCATED_JPEG = COW.read_bytes()[:300]


@pytest.mark.parametrize("path, kwargs, status, words", [
    ("/score", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    ("/score", {"json": {"input_df": [{"image": "x"}]}}, 400, "image base64 string"),
    ("/score", {"json": {"rows": []}}, 400, "input_df"),
    ("/score", {"json": {"input_df": []}}, 400, "no image"),
    ("/score", {"json": {"input_df": [{"image base64 string": "%%% not base64 %%%"}]}}, 400, "not valid base64"),
    ("/score", {"json": {"input_df": [{"image base64 string": base64.b64encode(b"hello, world").decode()}]}},
     400, "cannot decode input_df[0]"),
    ("/score", {"json": {"input_df": [{"image base64 string": base64.b64encode(TRUNCATED_JPEG).decode()}]}},
     400, "cannot decode"),
    ("/predict", {"files": [("images", ("notes.txt", b"just some text", "text/plain"))]}, 400, "notes.txt"),
    ("/predict", {"files": [("images", ("cut.jpg", TRUNCATED_JPEG, "image/jpeg"))]}, 400, "cut.jpg"),
    ("/predict", {"data": {"field": "a form, not a file"}}, 415, "application/x-www-form-urlencoded"),
    ("/predict", {"files": {"field": (None, "a value, not a file")}}, 400, "no image"),
    ("/predict", {"json": {"images": []}}, 400, "no image"),
    ("/predict", {"json": {"images": ["@@@"]}}, 400, "images[0] is not valid base64"),
    ("/predict", {"json": {"images": [b64(COW)]}, "params": {"top_k": 0}}, 400, "top_k"),
    ("/score", {"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "content type"),
    ("/score", {"files": [("images", ("cow.jpg", COW.read_bytes(), "image/jpeg"))]}, 415, "application/json"),
    ("/predict", {"data": b"<images/>", "headers": {"Content-Type": "application/xml"}}, 415, "content type"),
    ("/predict", {"data": b"", "headers": {}}, 415, "(none)"),
])
def test_bad_requests_get_a_status_and_a_message_naming_the_problem(
        server: str, path: str, kwargs: dict, status: int, words: str) -> None:
    response = requests.post(f"{server}{path}", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert "BytesIO" not in response.json()["detail"]


def test_too_many_images_is_413(server: str) -> None:
    paths = demo_images(SETTINGS.max_images + 1)
    response = requests.post(f"{server}/score", json=score_body(*paths), timeout=30)
    assert response.status_code == 413 and "limit is 4" in response.json()["detail"]
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    response = requests.post(f"{server}/predict", files=files, timeout=30)
    assert response.status_code == 413
    response = requests.post(f"{server}/predict", json={"images": [b64(p) for p in paths]}, timeout=30)
    assert response.status_code == 413
    # the limit itself is allowed
    response = requests.post(f"{server}/predict", files=files[:SETTINGS.max_images], timeout=30)
    assert response.status_code == 200 and len(response.json()["predictions"]) == SETTINGS.max_images


def test_too_large_request_is_413_by_length_and_while_streaming(server: str) -> None:
    big = {"input_df": [{"image base64 string": "A" * (SETTINGS.max_request_bytes + 10)}]}
    response = requests.post(f"{server}/score", json=big, timeout=30)
    assert response.status_code == 413 and "limit of 300000 bytes" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b'{"images": ["'
        for _ in range(40):
            yield b"A" * 10_000
        yield b'"]}'

    response = requests.post(f"{server}/predict", data=chunks(), headers={"Content-Type": "application/json"},
                             timeout=30)
    assert response.status_code == 413


# --------------------------------------------------------------------------- API key
def test_api_key_is_required_when_set(keyed_server: str) -> None:
    body = score_body(COW)
    missing = requests.post(f"{keyed_server}/score", json=body, timeout=30)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = requests.post(f"{keyed_server}/score", json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401 and "nope" not in wrong.text
    not_bearer = requests.post(f"{keyed_server}/score", json=body, headers={"Authorization": API_KEY}, timeout=30)
    assert not_bearer.status_code == 401
    good = {"Authorization": f"Bearer {API_KEY}"}
    ok = requests.post(f"{keyed_server}/score", json=body, headers=good, timeout=30)
    assert ok.status_code == 200 and ok.json()["label"] == "mammals"
    assert requests.get(f"{keyed_server}/labels", timeout=30).status_code == 401
    assert requests.get(f"{keyed_server}/labels", headers=good, timeout=30).status_code == 200
    files = [("images", ("cow.jpg", COW.read_bytes(), "image/jpeg"))]
    assert requests.post(f"{keyed_server}/predict", files=files, timeout=30).status_code == 401
    assert requests.post(f"{keyed_server}/predict", files=files, headers=good, timeout=30).status_code == 200
    health = requests.get(f"{keyed_server}/health", timeout=30)  # probes need no key
    assert health.status_code == 200 and health.json()["api_key_required"] is True
    for response in (missing, wrong, ok, health):
        assert API_KEY not in response.text


def test_no_key_needed_when_unset(server: str) -> None:
    assert requests.get(f"{server}/health", timeout=30).json()["api_key_required"] is False
    assert requests.get(f"{server}/labels", timeout=30).status_code == 200


def test_settings_never_show_the_key(trained_model: tuple[Path, Path]) -> None:
    params = load_parameters(parameters_file=trained_model[1])
    settings = ServiceSettings.from_parameters(params, environ={API_KEY_ENV: API_KEY})
    assert settings.api_key == API_KEY and API_KEY not in repr(settings)
    assert (settings.max_images, settings.top_k) == (params.deploy_maxImages, params.deploy_topK)
    empty = ServiceSettings.from_parameters(params, environ={API_KEY_ENV: ""})
    assert empty.api_key is None


# --------------------------------------------------------------------------- concurrency
def test_32_concurrent_requests_are_all_answered_correctly(server: str, predictor: Predictor) -> None:
    paths = demo_images(32)
    assert len(paths) == 32
    expected = predictor.predict([load_rgb(p, draft_size=predictor.transform.draft_size) for p in paths])
    expected_labels = [expected.labels[i] for i in expected.probabilities.argmax(1)]

    def call(path: Path) -> str:
        with requests.Session() as session:
            response = session.post(f"{server}/score", json=score_body(path), timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["label"]

    with ThreadPoolExecutor(max_workers=32) as pool:
        labels = list(pool.map(call, paths))
    assert labels == expected_labels


# --------------------------------------------------------------------------- health, labels, OpenAPI, page
def test_health_labels_openapi_and_page(server: str, predictor: Predictor) -> None:
    health = requests.get(f"{server}/health", timeout=30).json()
    assert health == {"status": "ok", "model_name": predictor.model_name, "model_version": predictor.model_version,
                      "num_labels": len(predictor.labels), "api_key_required": False}
    labels = requests.get(f"{server}/labels", timeout=30).json()
    assert labels["labels"] == predictor.labels == ["birds", "fish", "flowers", "fruit", "mammals", "vegetables"]
    spec = requests.get(f"{server}/openapi.json", timeout=30).json()
    assert {"/score", "/predict", "/health", "/labels"} <= set(spec["paths"])
    score_schema = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "input_df" in json.dumps(score_schema)
    assert set(spec["paths"]["/predict"]["post"]["requestBody"]["content"]) == {"application/json",
                                                                                "multipart/form-data"}
    assert {"401", "413", "415", "400"} <= set(spec["paths"]["/score"]["post"]["responses"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    page = requests.get(f"{server}/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "file-input" in page.text
    assert requests.get(f"{server}/static/app.js", timeout=30).status_code == 200
    assert requests.get(f"{server}/docs", timeout=30).status_code == 200


# --------------------------------------------------------------------------- scripts 6: deploy and client
def test_deploy_and_client_scripts_never_log_the_key(trained_model: tuple[Path, Path], tmp_path: Path) -> None:
    root, params_file = trained_model
    port = free_port()
    env = {**os.environ, "IMGCLASS_PARAMETERS": str(params_file), API_KEY_ENV: API_KEY}
    log = tmp_path / "server.log"
    with open(log, "w") as handle:
        server = subprocess.Popen([sys.executable, str(SCRIPTS / "6_deploy.py"), f"--rootDir={root}",
                                   f"--deploy_port={port}", "--run_device=cpu"],
                                  stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        assert requests.post(f"{url}/score", json=score_body(COW), timeout=30).status_code == 401
        client = subprocess.run([sys.executable, str(SCRIPTS / "6_callWebservice.py"), f"--deploy_port={port}",
                                 "--deploy_clientRepeats=3"], capture_output=True, text=True, env=env, timeout=120)
        assert client.returncode == 0, client.stdout + client.stderr
        assert "label: mammals" in client.stdout
        assert "3 request(s): total round trip" in client.stdout and "server compute" in client.stdout
        no_key = subprocess.run([sys.executable, str(SCRIPTS / "6_callWebservice.py"), f"--deploy_port={port}",
                                 "--deploy_clientRepeats=1"], capture_output=True, text=True, timeout=120,
                                env={k: v for k, v in env.items() if k != API_KEY_ENV})
        assert no_key.returncode == 2 and "HTTP 401" in no_key.stderr  # a user-facing error, one line
    finally:
        server.terminate()
        server.wait(timeout=30)
    output = log.read_text()
    assert "API key required" in output and '"POST /score HTTP/1.1" 200' in output
    assert API_KEY not in output and API_KEY not in client.stdout + client.stderr
