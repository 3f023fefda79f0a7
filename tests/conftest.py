"""Shared test fixtures.

Every test runs against an empty parameters file (the library's defaults), so
a user's edits to PARAMETERS.py never change test results; scripts started
with subprocess inherit that through the environment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

PROJECT_DIR = Path(__file__).resolve().parents[1]
PYTHON = str(PROJECT_DIR / ".venv" / "bin" / "python")
DEMO_IMAGES = PROJECT_DIR / "resources" / "demoImages"


@pytest.fixture(autouse=True)
def default_parameters_file(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The library's defaults, except MLflow tracking, which only tests/test_tracking.py turns on.

    Tracking starts a worker process that imports MLflow beside every step a
    test runs (seconds each); its own tests use a parameters file of their own.
    """
    path = tmp_path_factory.getbasetemp() / "EMPTY_PARAMETERS.py"
    if not path.exists():
        path.write_text("# defaults only, but no MLflow tracking (tests/test_tracking.py tests it)\n"
                        "mlflow_trackingUri = ''\n")
    monkeypatch.setenv("IMGCLASS_PARAMETERS", str(path))
    return path


def make_photo(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0, fmt: str | None = None) -> Path:
    """A small natural-looking image (gradient + shapes + noise), deterministic by seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = rng.uniform(0, 255, 3)[None, None, :] * (0.5 + 0.5 * x) * (0.5 + 0.5 * y)
    array = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        draw.ellipse((x0, y0, x0 + int(rng.integers(4, width // 2)), y0 + int(rng.integers(4, height // 2))),
                     fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_dataset(root: Path, counts: dict[str, int], size: tuple[int, int] = (64, 48)) -> Path:
    """``root/<class>/img_NN.jpg`` with ``counts[class]`` images each; returns ``root``."""
    for c, (label, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            make_photo(root / label / f"img_{i:02d}.jpg", size, seed=100 * c + i)
    return root


def natural_photo(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A seeded 'photo': smooth colour gradients, a few shapes and sensor noise (not flat colour)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    channels = [rng.uniform(40, 200) + rng.uniform(-80, 80) * x + rng.uniform(-80, 80) * y
                + 30 * np.sin(rng.uniform(2, 9) * x + rng.uniform(0, 6)) for _ in range(3)]
    image = Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
        box = [x0, y0, x0 + rng.uniform(w * 0.1, w * 0.4), y0 + rng.uniform(h * 0.1, h * 0.4)]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    noisy = np.asarray(image, dtype=float) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
