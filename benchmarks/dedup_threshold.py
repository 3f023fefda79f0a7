"""Measure the dhash Hamming distances of copies vs. distinct photos, to choose ``dedup_maxDistance``.

For every real photo in a folder (default: the 179 demo photos under
``resources/demoImages/``) this makes the copies a web search returns -- resized
to 75% and 50%, recompressed as JPEG at quality 70, 60 and 50, and resized and
recompressed together -- and hashes them with the same code as
``scripts/removeDuplicates.py`` (``imgclass.data.dedup.dhash_file``). It prints, for
each kind of copy, the distances to its original, then the closest pairs of
distinct photos, then for candidate thresholds how many copies are caught and
how many distinct pairs would be merged.

Usage::

    python benchmarks/dedup_threshold.py [--images=FOLDER] [--hashSize=16]
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from imgclass.data.dedup import dhash_file, hamming, near_duplicate_pairs
from imgclass.io.images import list_image_files, load_rgb

PROJECT_DIR = Path(__file__).resolve().parents[1]

COPIES = {
    "resized 75%": (0.75, None),
    "resized 50%": (0.50, None),
    "JPEG quality 70": (1.0, 70),
    "JPEG quality 60": (1.0, 60),
    "JPEG quality 50": (1.0, 50),
    "resized 75% + q60": (0.75, 60),
    "resized 50% + q50": (0.50, 50),
}
#: Web photos are rarely smaller; tiny images have the least stable hashes.
LARGE_SIDE = 150
THRESHOLDS = (0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 32)


def make_copy(image: Image.Image, scale: float, quality: int | None) -> bytes:
    if scale != 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality or 90)
    return buffer.getvalue()


def main(argv: list[str]) -> None:
    options = dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
    folder = Path(options.get("images", PROJECT_DIR / "resources" / "demoImages"))
    hash_size = int(options.get("hashSize", 16))
    files, _ = list_image_files(folder)
    print(f"{len(files)} photos from {folder}, dhash hash_size={hash_size} ({hash_size ** 2} bits)")
    originals = [dhash_file(path, hash_size)[0] for path in files]
    sides = np.array([max(dhash_file(path, hash_size)[1:]) for path in files])
    copy_distances: dict[str, list[int]] = {name: [] for name in COPIES}
    with tempfile.TemporaryDirectory() as tmp:
        for number, path in enumerate(files):
            image = load_rgb(path)
            for name, (scale, quality) in COPIES.items():
                copy_path = Path(tmp) / f"{number}.jpg"
                copy_path.write_bytes(make_copy(image, scale, quality))
                copy_distances[name].append(hamming(originals[number], dhash_file(copy_path, hash_size)[0]))

    large = sides >= LARGE_SIDE
    for title, subset in ((f"all {len(files)} photos", np.ones(len(files), bool)),
                          (f"the {large.sum()} photos with a side >= {LARGE_SIDE} px", large)):
        print(f"\ncopy vs. its original, {title}")
        print("                             min  median  p95   p99   max")
        for name, values in copy_distances.items():
            v = np.array(values)[subset]
            print(f"  {name:<24} {v.min():5d} {np.median(v):7.1f} {np.percentile(v, 95):5.1f} "
                  f"{np.percentile(v, 99):5.1f} {v.max():5d}")
    all_copies = np.concatenate([np.array(v) for v in copy_distances.values()])

    n = len(originals)
    distinct = np.array([hamming(originals[i], originals[j]) for i in range(n) for j in range(i + 1, n)])
    print(f"\ndistinct pairs ({len(distinct)}): min {distinct.min()}, 0.1% {np.percentile(distinct, 0.1):.1f}, "
          f"1% {np.percentile(distinct, 1):.1f}, median {np.median(distinct):.1f}")
    print("closest distinct pairs:")
    for i, j, d in sorted(near_duplicate_pairs(originals, int(np.sort(distinct)[9]), hash_size ** 2),
                          key=lambda p: p[2])[:10]:
        print(f"  {d:4d}  {files[i].relative_to(folder)}  {files[j].relative_to(folder)}")

    print(f"\nthreshold  copies caught (all)     (side >= {LARGE_SIDE})   distinct pairs merged")
    for t in THRESHOLDS:
        caught = (all_copies <= t).mean()
        large_copies = np.concatenate([np.array(v)[large] for v in copy_distances.values()])
        print(f"  {t:7d}  {100 * caught:6.2f}% ({(all_copies <= t).sum():4d}/{all_copies.size})"
              f"  {100 * (large_copies <= t).mean():6.2f}%"
              f"   {(distinct <= t).sum():5d} ({100 * (distinct <= t).mean():.3f}%)")


if __name__ == "__main__":
    main(sys.argv[1:])
