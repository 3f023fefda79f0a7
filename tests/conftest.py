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
    path = tmp_path_factory.getbasetemp() / "EMPTY_PARAMETERS.py"
    if not path.exists():
        path.write_text("# defaults only\n")
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
