"""Tests of imgclass.evaluation.plots: each function writes one valid PNG atomically and never crashes on bad images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageColor

from imgclass.evaluation.metrics import confusion_matrix, per_class_accuracy, roc_curves
from imgclass.evaluation.plots import (
    RIGHT_COLOR,
    WRONG_COLOR,
    plot_confusion_matrix,
    plot_example_images,
    plot_per_class_accuracy,
    plot_roc_curves,
)

LABELS = ["cat", "dog", "fox"]


def _check_png(path: Path, min_side: int = 100) -> None:
    """``path`` is a decodable PNG of a reasonable size, and the only file in its folder."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert min(image.size) >= min_side
    # no temporary file left next to it
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def _tiny_data(n_classes: int = 3, n_per_class: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    scores = rng.random((y.size, n_classes)) + 0.7 * np.eye(n_classes)[y]
    return y, scores, scores.argmax(axis=1)


def test_plot_roc_curves(tmp_path):
    y, scores, _ = _tiny_data()
    out = tmp_path / "plots" / "roc.png"  # folder created on demand
    plot_roc_curves(roc_curves(y, scores, 3), LABELS, out)
    _check_png(out, min_side=300)


def test_plot_roc_curves_with_absent_class(tmp_path):
    y = np.array([0, 0, 2, 2])
    scores = np.array([[0.8, 0.1, 0.1], [0.3, 0.3, 0.4], [0.2, 0.1, 0.7], [0.5, 0.2, 0.3]])
    out = tmp_path / "roc.png"
    plot_roc_curves(roc_curves(y, scores, 3), LABELS, out)
    _check_png(out)


def test_plot_roc_curves_label_count_mismatch_writes_nothing(tmp_path):
    y, scores, _ = _tiny_data()
    with pytest.raises(ValueError, match="labels"):
        plot_roc_curves(roc_curves(y, scores, 3), ["cat", "dog"], tmp_path / "roc.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n_classes", [2, 12])
def test_plot_confusion_matrix(tmp_path, n_classes):
    y, _, pred = _tiny_data(n_classes, n_per_class=3)
    labels = [f"class {k} with a rather long name" for k in range(n_classes)]
    out = tmp_path / "cm.png"
    plot_confusion_matrix(confusion_matrix(y, pred, n_classes), labels, out)
    _check_png(out, min_side=300)
    with Image.open(out) as image:
        assert image.width > image.height  # two panels side by side


def test_plot_confusion_matrix_with_empty_row(tmp_path):
    cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 2]])  # class 1 has no samples
    out = tmp_path / "cm.png"
    plot_confusion_matrix(cm, LABELS, out)
    _check_png(out)


def test_plot_confusion_matrix_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(np.zeros((2, 3)), ["a", "b"], tmp_path / "cm.png")
    with pytest.raises(ValueError, match="labels"):
        plot_confusion_matrix(np.zeros((3, 3)), ["a", "b"], tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == []


def test_plot_per_class_accuracy(tmp_path):
    y, _, pred = _tiny_data()
    out = tmp_path / "acc.png"
    plot_per_class_accuracy(per_class_accuracy(y, pred, 3), LABELS, out)
    _check_png(out)


def test_plot_per_class_accuracy_with_nan(tmp_path):
    out = tmp_path / "acc.png"
    plot_per_class_accuracy(np.array([0.5, np.nan, 1.0]), LABELS, out)
    _check_png(out)


def test_plot_overwrites_existing_file(tmp_path):
    out = tmp_path / "acc.png"
    out.write_bytes(b"old")
    plot_per_class_accuracy(np.array([0.5, 1.0]), ["a", "b"], out)
    _check_png(out)


# --- example grid ----------------------------------------------------------------------


def _make_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.new("RGB", (40 + 10 * i, 30), (20 * i, 120, 200)).save(path)
        paths.append(path)
    return paths


def _count_color(path: Path, hex_color: str, tolerance: int = 30) -> int:
    target = np.array(ImageColor.getrgb(hex_color))
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(pixels - target).max(axis=-1) <= tolerance).sum())


def test_plot_example_images(tmp_path):
    paths = _make_images(tmp_path / "images", 4)
    out = tmp_path / "out" / "examples.png"
    plot_example_images(paths, ["a", "a", "b", "b"], ["a", "b", "b", "a"], [0.9, 0.6, 0.8, 0.55],
                        out, columns=3)
    _check_png(out)
    assert _count_color(out, RIGHT_COLOR) > 50
    assert _count_color(out, WRONG_COLOR) > 50


def test_plot_example_images_colours_follow_correctness(tmp_path):
    paths = _make_images(tmp_path / "images", 2)
    out = tmp_path / "out" / "right.png"
    plot_example_images(paths, ["a", "b"], ["a", "b"], [0.9, 0.8], out)
    assert _count_color(out, RIGHT_COLOR) > 50
    assert _count_color(out, WRONG_COLOR) == 0


def test_plot_example_images_handles_unreadable_files(tmp_path):
    paths = _make_images(tmp_path / "images", 1)
    corrupt = tmp_path / "images" / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a jpeg")
    missing = tmp_path / "images" / "missing.png"
    out = tmp_path / "out" / "examples.png"
    plot_example_images([paths[0], corrupt, missing], ["a", "b", "a"], ["a", "b", "b"],
                        [0.9, 0.7, 0.4], out)
    _check_png(out)


def test_plot_example_images_empty(tmp_path):
    out = tmp_path / "examples.png"
    plot_example_images([], [], [], [], out)
    _check_png(out, min_side=50)


def test_plot_example_images_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        plot_example_images(["x.png"], ["a"], [], [0.5], tmp_path / "examples.png")
    with pytest.raises(ValueError, match="columns"):
        plot_example_images(["x.png"], ["a"], ["a"], [0.5], tmp_path / "examples.png", columns=0)
    assert list(tmp_path.iterdir()) == []
