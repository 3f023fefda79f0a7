"""Turning a decoded image into the network's square input.

Two resize modes, chosen by ``rf_resizeMode``:

- ``pad``: scale the longer side to the resolution and pad the rest with the
  backbone's mean colour (normalised to zero). The whole object stays in view;
  this is what the original CNTK tutorial did.
- ``crop``: scale the shorter side to ``resolution / 0.875`` and cut the
  centre square, as torchvision's ImageNet evaluation does. Objects near the
  border may be cut off.

The output is a ``uint8`` tensor ``(3, R, R)`` (or, from :meth:`EvalTransform.to_array`,
an ``(R, R, 3)`` array, which batches into channels-last without a copy):
normalisation happens inside the model (see :mod:`imgclass.model.backbones`),
which keeps batches 4x smaller on their way from the loader processes and to
the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

#: torchvision's ImageNet evaluation crops 224 px out of 256 px.
CROP_FRACTION = 0.875
RESIZE_MODES = ("pad", "crop")


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    # reducing_gap: a fast box pre-reduction for big downscales, then a bilinear pass.
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _pad_placement(size: tuple[int, int], resolution: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(scaled size, top-left offset) of an image of ``size`` centred on the padded square."""
    width, height = size
    scale = resolution / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return new_size, ((resolution - new_size[0]) // 2, (resolution - new_size[1]) // 2)


def scale_and_pad(image: Image.Image, resolution: int, fill: tuple[int, int, int]) -> Image.Image:
    """Scale the longer side to ``resolution`` and centre the image on a square of ``fill``."""
    new_size, offset = _pad_placement(image.size, resolution)
    canvas = Image.new("RGB", (resolution, resolution), fill)
    canvas.paste(_resize(image, new_size), offset)
    return canvas


def resize_and_centre_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Scale the shorter side to ``resolution / 0.875`` and cut the centre square."""
    width, height = image.size
    short = max(resolution, round(resolution / CROP_FRACTION))
    scale = short / min(width, height)
    new_width, new_height = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    left, top = (new_width - resolution) // 2, (new_height - resolution) // 2
    return _resize(image, (new_width, new_height)).crop((left, top, left + resolution, top + resolution))


@dataclass(frozen=True)
class EvalTransform:
    """Deterministic PIL RGB image -> ``uint8`` tensor ``(3, R, R)``."""

    resolution: int
    resize_mode: str = "pad"
    fill: tuple[int, int, int] = (128, 128, 128)

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")

    @property
    def draft_size(self) -> tuple[int, int]:
        """Decode size for :func:`imgclass.io.images.load_rgb`: JPEGs are decoded at reduced scale down to it.

        PIL reduces a JPEG by the largest power of two (up to 8) that keeps
        width >= ``draft_size[0]`` and height >= ``draft_size[1]``. ``crop``
        needs the shorter side >= R/0.875: ``(S, S)``. ``pad`` needs only the
        longer side >= R: ``(R, 1)`` keeps the width >= R, which is exact for
        JPEGs stored in landscape (most camera files, whatever their EXIF
        rotation) and merely conservative for portrait ones. A 1000x750 JPEG
        is then decoded at 1/4 scale (250x188) instead of 1/2.
        """
        if self.resize_mode == "pad":
            return (self.resolution, 1)
        side = round(self.resolution / CROP_FRACTION)
        return (side, side)

    def to_square(self, image: Image.Image) -> Image.Image:
        if self.resize_mode == "pad":
            return scale_and_pad(image, self.resolution, self.fill)
        return resize_and_centre_crop(image, self.resolution)

    def to_array(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """The square as an ``(R, R, 3)`` uint8 array, written into ``out`` if given.

        Same pixels as :meth:`to_square`; for ``pad`` the canvas is filled in
        numpy and only the scaled image is converted, one copy fewer.
        """
        side = self.resolution
        if out is None:
            out = np.empty((side, side, 3), dtype=np.uint8)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.resize_mode == "pad":
            new_size, (left, top) = _pad_placement(image.size, side)
            out[...] = self.fill
            out[top:top + new_size[1], left:left + new_size[0]] = np.asarray(_resize(image, new_size))
        else:
            out[...] = np.asarray(self.to_square(image))
        return out

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return chw_tensor(self.to_array(image))


def chw_tensor(array_hwc: np.ndarray) -> torch.Tensor:
    """``(R, R, 3)`` array -> contiguous ``(3, R, R)`` tensor (a numpy copy: no thread-pool start-up)."""
    return torch.from_numpy(np.ascontiguousarray(array_hwc.transpose(2, 0, 1)))


def mean_fill(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The padding colour that normalises to zero for a backbone with this mean."""
    return tuple(int(round(m * 255)) for m in mean)  # type: ignore[return-value]
