"""The labeling page (/label) and the results page (/results) in a real headless Chromium, driven by Playwright.

As tests/test_web_page.py: Debian's /usr/bin/chromium (``.ci/run`` installs
it), no browser download, traffic only to 127.0.0.1. The service runs in this
process with the demo model (trained once per session, see
tests/test_serving.py::train_demo_model) over a small copy of the demo
dataset (6 images per class, 6 more in the unlabeled folder), so that the
files the page moves are this module's own, and a real retraining (steps 1-5
in a child process) is short.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest
import requests

from imgclass.io.images import list_image_files
from imgclass.layout import DatasetLayout
from imgclass.parameters import DEMO_DATASET_NAME, load_parameters
from imgclass.serve.app import ServiceSettings, create_app, serve_in_background
from imgclass.serve.labeling import labeling_log_of, open_decisions, read_labeling_log
from imgclass.serve.labeling_api import LabelingService
from imgclass.serve.predictor import load_predictor
from test_serving import TRAIN_ARGS, train_demo_model
from test_web_page import CHROMIUM, CHROMIUM_FLAGS

API_KEY = "label-page-key-8e20"
TIMEOUT_MS = 60_000
PER_CLASS, UNLABELED = 6, 6

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed (/usr/bin/chromium); "
                                       ".ci/run installs it with apt-get")
sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DatasetLayout, LabelingService]]:
    trained_root, params_file = train_demo_model(tmp_path_factory)
    root = tmp_path_factory.mktemp("labeling_page")
    shutil.copytree(trained_root / "proc", root / "proc")
    layout = DatasetLayout(root, DEMO_DATASET_NAME)
    unlabeled = layout.images_dir.parent / f"{DEMO_DATASET_NAME}_unlabeled"
    source = DatasetLayout(trained_root, DEMO_DATASET_NAME).images_dir
    taken = 0
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = list_image_files(class_dir)[0]
        for file in files[:PER_CLASS]:
            (layout.images_dir / class_dir.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(file, layout.images_dir / class_dir.name / file.name)
        if taken < UNLABELED:
            unlabeled.mkdir(parents=True, exist_ok=True)
            shutil.copy(files[-1], unlabeled / f"new_{taken}{files[-1].suffix}")
            taken += 1
    params = load_parameters(parameters_file=params_file, rootDir=str(root), run_device="cpu",
                             label_retrainArgs=[*TRAIN_ARGS, "--run_device=cpu", "--run_workers=0"])
    predictor = load_predictor(layout, "cpu")
    service = LabelingService.from_parameters(params, predictor)
    app = create_app(predictor, ServiceSettings(api_key=API_KEY), labeling=service)
    with serve_in_background(app) as url:
        service.session.score_in_background()  # else the first look at the queue starts it
        assert service.session.wait_for_scoring(120)
        yield url, layout, service
    service.session.database.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser: object) -> Iterator[object]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def enter_key(page: object) -> None:
    sync_api.expect(page.locator("#key-section")).to_be_visible()
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Enter")
    page.locator("#api-key").blur()


def shown_item(page: object) -> str:
    return page.locator("#current-item").get_attribute("data-item") or ""


def api(url: str, path: str, method: str = "get", **kwargs: object) -> requests.Response:
    return requests.request(method, url + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30,
                            **kwargs)


def test_label_five_images_with_the_keyboard_and_undo_one(page: object,
                                                          service_url: tuple[str, DatasetLayout, object]) -> None:
    url, layout, _ = service_url
    images_root = layout.images_dir.parent
    page.goto(url + "/label")
    enter_key(page)
    sync_api.expect(page.locator("#card")).to_be_visible()
    sync_api.expect(page.locator("#classes button")).to_have_count(6)
    page.wait_for_function("document.getElementById('current-image').naturalWidth > 0")
    classes = page.locator("#classes button").evaluate_all("buttons => buttons.map(b => b.dataset.label)")
    assert classes == sorted(classes) and "mammals" in classes

    decided = []
    for key in ["1", "4", "x", "5", "2"]:
        item = shown_item(page)
        assert item
        page.keyboard.press(key)
        page.wait_for_function("item => document.getElementById('current-item').dataset.item !== item", arg=item)
        decided.append((item, key))
    sync_api.expect(page.locator("#progress")).to_contain_text("5 decided")
    sync_api.expect(page.locator("#log li")).to_have_count(5)

    page.keyboard.press("Control+z")
    sync_api.expect(page.locator("#status")).to_contain_text("Undid #5")
    assert shown_item(page) == decided[-1][0]  # the undone image is shown again, first
    sync_api.expect(page.locator("#log li").first).to_have_attribute("data-action", "undo")

    log = read_labeling_log(labeling_log_of(layout))
    assert [d.action for d in log][-1] == "undo" and log[-1].undoes == 5
    kept = open_decisions(log)
    assert [d.item for d in kept] == [item for item, _ in decided[:4]]
    for decision, (item, key) in zip(kept, decided):
        if key == "x":
            assert decision.action == "exclude" and decision.target.startswith(f"{DEMO_DATASET_NAME}_excluded/")
        else:
            assert decision.label == classes[int(key) - 1]
            assert decision.target.split("/")[:2] == [DEMO_DATASET_NAME, decision.label]
        if decision.action != "confirm":
            assert (images_root / decision.target).is_file() and not (images_root / decision.item).exists()
    assert (images_root / decided[-1][0]).is_file()  # undone: back where it was


def test_results_page_filter_open_and_send_to_the_queue(page: object,
                                                        service_url: tuple[str, DatasetLayout, object]) -> None:
    url, layout, service = service_url
    page.goto(url + "/results")
    enter_key(page)
    sync_api.expect(page.locator("#rows tr.result").first).to_be_visible()
    page.select_option("#filter-label", "mammals")
    sync_api.expect(page.locator("#rows")).to_have_attribute("data-state", "ready")
    labels = page.locator("#rows td.label").all_inner_texts()
    assert labels and set(labels) == {"mammals"}
    margins = [float(m) for m in page.locator("#rows td.margin").all_inner_texts()]
    assert margins == sorted(margins)  # least sure first

    page.select_option("#filter-label", "")
    page.fill("#filter-max", "0.99")
    page.click("#apply")
    sync_api.expect(page.locator("#rows")).to_have_attribute("data-state", "ready")
    scores = [float(s) for s in page.locator("#rows td.score").all_inner_texts()]
    assert scores and max(scores) <= 0.99

    path = page.locator("#rows tr.result", has=page.locator("button.send")).first.get_attribute("data-path")
    row = page.locator(f'#rows tr.result[data-path="{path}"]')
    row.locator("img").click()
    sync_api.expect(page.locator("#viewer")).to_be_visible()
    page.wait_for_function("document.getElementById('viewer-image').naturalWidth > 0")
    page.keyboard.press("Escape")
    row.locator("button.send").click()
    sync_api.expect(page.locator("#status")).to_contain_text("Sent")
    sync_api.expect(row.locator("button.send")).to_be_disabled()

    first = api(url, "/api/label/queue").json()["items"][0]
    assert first["requested"] is True
    assert (layout.images_dir.parent / first["item"]).resolve().as_posix() == path


def test_retrain_from_the_page_while_labeling_goes_on(page: object,
                                                      service_url: tuple[str, DatasetLayout, object]) -> None:
    url, layout, service = service_url
    old_version = service.session.predictor.model_version
    page.goto(url + "/label")
    enter_key(page)
    sync_api.expect(page.locator("#card")).to_be_visible()
    page.click("#retrain")
    sync_api.expect(page.locator("#retrain-status")).to_have_attribute("data-state", "running")
    item = shown_item(page)
    page.keyboard.press("s")  # the page stays usable while steps 1-5 run
    page.wait_for_function("item => document.getElementById('current-item').dataset.item !== item", arg=item)
    sync_api.expect(page.locator("#retrain-status")).to_have_attribute("data-state", "done", timeout=240_000)
    sync_api.expect(page.locator("#retrain-status")).to_contain_text("test accuracy")
    status = api(url, "/api/label/retrain").json()
    assert status["state"] == "done" and 0 <= status["accuracy_after"] <= 1, status
    assert service.session.predictor.model_version == status["model_version"] != old_version
    assert service.session.wait_for_scoring(120)
    queue = api(url, "/api/label/queue").json()
    assert queue["model_version"] == status["model_version"] and queue["not_scored_yet"] == 0
    sync_api.expect(page.locator("#model")).to_contain_text(status["model_version"], timeout=30_000)
