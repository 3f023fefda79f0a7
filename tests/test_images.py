"""Image decoding: odd modes, EXIF orientation, corrupt files, JPEG draft decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclass.io.images import (UnreadableImageError, decode_image_bytes, is_image_file, list_image_files, load_rgb,
                             shrink_to_max_side)

from conftest import make_photo


def test_transparency_is_composited_onto_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "a.png")
    image = load_rgb(tmp_path / "a.png")
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 0) and image.getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["P", "L", "LA", "I;16", "CMYK", "1"])
def test_odd_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    image = Image.new(mode, (5, 3))
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image.save(path)
    decoded = load_rgb(path)
    assert decoded.mode == "RGB" and decoded.size == (5, 3)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (20, 40)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0garbage"])
def test_undecodable_content_raises_a_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.jpg").write_bytes(content)
    with pytest.raises(UnreadableImageError, match="bad.jpg"):
        load_rgb(tmp_path / "bad.jpg")
    with pytest.raises(UnreadableImageError, match="upload"):
        decode_image_bytes(content, "upload")


def test_truncated_jpeg_is_unreadable(tmp_path: Path) -> None:
    path = make_photo(tmp_path / "full.jpg", (200, 150))
    (tmp_path / "cut.jpg").write_bytes(path.read_bytes()[:300])
    with pytest.raises(UnreadableImageError):
        load_rgb(tmp_path / "cut.jpg")


def test_draft_decodes_large_jpegs_at_reduced_size(tmp_path: Path) -> None:
    path = make_photo(tmp_path / "big.jpg", (2000, 1500))
    assert load_rgb(path).size == (2000, 1500)
    small = load_rgb(path, draft_size=(224, 224))
    assert min(small.size) >= 224 and small.size[0] <= 500
    png = make_photo(tmp_path / "big.png", (600, 450))
    assert load_rgb(png, draft_size=(224, 224)).size == (600, 450)  # not a JPEG: unaffected


def test_decode_bytes_matches_file_decoding(tmp_path: Path) -> None:
    path = make_photo(tmp_path / "p.png", (30, 20))
    assert np.array_equal(np.asarray(decode_image_bytes(path.read_bytes())), np.asarray(load_rgb(path)))


def test_shrink_to_max_side() -> None:
    image = Image.new("RGB", (3000, 1000))
    assert shrink_to_max_side(image, 1000).size == (1000, 333)
    assert shrink_to_max_side(image, 5000) is image


def test_image_file_listing(tmp_path: Path) -> None:
    assert is_image_file("a/b.JPG") and is_image_file("x.webp") and not is_image_file("x.txt")
    assert not is_image_file(".hidden.jpg")
    make_photo(tmp_path / "b" / "2.png")
    make_photo(tmp_path / "a" / "1.jpg")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.jpg").write_bytes(b"")
    images, others = list_image_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["a/1.jpg", "b/2.png"]
    assert [p.name for p in others] == ["notes.txt"]
