"""Image decoding: odd modes, EXIF orientation, corrupt files, JPEG draft decoding; hostile files (decompression
bombs refused from their header, formats outside the list, mangled bytes) and thread safety (issue 12).

The crafted files (:func:`png_bomb`, :func:`gif_frame_bomb`, :func:`jpeg_declaring`) are also what
tests/test_hostile.py sends to the running service.
"""

from __future__ import annotations

import io
import random
import struct
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclass.io.images import (DEFAULT_MAX_PIXELS, ImageTooLargeError, UnreadableImageError, decode_image_bytes,
                                flatten_to_rgb, is_image_file, list_image_files, load_rgb, shrink_to_max_side)

from conftest import make_photo

#: Pillow warns above 89.5 MP through the process's filters; several hostile files here are that large on purpose
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


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


# --------------------------------------------------------------------------- hostile files (issue 12)
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A real, decodable all-black 1-bit PNG of ``width`` x ``height``: about 20 KB for 13000 x 13000."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def gif_frame_bomb(width: int, height: int) -> bytes:
    """A GIF with a 1 x 1 screen whose first frame claims ``width`` x ``height`` (Pillow grows the image to it)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0x80) + b"\x00\x00\x00\xff\xff\xff"
    return screen + frame + b"\x02\x02\x44\x01\x00;"


def jpeg_declaring(width: int, height: int, progressive: bool = False) -> bytes:
    """A small baseline (or progressive) JPEG whose frame header is patched to say ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="JPEG", progressive=progressive)
    data = bytearray(buffer.getvalue())
    marker = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[marker + 5:marker + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_bytes(size: tuple[int, int], progressive: bool = False) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 90, 160)).save(buffer, format="JPEG", quality=60, progressive=progressive)
    return buffer.getvalue()


def test_a_bomb_is_refused_from_its_header_before_any_pixel_is_decoded(tmp_path: Path) -> None:
    bomb = png_bomb(13000, 13000)
    assert len(bomb) < 50_000
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=r"13000x13000 pixels \(169.0 MP\) is over the limit of 40.0 MP"):
        decode_image_bytes(bomb, "upload", max_pixels=40_000_000)
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        load_rgb(tmp_path / "bomb.png")  # the pipeline's budget (Pillow's warning threshold) refuses it too
    assert time.perf_counter() - start < 1.0  # inflating 169 million pixels takes seconds
    assert 169_000_000 > DEFAULT_MAX_PIXELS


def test_the_budget_counts_what_is_decoded_so_a_reduced_jpeg_fits() -> None:
    baseline = jpeg_bytes((2000, 1500))
    with pytest.raises(ImageTooLargeError, match="2000x1500"):
        decode_image_bytes(baseline, max_pixels=1_000_000)
    assert decode_image_bytes(baseline, draft_size=(224, 224), max_pixels=1_000_000).size == (500, 375)
    # libjpeg holds every coefficient of a progressive JPEG whatever the scale: its full size counts
    progressive = jpeg_bytes((2000, 1500), progressive=True)
    with pytest.raises(ImageTooLargeError, match="2000x1500"):
        decode_image_bytes(progressive, draft_size=(224, 224), max_pixels=1_000_000)
    assert decode_image_bytes(progressive, draft_size=(224, 224), max_pixels=4_000_000).size == (500, 375)


@pytest.mark.parametrize("data, words", [
    (gif_frame_bomb(9000, 9000), "9000x9000"),             # over the budget, under Pillow's limits
    (gif_frame_bomb(60000, 60000), "decompression bomb"),  # over Pillow's hard limit
    (jpeg_declaring(30000, 30000), "decompression bomb"),
    (jpeg_declaring(12000, 12000, progressive=True), "12000x12000"),
])
def test_bombs_of_every_kind_are_unreadable_not_a_crash(data: bytes, words: str) -> None:
    with pytest.raises(UnreadableImageError, match=words):
        decode_image_bytes(data, "upload", draft_size=(224, 1), max_pixels=40_000_000)


