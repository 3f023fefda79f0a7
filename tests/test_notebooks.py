"""The notebooks: committed without outputs, and each runs top to bottom headless on a trained demo model.

The trained model is made once per module by the real scripts 0-5 in a temporary root
(EfficientNet-Lite0 at 128 px, about 20 s on 2 idle cores); the notebooks find it through
``$IMGCLASS_ROOT_DIR``. Widgets are constructed, not clicked; the browsers' actions
are driven through their methods instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import PROJECT_DIR, PYTHON, make_dataset
from nbclient import NotebookClient

from imgclass.data import annotations as A
from imgclass.layout import DatasetLayout
from imgclass.parameters import DEMO_DATASET_NAME
from imgclass.evaluation.results import load_results

NOTEBOOKS_DIR = PROJECT_DIR / "notebooks"
NOTEBOOKS = ["showImages.ipynb", "showResults.ipynb", "deploy.ipynb"]


#: Runs the real scripts 0-5 one after the other in ONE interpreter (runpy, as ``python script.py``
#: would), so torch and the library are imported once instead of six times (saves ~20 s on 2 cores).
RUN_SCRIPTS = """
import runpy, sys
root, steps = sys.argv[1], sys.argv[2:]
for step in steps:
    extra = [] if step.startswith("0_") else ["--rf_pretrainedModelFilename=efficientnet_lite0",
                                              "--rf_inputResolution=128", "--svm_nJobs=1"]
    sys.argv = ["scripts/" + step, "--rootDir=" + root, *extra]
    try:
        runpy.run_path("scripts/" + step, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            sys.exit(f"{step} exited with code {exc.code}")
"""


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with the demo images and everything scripts 1-5 write, from the real scripts."""
    root = tmp_path_factory.mktemp("notebook_root")
    parameters = root / "EMPTY_PARAMETERS.py"  # library defaults, whatever PARAMETERS.py says
    parameters.write_text("# defaults only\n")
    env = {**os.environ, "IMGCLASS_PARAMETERS": str(parameters)}
    steps = ["0_downloadData.py", "1_prepareData.py", "2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py",
             "5_evaluate.py"]
    result = subprocess.run([PYTHON, "-c", RUN_SCRIPTS, str(root), *steps], cwd=PROJECT_DIR, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, f"scripts 0-5 failed:\n{result.stdout}\n{result.stderr}"
    assert (root / "results" / DEMO_DATASET_NAME / "predictions.csv").is_file(), result.stdout
    return root


def execute(name: str, extra_cells: list[str] = ()) -> nbformat.NotebookNode:
    """Run a notebook in a fresh 'python3' kernel from the notebooks folder; fails on any cell error."""
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(source) for source in extra_cells]
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}).execute()
    return nb


def text_of(nb: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or returned as text."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def count_outputs(nb: nbformat.NotebookNode, mime: str) -> int:
    return sum(mime in output.get("data", {}) for cell in nb.cells for output in cell.get("outputs", []))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_have_no_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code), \
        f"clear the outputs of notebooks/{name} before committing (see docs/notebooks.md)"
    assert "widgets" not in nb.metadata, f"notebooks/{name} holds saved widget state (see docs/notebooks.md)"
    assert nb.cells[0].cell_type == "markdown"


