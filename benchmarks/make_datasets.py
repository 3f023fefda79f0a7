"""Build the two extra datasets of the accuracy benchmark (issue 15), offline, into ``<root>/images/``.

- ``digits``: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``:
  8x8 greyscale, 10 classes; the UCI "Optical Recognition of Handwritten Digits"
  data, CC BY 4.0, shipped with scikit-learn, BSD-3-Clause). ``--per-class`` images
  of each digit (the first ones in the file), saved as 8x8 greyscale PNGs:
  nothing like ImageNet's photos.
- ``textures``: the texture families of the game OpenArena, from Debian's package
  ``openarena-081-textures`` (GPL-2+; fetched with ``apt-get download``, its pk3
  archive read in place): floors, lights and walls of the "base" set, blocks, floors
  and trims of the "gothic" set, one image per texture, the longer side shrunk to 256 px.

Neither is committed (BENCHMARKS.md says how they were built).

    python benchmarks/make_datasets.py --root=/tmp/bench [--per-class=20] [--datasets=digits,textures]

``--per-class=200`` takes every digit (174-183 of each, 1797 images): the 20 of
the first measurements gave 50 test images per split, too few to tell the
classifiers apart (BENCHMARKS.md, issue 15).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

TEXTURE_CLASSES = ("base_floor", "base_light", "base_wall", "gothic_block", "gothic_floor", "gothic_trim")
PK3 = "usr/share/games/openarena/baseoa/pak4-textures.pk3"


def make_digits(images_dir: Path, per_class: int) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    count = 0
    for label in range(10):
        folder = images_dir / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for n, index in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            pixels = np.round(digits.images[index] / 16 * 255).astype(np.uint8)
            Image.fromarray(255 - pixels, "L").save(folder / f"d{label}_{n:03d}.png")  # dark ink on white
            count += 1
    return count


def make_textures(images_dir: Path, per_class: int) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(["apt-get", "download", "openarena-081-textures"], cwd=scratch, check=True,
                       capture_output=True)
        deb = next(Path(scratch).glob("openarena-081-textures_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), scratch], check=True)
        archive = zipfile.ZipFile(Path(scratch) / PK3)
        count = 0
        for label in TEXTURE_CLASSES:
            names = sorted(n for n in archive.namelist() if n.startswith(f"textures/{label}/")
                           and n.lower().endswith((".jpg", ".tga", ".png")))
            folder = images_dir / label
            folder.mkdir(parents=True, exist_ok=True)
            kept = 0
            for name in names:
                if kept >= per_class:
                    break
                try:
                    image = Image.open(io.BytesIO(archive.read(name))).convert("RGB")
                except OSError:
                    continue
                if min(image.size) < 16:
                    continue
                image.thumbnail((256, 256))
                image.save(folder / (Path(name).stem + ".png"))
                kept += 1
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--datasets", default="digits,textures", help="which of the two to build")
    args = parser.parse_args()
    wanted = set(args.datasets.split(","))
    if "digits" in wanted:
        print("digits:", make_digits(args.root / "images" / "digits", args.per_class), "images")
    if "textures" in wanted:
        print("textures:", make_textures(args.root / "images" / "textures", args.per_class + 10), "images")


if __name__ == "__main__":
    main()