def test_a_baseline_jpeg_within_the_budget_at_reduced_scale_is_decoded_small() -> None:
    """13000 x 13000 in the header, decoded at 1/8 scale: 1625 x 1625 fits 40 MP (libjpeg pads the missing data)."""
    image = decode_image_bytes(jpeg_declaring(13000, 13000), draft_size=(224, 1), max_pixels=40_000_000)
    assert image.size == (1625, 1625)


@pytest.mark.parametrize("fmt, name", [("PPM", "x.jpg"), ("ICO", "x.png"), ("PCX", "x.bmp"), ("TGA", "x.gif")])
def test_formats_outside_the_list_are_unreadable_whatever_the_extension(tmp_path: Path, fmt: str, name: str) -> None:
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / name, format=fmt)
    with pytest.raises(UnreadableImageError):
        load_rgb(tmp_path / name)


def test_postscript_is_never_handed_to_ghostscript(tmp_path: Path) -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"
    with pytest.raises(UnreadableImageError):
        decode_image_bytes(eps)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes about the broken TIFF tags
def test_mangled_files_are_unreadable_or_decoded_never_another_error() -> None:
    rng = random.Random(12)
    originals = []
    for fmt in ("PNG", "GIF", "BMP", "TIFF", "WEBP", "JPEG"):
        buffer = io.BytesIO()
        Image.new("RGB", (24, 16), (10, 200, 30)).save(buffer, format=fmt)
        originals.append(buffer.getvalue())
    for _ in range(300):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(1, len(data))]
        try:
            image = decode_image_bytes(bytes(data), max_pixels=1_000_000)
        except UnreadableImageError:
            continue
        assert image.mode == "RGB"


def test_decoding_never_touches_the_warning_filters_even_from_many_threads() -> None:
    """``warnings.catch_warnings()`` per call is not thread-safe: it once left an 'error' filter behind."""
    before = list(warnings.filters)
    inputs = [png_bomb(13000, 13000), jpeg_declaring(9500, 9500), jpeg_bytes((64, 48)), b"not an image"] * 12

    def decode(data: bytes) -> str:
        try:
            decode_image_bytes(data, draft_size=(224, 1), max_pixels=40_000_000)
            return "ok"
        except UnreadableImageError:
            return "unreadable"

    with warnings.catch_warnings():  # keep Pillow's one-off warning out of the test output
        warnings.simplefilter("ignore")
        inside = list(warnings.filters)
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(decode, inputs))
        assert list(warnings.filters) == inside
    assert list(warnings.filters) == before
    assert results.count("ok") == 24 and results.count("unreadable") == 24


def test_a_process_that_turns_warnings_into_errors_gets_an_unreadable_image() -> None:
    """Above Pillow's warning threshold (89.5 MP) the warning is the process's business; as an error it is a
    reported bad image, never an exception of another type."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(UnreadableImageError, match="decompression bomb"):
            decode_image_bytes(jpeg_declaring(9500, 9500), draft_size=(224, 1), max_pixels=40_000_000)


def test_an_rgb_image_is_not_copied_again() -> None:
    image = Image.new("RGB", (8, 8))
    assert flatten_to_rgb(image) is image


def test_a_bomb_in_a_dataset_is_a_reported_skip_of_the_pipelines_loader(tmp_path: Path) -> None:
    """Step 3, refinement and batch scoring load through ImageDataset: a bomb is a reported row, not a crash."""
    from imgclass.model.dataset import ImageDataset
    from imgclass.model.transforms import EvalTransform

    (tmp_path / "bomb.png").write_bytes(png_bomb(13000, 13000))
    good = make_photo(tmp_path / "good.jpg")
    batch = ImageDataset([tmp_path / "bomb.png", good], EvalTransform(32)).__getitems__([0, 1])
    assert "bomb.png" in batch.errors[0] and "over the limit" in batch.errors[0]
    assert batch.errors[1] == "" and batch.readable.tolist() == [False, True]
    assert not batch.images[0].numpy().any()
