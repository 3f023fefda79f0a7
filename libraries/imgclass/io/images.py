"""Image files: which files count as images, and decoding them robustly to RGB.

Every step that opens an image goes through :func:`load_rgb` (files) or
:func:`decode_image_bytes` (downloads, uploads), so that EXIF orientation,
transparency, palette and 16-bit modes, truncated files and decompression
bombs are handled the same way everywhere. A file that cannot be decoded
raises :class:`UnreadableImageError` with the reason, which callers report
and skip instead of crashing.

Images are untrusted input (uploads, scraped files, a shared dataset), so
decoding is bounded before any pixel is decoded:

- only the formats of :data:`DECODED_FORMATS` are opened (Pillow knows many
  more, some of which run external programs, e.g. EPS through Ghostscript);
- the size in the header is checked against a pixel budget (``max_pixels``)
  *after* reduced-scale JPEG decoding is set up, i.e. against what will
  really be decoded: a 27 KB PNG that says 13000 x 13000 is refused before
  its 169 million pixels are inflated, a baseline JPEG of that size is
  decoded at 1/8 scale. A progressive JPEG's full size counts (libjpeg holds
  all its coefficients whatever the scale it decodes at). The
  pipeline's default is :data:`DEFAULT_MAX_PIXELS`; the service passes
  ``images_maxPixels``;
- no decoded copy is made that is not needed (an RGB image is returned as
  decoded; EXIF rotation happens in place).

No process-global state is changed per call: ``warnings.catch_warnings()``
is not thread-safe (a burst of concurrent requests once left an ``error``
filter behind that turned later large images into HTTP 500s). Pillow's own
limits stay as they are: above ``2 * Image.MAX_IMAGE_PIXELS`` it raises
:class:`~PIL.Image.DecompressionBombError`, above ``Image.MAX_IMAGE_PIXELS``
it warns (through the process's warning filters); both, and anything else a
malformed file makes Pillow raise, become :class:`UnreadableImageError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from imgclass.errors import ImgClassError

#: File extensions treated as images (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

#: The formats decoded (Pillow's names), those of :data:`IMAGE_EXTENSIONS`; JPEG includes MPO, the
#: multi-picture JPEG some cameras write. A file in any other format is unreadable, whatever its extension says.
DECODED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

#: Formats that can be decoded at 1/2, 1/4 or 1/8 scale (``draft_size``).
_DRAFT_FORMATS = ("JPEG", "MPO")

#: Pixel budget of the pipeline (files of the user's own dataset, batch scoring, downloads), counted after
#: reduced-scale JPEG decoding: Pillow's own warning threshold (about 89.5 MP, 268 MB as RGB), so a camera's
#: 100 MP JPEG still decodes at reduced scale while a 200 MP PNG does not. The service has its own, smaller
#: budget (``images_maxPixels``).
DEFAULT_MAX_PIXELS = 89_478_485

#: Transparent pixels are composited onto this colour (white, like a page).
BACKGROUND_RGB = (255, 255, 255)


class UnreadableImageError(ImgClassError):
    """A file is not a decodable image (corrupt, truncated, not an image, too large)."""


class ImageTooLargeError(UnreadableImageError):
    """An image has more pixels than the decoding budget allows (found in its header, before decoding)."""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True if the file name has an image extension (the content is checked on decoding)."""
    name = os.fspath(path)
    return not os.path.basename(name).startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def flatten_to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND_RGB) -> Image.Image:
    """``image`` as 8-bit RGB; transparency is composited onto ``background``.

    Palette images with a transparent colour, LA/RGBA, 16-bit greyscale and
    CMYK all end up as 8-bit RGB. An RGB image is returned as it is (no copy).
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image if image.mode == "RGB" else image.convert("RGB")


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def _progressive(image: Image.Image) -> bool:
    """A progressive JPEG: libjpeg holds all its coefficients in memory whatever the scale it decodes at
    (a 90 MP one took 267 MB at 1/8 scale, a baseline one 9 MB), so its full size counts against the budget."""
    return bool(image.info.get("progressive") or image.info.get("progression"))


def _decode(file: BinaryIO, source: str, draft_size: tuple[int, int] | None, max_pixels: int) -> Image.Image:
    """Open, check the pixel budget, decode (at reduced scale where possible) and flatten to RGB."""
    try:
        # Pillow raises many exception types for a malformed file (OSError, SyntaxError, struct.error,
        # IndexError, ...), and DecompressionBombError/Warning for bombs: for untrusted bytes every one of
        # them means "unreadable". Only Pillow's calls are inside this try.
        image = Image.open(file, formats=DECODED_FORMATS)
        width, height = image.size  # what decoding will cost, in pixels
        if draft_size is not None and image.format in _DRAFT_FORMATS:
            # Decode large JPEGs at 1/2, 1/4 or 1/8 scale: still >= draft_size on
            # both sides, far cheaper than a full decode followed by a resize.
            image.draft("RGB", draft_size)
            if not _progressive(image):  # a progressive one costs its full size whatever the scale
                width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(f"cannot decode {source}: {width}x{height} pixels "
                                     f"({_megapixels(width * height)}) is over the limit of "
                                     f"{_megapixels(max_pixels)}")
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return flatten_to_rgb(image)
    except UnreadableImageError:
        raise
    except Exception as exc:  # DecompressionBombWarning too, where warning filters make it an error
        # Pillow names an in-memory buffer "<_io.BytesIO object at 0x...>": say what it is instead
        raise UnreadableImageError(f"cannot decode {source}: {_BUFFER_REPR.sub('the data', str(exc))}") from exc


def load_rgb(path: str | os.PathLike[str], draft_size: tuple[int, int] | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file as 8-bit RGB with EXIF orientation applied.

    Parameters
    ----------
    path:
        The image file.
    draft_size:
        If given, JPEGs are decoded at the smallest power-of-two reduction that
        is still at least this size (both sides); other formats are unaffected.
    max_pixels:
        Larger images (width x height as decoded, i.e. after the JPEG
        reduction) raise :class:`ImageTooLargeError` before they are decoded.
    """
    try:
        file = open(path, "rb")
    except OSError as exc:
        raise UnreadableImageError(f"cannot decode {path}: {exc}") from exc
    with file:
        return _decode(file, str(path), draft_size, max_pixels)


class InvalidBase64Error(ImgClassError, ValueError):
    """A string that should carry an image in base64 does not."""


_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")
_BASE64_WHITESPACE = b" \t\r\n\f\v"


def decode_base64_image(text: object, source: str) -> bytes:
    """The bytes of a base64 image string (plain, or a ``data:...;base64,`` URL), as requests send them.

    White space inside the text is ignored. :class:`InvalidBase64Error` names
    ``source`` when ``text`` is not a string or not valid base64.
    """
    if not isinstance(text, str):
        raise InvalidBase64Error(f"{source} must be a base64 string, not {type(text).__name__}")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        # bytes.translate, not "".join(text.split()): a string of a million spaces must not become a
        # million string objects
        return base64.b64decode(text.encode("ascii").translate(None, _BASE64_WHITESPACE), validate=True)
    except (binascii.Error, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidBase64Error(f"{source} is not valid base64: {str(exc)[:200]}") from None


def decode_image_bytes(data: bytes, source: str = "image data", draft_size: tuple[int, int] | None = None,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes (a download or an upload) to RGB, like :func:`load_rgb`."""
    if not data:
        raise UnreadableImageError(f"cannot decode {source}: it is empty")
    return _decode(io.BytesIO(data), source, draft_size, max_pixels)


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
