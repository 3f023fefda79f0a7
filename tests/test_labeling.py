"""Tests of the labeling queue (imgclass.serve.labeling, labeling_api) and the least-sure ranking.

A tiny dataset of coloured images (red, green, blue classes, an unlabeled
folder with clear and ambiguous colours) and a stand-in model that calls an
image by its brightest channel: what is under test is the ranking, the moves
and their undo, the log, and what the API refuses. The real model, the
browser and a real retraining are in tests/test_labeling_page.py.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest
import requests
from PIL import Image

from imgclass.data import annotations
from imgclass.layout import DatasetLayout
from imgclass.model.scores import least_sure_first, uncertainty
from imgclass.parameters import load_parameters
from imgclass.serve.app import ServiceSettings, create_app, serve_in_background
from imgclass.serve.database import ResultsDatabase, database_url
from imgclass.serve.labeling import (LabelingConfig, LabelingError, LabelingSession, Retrainer, labeling_log_of,
                                     rank_queue, read_labeling_log)
from imgclass.serve.labeling_api import LabelingService

API_KEY = "labeling-key-5d1e"
COLOURS = {"red": (220, 30, 30), "green": (30, 220, 30), "blue": (30, 30, 220)}
#: unlabeled images: two clear ones and two the model hesitates about (purple: red or blue; teal: green or blue)
UNLABELED = {"clear_red.png": (230, 20, 20), "clear_green.png": (20, 230, 20), "purple.png": (180, 20, 175),
             "teal.png": (20, 160, 150)}


# --------------------------------------------------------------------------- a stand-in model
@dataclass
class _Predictions:
    probabilities: np.ndarray


@dataclass
class _Batch:
    paths: list[str]
    predictions: _Predictions
    failures: list[tuple[str, str]]


class ColourModel:
    """Probabilities in proportion to the mean of each channel (classes blue, green, red)."""

    labels = ["blue", "green", "red"]
    model_name = "colours-test"

    def __init__(self, version: str = "v1"):
        self.model_version = version
        self.calls = 0

    def predict_files(self, paths: Sequence[str], batch_size: int = 32) -> Iterator[_Batch]:
        self.calls += 1
        for first in range(0, len(paths), batch_size):
            good, rows, failures = [], [], []
            for path in paths[first:first + batch_size]:
                try:
                    with Image.open(path) as image:
                        r, g, b = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0) + 1
                except OSError as exc:
                    failures.append((path, str(exc)))
                    continue
                good.append(path)
                rows.append(np.array([b, g, r]) / (r + g + b))
            yield _Batch(good, _Predictions(np.array(rows).reshape(-1, 3)), failures)


def make_image(path: Path, rgb: tuple[int, int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    array = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 6, (24, 32, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_labeling_dataset(root: Path, dataset: str = "colours") -> DatasetLayout:
    """``images/colours/<class>/`` (3 each; one red image filed under green: the model disagrees) and
    ``images/colours_unlabeled/``."""
    layout = DatasetLayout(root, dataset)
    for c, (label, rgb) in enumerate(COLOURS.items()):
        for i in range(3):
            make_image(layout.images_dir / label / f"{label}_{i}.png", rgb, seed=10 * c + i)
    make_image(layout.images_dir / "green" / "wrong_red.png", (225, 25, 25), seed=99)
    for i, (name, rgb) in enumerate(UNLABELED.items()):
        make_image(layout.images_dir.parent / f"{dataset}_unlabeled" / name, rgb, seed=50 + i)
    return layout


def session_for(root: Path, model: ColourModel | None = None, review_labeled: str = "disagree") -> LabelingSession:
    layout = make_labeling_dataset(root)
    config = LabelingConfig(layout, layout.images_dir.parent / "colours_unlabeled",
                            database_url("", layout.batch_scores_sqlite), review_labeled=review_labeled)
    session = LabelingSession(config, model or ColourModel())
    session.score_in_background()
    assert session.wait_for_scoring(60)
    return session


@pytest.fixture()
def session(tmp_path: Path) -> Iterator[LabelingSession]:
    session = session_for(tmp_path)
    yield session
    session.database.close()


def names(queue: dict) -> list[str]:
    return [item["item"].split("/")[-1] for item in queue["items"]]


# --------------------------------------------------------------------------- ranking: pure functions
def test_uncertainty_is_zero_when_sure_one_when_torn_and_orders_rows() -> None:
    p = np.array([[0.98, 0.01, 0.01], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    for method in ("margin", "entropy"):
        u = uncertainty(p, method)
        assert u[0] < 0.2 and u[2] == pytest.approx(1.0) and np.all((0 <= u) & (u <= 1))
        assert least_sure_first(p, method)[-1] == 0  # the surest row is last
    assert uncertainty(p, "margin")[1] == pytest.approx(1.0)  # torn between two classes: least sure by margin
    assert uncertainty(p, "entropy")[1] < uncertainty(p, "entropy")[2]  # entropy also counts the third class
    assert list(least_sure_first(np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]]))) == [0, 1, 2]  # ties: in order
    assert uncertainty(np.zeros((0, 3))).shape == (0,) and list(uncertainty(np.ones((2, 1)))) == [0, 0]
    with pytest.raises(ValueError, match="unknown uncertainty method"):
        uncertainty(p, "random")


def test_rank_queue_requested_first_least_sure_next_skipped_last() -> None:
    labels = ["a", "b"]
    candidates = [("u/sure.jpg", "unlabeled", None), ("u/torn.jpg", "unlabeled", None),
                  ("d/a/agrees.jpg", "labeled", "a"), ("d/a/disagrees.jpg", "labeled", "a"),
                  ("u/skipped.jpg", "unlabeled", None), ("u/asked.jpg", "unlabeled", None)]
    p = np.array([[0.95, 0.05], [0.52, 0.48], [0.9, 0.1], [0.3, 0.7], [0.5, 0.5], [0.99, 0.01]])
    ranked = rank_queue(candidates, p, labels, requested=["u/asked.jpg"], skipped=["u/skipped.jpg"])
    assert [q.item for q in ranked] == ["u/asked.jpg", "u/torn.jpg", "d/a/disagrees.jpg", "u/sure.jpg",
                                        "u/skipped.jpg"]
    assert ranked[1].top[0] == ("a", 0.52) and ranked[2].predicted == "b" and ranked[0].requested
    everything = rank_queue(candidates, p, labels, review_labeled="all")
    assert "d/a/agrees.jpg" in [q.item for q in everything]
    assert all(q.kind == "unlabeled" for q in rank_queue(candidates, p, labels, review_labeled="none"))


# --------------------------------------------------------------------------- the queue and decisions
def test_queue_holds_unlabeled_and_disagreeing_images_least_sure_first(session: LabelingSession) -> None:
    queue = session.queue()
    assert queue["classes"] == ["blue", "green", "red"] and queue["not_scored_yet"] == 0
    assert names(queue)[:2] == ["purple.png", "teal.png"]  # torn between two colours
    assert set(names(queue)) == {"purple.png", "teal.png", "clear_red.png", "clear_green.png", "wrong_red.png"}
    wrong = next(item for item in queue["items"] if item["item"].endswith("wrong_red.png"))
    assert (wrong["kind"], wrong["label"], wrong["predicted"]) == ("labeled", "green", "red")
    assert [label for label, _ in wrong["top"]][0] == "red"
    # the scores are batch scoring's rows: the results database has them
    assert session.database.query()[0] == 4 + 10


def test_decisions_move_files_log_them_and_undo_puts_everything_back(session: LabelingSession) -> None:
    layout = session.layout
    images, unlabeled = layout.images_dir, layout.images_dir.parent / "colours_unlabeled"
    before = sorted(p.relative_to(layout.root) for p in layout.root.rglob("*.png"))

    labelled = session.decide("colours_unlabeled/purple.png", "label", "red")
    assert labelled.action == "label" and labelled.target == "colours/red/purple.png"
    assert (images / "red" / "purple.png").is_file() and not (unlabeled / "purple.png").exists()
    moved = session.decide("colours/green/wrong_red.png", "label", "red")
    assert moved.action == "move" and (images / "red" / "wrong_red.png").is_file()
    assert annotations.read_log(images)[-1].entry == moved.annotation_entry  # the notebooks' log has it too
    confirmed = session.decide("colours/red/red_0.png", "label", "red")
    assert confirmed.action == "confirm" and (images / "red" / "red_0.png").is_file()
    excluded = session.decide("colours_unlabeled/teal.png", "exclude")
    assert excluded.target == "colours_excluded/_unlabeled/teal.png" and (layout.excluded_dir / "_unlabeled" /
                                                                         "teal.png").is_file()
    excluded_labeled = session.decide("colours/blue/blue_1.png", "exclude")
    assert (layout.excluded_dir / "blue" / "blue_1.png").is_file()
    skipped = session.decide("colours_unlabeled/clear_green.png", "skip")
    assert skipped.action == "skip" and (unlabeled / "clear_green.png").is_file()

    queue = session.queue()
    assert "purple.png" not in names(queue) and "wrong_red.png" not in names(queue)  # decided by a person
    assert names(queue)[-1] == "clear_green.png"  # skipped: last
    assert queue["decided"] == 5

    # a clash: the name is taken in the class folder, so the file gets a free one (never overwritten)
    make_image(unlabeled / "red_2.png", (230, 10, 10), seed=7)
    clash = session.decide("colours_unlabeled/red_2.png", "label", "red")
    assert clash.target == "colours/red/red_2_1.png" and (images / "red" / "red_2.png").is_file()

    for _ in range(7):
        assert session.undo() is not None
    assert session.undo() is None
    after = sorted(p.relative_to(layout.root) for p in layout.root.rglob("*.png"))
    assert after == sorted([*before, Path("images/colours_unlabeled/red_2.png")])
    log = read_labeling_log(labeling_log_of(layout))
    assert [d.action for d in log][:7] == ["label", "move", "confirm", "exclude", "exclude", "skip", "label"]
    assert [d.undoes for d in log[7:]] == [7, 6, 5, 4, 3, 2, 1]
    with open(labeling_log_of(layout), newline="") as handle:
        assert next(csv.reader(handle)) == ["entry", "time", "action", "item", "label", "target",
                                            "annotation_entry", "undoes"]


def test_bad_requests_are_refused_and_nothing_moves(session: LabelingSession, tmp_path: Path) -> None:
    (session.layout.images_dir / "red" / "notes.txt").write_text("not an image")
    (tmp_path / "outside.png").write_bytes((session.layout.images_dir / "red" / "red_0.png").read_bytes())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    cases = [("colours_unlabeled/purple.png", "label", "purple", 400, "unknown class"),
             ("colours_unlabeled/purple.png", "label", "../red", 400, "unknown class"),
             ("colours_unlabeled/purple.png", "label", None, 400, "unknown class"),
             ("../outside.png", "skip", None, 400, "not a path inside"),
             ("/etc/passwd", "skip", None, 400, "not a path inside"),
             ("colours_unlabeled\\purple.png", "skip", None, 400, "not a path inside"),
             ("colours_excluded/blue/blue_1.png", "skip", None, 400, "neither in the dataset"),
             ("colours/red", "skip", None, 400, "neither in the dataset"),
             ("colours/red/notes.txt", "skip", None, 400, "not an image file"),
             ("colours_unlabeled/nope.png", "label", "red", 404, "not found"),
             ("colours_unlabeled/purple.png", "delete", None, 400, "unknown decision")]
    for item, decision, label, status, message in cases:
        with pytest.raises(LabelingError, match=message) as caught:
            session.decide(item, decision, label)
        assert caught.value.status == status, item
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png")) == before
    assert read_labeling_log(labeling_log_of(session.layout)) == []


def test_undo_waits_for_a_later_notebook_change_and_refuses_a_crafted_log(session: LabelingSession) -> None:
    images = session.layout.images_dir
    session.decide("colours/green/wrong_red.png", "label", "red")
    annotations.move_image(images, "blue/blue_0.png", "green")  # the notebook, after the page
    with pytest.raises(LabelingError, match="undo the later changes first") as caught:
        session.undo()
    assert caught.value.status == 409 and (images / "red" / "wrong_red.png").is_file()
    annotations.undo_last(images)
    assert session.undo().undoes == 1 and (images / "green" / "wrong_red.png").is_file()

    # a log that travelled with the images and was edited: an undo never follows a path out of the dataset
    log_path = labeling_log_of(session.layout)
    with open(log_path, "a", newline="") as handle:
        csv.writer(handle).writerow([3, "2026-01-01T00:00:00", "label", "../../../tmp/evil.png", "red",
                                     "colours/red/red_0.png", "", ""])
    with pytest.raises(LabelingError, match="outside the dataset") as caught:
        session.undo()
    assert caught.value.status == 409 and (images / "red" / "red_0.png").is_file()
    assert read_labeling_log(log_path)[-1].action == "refused" and session.undo() is None


def test_a_new_model_re_ranks_the_queue(session: LabelingSession) -> None:
    class GreenIsRed(ColourModel):  # a "retrained" model that now calls green images red
        def predict_files(self, paths: Sequence[str], batch_size: int = 32) -> Iterator[_Batch]:
            for batch in super().predict_files(paths, batch_size):
                batch.predictions.probabilities[:, [1, 2]] = batch.predictions.probabilities[:, [2, 1]]
                yield batch

    assert "green_0.png" not in names(session.queue())
    session.use_predictor(GreenIsRed("v2"))
    assert session.wait_for_scoring(60)
    queue = session.queue()
    assert queue["model_version"] == "v2" and "green_0.png" in names(queue)
    assert {v.model_version for v in session.database.model_versions()} == {"v1", "v2"}


def test_new_images_in_the_unlabeled_folder_are_scored_when_the_queue_is_read(session: LabelingSession) -> None:
    model = session.predictor
    make_image(session.config.unlabeled_dir / "later" / "new_blue.png", (10, 10, 240), seed=3)
    (session.config.unlabeled_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    first = session.queue()
    assert first["not_scored_yet"] == 2
    assert session.wait_for_scoring(60)
    second = session.queue()
    assert "new_blue.png" in names(second)
    assert (second["not_scored_yet"], second["unreadable"]) == (0, 1)  # the broken one: never ranked
    calls = model.calls
    session.queue()
    assert session.wait_for_scoring(60) and model.calls == calls  # an unreadable image is not retried each time


def test_retrainer_runs_the_command_then_swaps_the_model_in(session: LabelingSession, tmp_path: Path) -> None:
    metrics = session.layout.metrics_json
    script = tmp_path / "fake_steps.py"
    script.write_text("import json, pathlib, sys\n"
                      f"path = pathlib.Path({str(metrics)!r})\n"
                      "path.parent.mkdir(parents=True, exist_ok=True)\n"
                      "path.write_text(json.dumps({'overall_accuracy': 0.875, 'n_test_images': 8}))\n"
                      "print('steps 1-5 done')\n")
    config = LabelingConfig(**{**session.config.__dict__, "retrain_command": (sys.executable, str(script))})
    session.config = config
    retrainer = Retrainer(session, lambda: ColourModel("v-retrained"))
    assert retrainer.start().state == "running"
    status = retrainer.wait(60)
    assert (status.state, status.accuracy_after, status.test_images_after) == ("done", 0.875, 8), status
    assert status.model_version == "v-retrained" and session.predictor.model_version == "v-retrained"
    assert "steps 1-5 done" in status.log_tail
    assert session.wait_for_scoring(60) and session.queue()["model_version"] == "v-retrained"

    session.config = LabelingConfig(**{**config.__dict__, "retrain_command": (sys.executable, "-c", "exit(3)")})
    retrainer.start()
    failed = retrainer.wait(60)
    assert failed.state == "failed" and "exit code 3" in failed.message
    assert session.predictor.model_version == "v-retrained"  # the old model stays


def test_config_from_parameters(tmp_path: Path) -> None:
    params = load_parameters(parameters_file=os.environ["IMGCLASS_PARAMETERS"], rootDir=str(tmp_path),
                             datasetName="colours", label_retrainArgs=["--rf_inputResolution=128"])
    config = LabelingConfig.from_parameters(params)
    assert config.unlabeled_dir == tmp_path / "images" / "colours_unlabeled"
    assert config.database_url.endswith("results/colours/batchScores.sqlite")
    assert config.retrain_command[1:4] == ("-m", "imgclass", "run")
    assert f"--rootDir={tmp_path}" in config.retrain_command
    assert config.retrain_command[-1] == "--rf_inputResolution=128"
    with pytest.raises(Exception, match="label_retrainArgs"):
        LabelingConfig.from_parameters(params.replace(label_retrainArgs=["--nonsense=1"]))
    with pytest.raises(Exception, match="folder of its own"):
        LabelingConfig.from_parameters(params.replace(label_unlabeledFolder="colours"))


# --------------------------------------------------------------------------- the HTTP API
class Client(requests.Session):
    """requests against the service on its loopback port, with the API key (``client.get('/api/...')``)."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self.headers["Authorization"] = f"Bearer {API_KEY}"

    def request(self, method: str, url: str, *args: object, **kwargs: object) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return super().request(method, self.url + url, *args, **kwargs)


