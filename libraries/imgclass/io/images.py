"""Image files: which files count as images, and decoding them robustly to RGB.

Every step that opens an image goes through :func:`load_rgb` (files) or
:func:`decode_image_bytes` (downloads, uploads), so that EXIF orientation,
transparency, palette and 16-bit modes, truncated files and decompression
bombs are handled the same way everywhere. A file that cannot be decoded
raises :class:`UnreadableImageError` with the reason, which callers report
and skip instead of crashing.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from imgclass.errors import ImgClassError

#: File extensions treated as images (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

#: Transparent pixels are composited onto this colour (white, like a page).
BACKGROUND_RGB = (255, 255, 255)


class UnreadableImageError(ImgClassError):
    """A file is not a decodable image (corrupt, truncated, not an image, too large)."""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True if the file name has an image extension (the content is checked on decoding)."""
    name = os.fspath(path)
    return not os.path.basename(name).startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def flatten_to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND_RGB) -> Image.Image:
    """Return an RGB copy of ``image``; transparency is composited onto ``background``.

    Palette images with a transparent colour, LA/RGBA, 16-bit greyscale and
    CMYK all end up as 8-bit RGB.
    """
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _finish_decoding(image: Image.Image, source: str, draft_size: tuple[int, int] | None) -> Image.Image:
    try:
        if draft_size is not None and image.format == "JPEG":
            # Decode large JPEGs at 1/2, 1/4 or 1/8 scale: still >= draft_size on
            # both sides, far cheaper than a full decode followed by a resize.
            image.draft("RGB", draft_size)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = ImageOps.exif_transpose(image)
            image.load()
        return flatten_to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise UnreadableImageError(f"cannot decode {source}: {exc}") from exc


def load_rgb(path: str | os.PathLike[str], draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB with EXIF orientation applied.

    Parameters
    ----------
    path:
        The image file.
    draft_size:
        If given, JPEGs are decoded at the smallest power-of-two reduction that
        is still at least this size (both sides); other formats are unaffected.
    """
    try:
        image = Image.open(path)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"cannot decode {path}: {exc}") from exc
    with image:
        return _finish_decoding(image, str(path), draft_size)


def decode_image_bytes(data: bytes, source: str = "image data",
                       draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode image bytes (a download or an upload) to RGB, like :func:`load_rgb`."""
    if not data:
        raise UnreadableImageError(f"cannot decode {source}: it is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"cannot decode {source}: {exc}") from exc
    return _finish_decoding(image, source, draft_size)


def shrink_to_max_side(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the longer side is at most ``max_side`` (never upscales)."""
    width, height = image.size
    longer = max(width, height)
    if longer <= max_side:
        return image
    scale = max_side / longer
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def save_jpeg(image: Image.Image, path: str | os.PathLike[str], quality: int = 90) -> None:
    """Save an RGB image as JPEG atomically (temporary file + rename)."""
    from imgclass.io.atomic import atomic_path  # local import keeps this module's deps minimal

    with atomic_path(path, suffix=".jpg") as tmp:
        image.save(tmp, format="JPEG", quality=quality, optimize=True)


def list_image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Recursively list ``folder``: (image files, other files), both sorted.

    Hidden files and folders are ignored entirely; the second list is for
    reporting what was skipped.
    """
    images: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            (images if is_image_file(path) else others).append(path)
    return sorted(images), sorted(others)