def test_show_images_runs_in_the_venv_kernel(trained_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLASS_ROOT_DIR", str(trained_root))
    nb = execute("showImages.ipynb", ["import sys; print('KERNEL_PREFIX=' + sys.prefix)"])
    output = text_of(nb)
    assert f"in {trained_root / 'images' / DEMO_DATASET_NAME}" in output
    assert "179 images in 6 classes; 0 excluded" in output
    assert count_outputs(nb, "application/vnd.jupyter.widget-view+json") == 1
    prefix = output.split("KERNEL_PREFIX=")[1].split()[0]
    assert Path(prefix).resolve() == Path(sys.prefix).resolve() == (PROJECT_DIR / ".venv").resolve()


def test_show_results_runs_and_shows_metrics_plots_and_widgets(trained_root: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLASS_ROOT_DIR", str(trained_root))
    nb = execute("showResults.ipynb")
    output = text_of(nb)
    assert "over 46 test images" in output and str(trained_root / "results") in output
    assert count_outputs(nb, "image/png") == 4  # ROC, confusion matrix, per-class accuracy, examples
    assert count_outputs(nb, "application/vnd.jupyter.widget-view+json") == 2  # browser, least-sure grid


def test_deploy_starts_the_service_scores_an_image_and_stops_it(trained_root: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLASS_ROOT_DIR", str(trained_root))
    monkeypatch.delenv("IMGCLASS_API_KEY", raising=False)
    nb = execute("deploy.ipynb")
    output = text_of(nb)
    assert "label: mammals" in output  # the bundled cow
    assert "'label': 'mammals'" in output  # /predict's top label
    assert "stopped (exit code" in output and "Shutting down" in output
    assert "FROM python" in output  # the Dockerfile is shown


def test_results_browser_widget_filters_and_scrolls(trained_root: Path) -> None:
    from imgclass.notebook.widgets import ResultsBrowser, least_sure_grid

    results = load_results(DatasetLayout(trained_root, DEMO_DATASET_NAME))
    browser = ResultsBrowser(results)
    assert browser.count_label.value == "46 test image(s)" and bytes(browser.chart.value).startswith(b"\x89PNG")
    browser.class_picker.value = "fish"
    browser.outcome_picker.value = "right"
    assert not browser.rows.empty and set(browser.rows["label"]) == {"fish"} and browser.rows["correct"].all()
    browser.set_filter(None, None, "least sure")
    assert browser.current["margin"] == browser.rows["margin"].min()
    browser.show(1000)
    assert browser.slider.value == 45
    browser.set_filter(None, correct=False)
    assert not browser.rows["correct"].any()
    browser.set_filter("no such class")
    assert browser.current is None and "no test image" in browser.caption.value
    assert len(least_sure_grid(results, n=4).children) == 4


def test_dataset_browser_moves_excludes_and_undoes_through_its_methods(tmp_path: Path) -> None:
    from imgclass.notebook.widgets import DatasetBrowser

    images_dir = make_dataset(tmp_path / "images" / "toy", {"cats": 30, "dogs": 2})
    browser = DatasetBrowser(images_dir, page_size=24)
    assert browser.label == "cats" and len(browser.grid.children) == 24
    assert browser.page_label.value == "images 1-24 of 30, page 1/2"
    browser.turn(+1)
    assert len(browser.grid.children) == 6
    browser.class_picker.value = "dogs"
    assert browser.label == "dogs" and browser.page == 0

    browser.select(["dogs/img_00.jpg"])
    assert browser.move_selected("cats") == ["moved dogs/img_00.jpg -> toy/cats/img_00_1.jpg"]
    browser.select(["dogs/img_01.jpg"])
    assert browser.exclude_selected() == ["excluded dogs/img_01.jpg -> toy_excluded/dogs/img_01.jpg"]
    assert A.class_counts(images_dir) == {"cats": 31, "dogs": 0}
    assert "(0)" in browser.class_picker.options[1][0]
    assert browser.move_selected("cats") == ["nothing ticked"]
    assert browser.undo_last() == ["restored toy/dogs/img_01.jpg"]
    assert browser.undo_all() == ["restored 1 file(s)"]
    assert A.class_counts(images_dir) == {"cats": 30, "dogs": 2}
    assert "0 change(s) that can be undone" in browser.counts.value


def test_start_service_reports_why_the_script_failed(tmp_path: Path) -> None:
    from imgclass.serve.process import ServiceError, start_service

    with pytest.raises(ServiceError, match=r"(?s)exited with code \d.*featurizer.pth does not exist: run scripts/2_refineDNN.py"):
        start_service(root_dir=tmp_path, dataset="nothingTrained", timeout=60)
