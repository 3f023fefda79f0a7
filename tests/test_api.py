"""Tests of imgclass.api: the ImageClassifier public API (fit a folder, predict, save, load) and the README example."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_IMAGES, PROJECT_DIR
from imgclass import ImageClassifier
from imgclass.errors import DatasetError
from imgclass.io.images import UnreadableImageError, load_rgb
from imgclass.model.predictor import Predictor

LITE0 = dict(backbone="efficientnet_lite0", resolution=96, run_workers=0, run_precision="fp32", cv=3,
             C_values=(0.1, 1.0, 10.0))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six demo photos of each of three classes (real images: the classes are learnable), plus a non-image."""
    root = tmp_path_factory.mktemp("api") / "images"
    for label, target in (("birds", "a"), ("fish", "b"), ("fruit", "c")):
        for i, source in enumerate(sorted((DEMO_IMAGES / label).glob("*.jpg"))[:6]):
            (root / target).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, root / target / f"img_{i:02d}.jpg")
    (root / "a" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def trained(dataset: Path) -> ImageClassifier:
    return ImageClassifier(**LITE0).fit(dataset)


def test_fit_predicts_paths_and_images_in_order(trained: ImageClassifier, dataset: Path) -> None:
    assert trained.classes_ == ["a", "b", "c"]
    paths = [dataset / "c" / "img_00.jpg", dataset / "a" / "img_01.jpg"]
    # decoded as the file path is (JPEGs at reduced scale), so both routes see the same pixels
    pictures = [load_rgb(p, draft_size=trained.predictor.transform.draft_size) for p in paths]
    mixed = [paths[0], pictures[1]]
    by_path, by_image, by_mix = (trained.predict_proba(x) for x in (paths, pictures, mixed))
    np.testing.assert_allclose(by_path.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(by_path, by_image, atol=1e-4)  # same decode and transform either way
    np.testing.assert_allclose(by_mix, by_path, atol=1e-4)
    assert trained.predict(paths) == [trained.classes_[i] for i in by_path.argmax(axis=1)]
    assert trained.predict([]) == []


def test_training_images_are_learned(trained: ImageClassifier, dataset: Path) -> None:
    files = sorted(dataset.glob("*/*.jpg"))
    predicted = trained.predict(files)
    correct = sum(p == f.parent.name for p, f in zip(predicted, files))
    assert correct >= 0.8 * len(files)  # a linear SVM on its own training features


def test_save_and_load_give_the_same_model(trained: ImageClassifier, dataset: Path, tmp_path: Path) -> None:
    folder = trained.save(tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {"featurizer.pth", "svm.joblib", "svm.json"}
    loaded = ImageClassifier.load(folder, run_device="cpu", run_precision="fp32", run_workers=0)
    files = sorted(dataset.glob("*/*.jpg"))[:5]
    np.testing.assert_allclose(loaded.predict_proba(files), trained.predict_proba(files), atol=1e-6)
    assert (loaded.backbone, loaded.resolution) == ("efficientnet_lite0", 96)
    # the same files are what the service and batch scoring load
    predictor = Predictor.load(folder / "featurizer.pth", folder / "svm.joblib", folder / "svm.json")
    assert predictor.labels == ["a", "b", "c"]


def test_bad_input_is_a_clear_error(trained: ImageClassifier, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        trained.predict([broken])
    with pytest.raises(DatasetError, match="not trained"):
        ImageClassifier().predict([broken])
    with pytest.raises(DatasetError, match="not found"):
        ImageClassifier(**LITE0).fit(tmp_path / "missing")


def test_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "resources").symlink_to(PROJECT_DIR / "resources")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "['fish']" in result.stdout
    assert (tmp_path / "models" / "demo" / "svm.json").is_file()
