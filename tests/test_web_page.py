"""The web page at / in a real headless Chromium, driven by Playwright.

Uses Debian's /usr/bin/chromium (``.ci/run`` installs it); Playwright never
downloads a browser of its own. The server runs in this process on a free
loopback port with the demo model trained once per session (see
tests/test_serving.py::train_demo_model). Chromium is started with flags that
keep it off the network except for 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from imgclass.layout import DatasetLayout
from imgclass.parameters import DEMO_DATASET_NAME
from imgclass.model.predictor import Predictor
from imgclass.serve.predictor import load_predictor
from imgclass.serve.app import ServiceSettings, create_app, serve_in_background
from test_serving import COW, train_demo_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
API_KEY = "page-key-41c9d2"
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed (/usr/bin/chromium); "
                                       ".ci/run installs it with apt-get")
sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    root, _ = train_demo_model(tmp_path_factory)
    return load_predictor(DatasetLayout(root, DEMO_DATASET_NAME), "cpu")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # Playwright gives every launch a new empty profile of its own.
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


def ranked_labels(page: object) -> list[str]:
    return page.locator("#results li.result .label").all_inner_texts()


def test_pick_the_demo_image_and_see_its_label(page: object, predictor: Predictor) -> None:
    with serve_in_background(create_app(predictor, ServiceSettings(top_k=4))) as url:
        page.goto(url + "/")
        sync_api.expect(page.locator("#model")).to_contain_text(predictor.model_name)
        assert page.locator("#key-section").is_hidden()
        page.set_input_files("#file-input", str(COW))
        sync_api.expect(page.locator("#results li.result")).to_have_count(4)
        assert ranked_labels(page)[0] == "mammals"
        sync_api.expect(page.locator("#status")).to_contain_text("mammals")
        assert "error" not in (page.locator("#status").get_attribute("class") or "")
        # the bars are drawn in proportion to the probabilities, best first
        widths = page.locator("#results .bar > div").evaluate_all(
            "bars => bars.map(bar => parseFloat(bar.style.width))")
        assert widths == sorted(widths, reverse=True) and 50 < widths[0] <= 100
        # the picked image is shown
        page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
        assert page.locator("#file-name").inner_text() == COW.name

        # a file that is not an image: the server's message is shown as an error
        page.set_input_files("#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                    "buffer": b"not an image"}])
        sync_api.expect(page.locator("#status")).to_contain_text("Error 400")
        sync_api.expect(page.locator("#status")).to_contain_text("notes.txt")
        assert "error" in page.locator("#status").get_attribute("class")


def test_drop_an_image_on_the_page(page: object, predictor: Predictor) -> None:
    with serve_in_background(create_app(predictor, ServiceSettings())) as url:
        page.goto(url + "/")
        data = list(COW.read_bytes())
        page.locator("#drop-zone").evaluate(
            """(zone, data) => {
                const transfer = new DataTransfer();
                transfer.items.add(new File([new Uint8Array(data)], "dropped.jpg", {type: "image/jpeg"}));
                zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            }""", data)
        sync_api.expect(page.locator("#file-name")).to_have_text("dropped.jpg")
        sync_api.expect(page.locator("#results li.result")).to_have_count(5)
        assert ranked_labels(page)[0] == "mammals"


def test_page_asks_for_the_api_key_when_the_server_has_one(page: object, predictor: Predictor) -> None:
    with serve_in_background(create_app(predictor, ServiceSettings(api_key=API_KEY))) as url:
        page.goto(url + "/")
        sync_api.expect(page.locator("#key-section")).to_be_visible()
        page.set_input_files("#file-input", str(COW))
        sync_api.expect(page.locator("#status")).to_contain_text("Error 401")
        page.fill("#api-key", API_KEY)
        page.set_input_files("#file-input", str(COW))
        sync_api.expect(page.locator("#status")).to_contain_text("mammals")
        assert ranked_labels(page)[0] == "mammals"