@pytest.fixture()
def client(session: LabelingSession) -> Iterator[Client]:
    service = LabelingService(session, None)
    app = create_app(ColourModel(), ServiceSettings(api_key=API_KEY), labeling=service)
    with serve_in_background(app) as url, Client(url) as client:
        yield client


def test_api_needs_the_key(client: Client) -> None:
    for method, url in [("get", "/api/label/queue"), ("post", "/api/label/undo"), ("get", "/api/results"),
                        ("get", "/api/label/image?item=colours_unlabeled/purple.png")]:
        response = getattr(client, method)(url, headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401, url
    assert client.get("/label", headers={"Authorization": ""}).status_code == 200  # the page itself is open
    assert "<title>" in client.get("/results").text


def test_api_label_and_undo(client: Client, session: LabelingSession) -> None:
    queue = client.get("/api/label/queue", params={"limit": 2}).json()
    assert [i["item"] for i in queue["items"]] == ["colours_unlabeled/purple.png", "colours_unlabeled/teal.png"]
    assert queue["in_queue"] == 5 and queue["can_retrain"] is False
    answer = client.post("/api/label/decide", json={"item": "colours_unlabeled/purple.png", "decision": "label",
                                                    "label": "blue"})
    assert answer.status_code == 200 and answer.json()["target"] == "colours/blue/purple.png"
    assert client.get("/api/label/log").json()["entries"][0]["action"] == "label"
    assert client.post("/api/label/undo").json()["undoes"] == 1
    assert (session.config.unlabeled_dir / "purple.png").is_file()
    assert client.post("/api/label/undo").status_code == 404
    thumb = client.get("/api/label/image", params={"item": "colours_unlabeled/teal.png"})
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size == (32, 24)


def test_api_refuses_bad_input_with_clear_4xx(client: Client) -> None:
    def decide(body: object) -> tuple[int, str]:
        response = client.post("/api/label/decide", json=body)
        return response.status_code, response.json()["detail"]

    assert decide({"item": "colours_unlabeled/purple.png", "decision": "label", "label": "cats"})[0] == 400
    assert "unknown class 'cats'" in decide({"item": "colours_unlabeled/purple.png", "decision": "label",
                                              "label": "cats"})[1]
    assert decide({"item": "../../etc/passwd", "decision": "skip"})[0] == 400
    assert decide({"item": "colours_unlabeled/missing.png", "decision": "skip"})[0] == 404
    assert decide({"item": "colours_unlabeled/purple.png", "decision": "burn"})[0] == 400
    assert decide({"decision": "skip"})[0] == 400
    assert client.get("/api/label/image", params={"item": "../../../etc/hostname"}).status_code == 400
    assert client.get("/api/results/image", params={"path": "/etc/hostname"}).status_code == 404
    assert client.get("/api/results", params={"sort": "margin; drop table"}).status_code == 400
    assert client.get("/api/results", params={"score_min": 2}).status_code == 400
    assert client.post("/api/results/request", json={"path": "/etc/hostname"}).status_code == 400
    assert client.post("/api/label/retrain").status_code == 404  # this service was given no retrainer


def test_api_results_filter_and_send_to_the_queue(client: Client, session: LabelingSession) -> None:
    options = client.get("/api/results/options").json()
    assert options["current_model_version"] == "v1" and options["labels"] == ["blue", "green", "red"]
    assert any(folder.endswith("colours_unlabeled") for folder in options["folders"])
    body = client.get("/api/results", params={"label": "red", "sort": "least_sure"}).json()
    assert body["total"] == 6 and all(row["label"] == "red" for row in body["rows"])
    margins = [row["margin"] for row in body["rows"]]
    assert margins == sorted(margins)
    confident = client.get("/api/results", params={"score_min": 0.8, "model_version": "v1"}).json()
    assert all(row["score"] >= 0.8 for row in confident["rows"])
    green = [row for row in client.get("/api/results", params={"folder": str(session.layout.images_dir / "green"),
                                                                "sort": "path"}).json()["rows"]]
    assert [Path(row["path"]).name for row in green] == ["green_0.png", "green_1.png", "green_2.png",
                                                         "wrong_red.png"]
    assert green[0]["item"] == "colours/green/green_0.png"
    assert client.get("/api/results/image", params={"path": green[0]["path"]}).status_code == 200

    sent = client.post("/api/results/request", json={"path": green[0]["path"]})
    assert sent.status_code == 200 and sent.json()["item"] == "colours/green/green_0.png"
    first = client.get("/api/label/queue").json()["items"][0]
    assert first["item"] == "colours/green/green_0.png" and first["requested"] is True
    client.post("/api/label/decide", json={"item": first["item"], "decision": "label", "label": "green"})
    assert session.database.review_requests() == {}
    assert "green_0.png" not in names(client.get("/api/label/queue").json())


def test_database_can_be_reopened_by_batch_scoring(session: LabelingSession) -> None:
    with ResultsDatabase(session.config.database_url) as again:
        assert len(again.scored_paths("colours-test", "v1")) == 14
