"""Turning a decoded image into the network's square input: for evaluation and for training.

Two resize modes for evaluation, chosen by ``rf_resizeMode``:

- ``pad``: scale the longer side to the resolution and pad the rest with the
  backbone's mean colour (normalised to zero). The whole object stays in view;
  this is what the original CNTK tutorial did.
- ``crop``: scale the shorter side to ``resolution / crop_fraction`` and cut
  the centre square, as the backbone's own evaluation does (torchvision's
  ImageNet ResNets: 224 px out of 256, a fraction of 0.875). Objects near the
  border may be cut off.

Training (:class:`TrainTransform`) pads with a margin, then crops at random and
flips, with optional colour jitter.

Test-time augmentation (``run_tta``) is not a transform of the image but of
the network: :func:`with_tta` wraps the network so that each image's output is
the mean of the outputs of the image and of its mirror (:class:`FlipAveraged`),
of the image at its size and enlarged (:class:`ScaleAveraged`), or of all four.
The featurizer stores the mode in ``featurizer.pth`` and applies it in
:attr:`~imgclass.model.featurizer.Featurizer.network`, so step 3, refinement's
validation, serving, batch scoring and Spark all get it without code of their
own.

Every transform writes an ``(R, R, 3)`` ``uint8`` array (:meth:`to_array`), which
batches into channels-last without a copy (see :mod:`imgclass.model.dataset`);
normalisation happens inside the model (see :mod:`imgclass.model.backbones`),
which keeps batches 4x smaller on their way from the loader processes and to
the GPU. Each transform also says at what reduced scale a JPEG may be decoded
for it (:attr:`draft_size`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

#: torchvision's ImageNet evaluation crops 224 px out of 256 px (ResNet IMAGENET1K_V1 weights).
DEFAULT_CROP_FRACTION = 0.875
RESIZE_MODES = ("pad", "crop")
#: Test-time augmentation modes: ``none``; ``flip`` (the mean over the image and its left-right mirror);
#: ``scales`` (the mean over the image as it is and enlarged by :data:`TTA_SCALES`); ``flip+scales`` (all four).
TTA_MODES = ("none", "flip", "scales", "flip+scales")
#: The sizes ``scales`` shows the network, relative to the input resolution (BENCHMARKS.md, issue 15).
TTA_SCALES = (1.0, 1.5)


class BackbonePreprocessing(Protocol):
    """What a transform needs to know about a backbone (its :class:`~imgclass.model.backbones.BackboneSpec`)."""

    @property
    def mean(self) -> tuple[float, float, float]: ...

    @property
    def crop_fraction(self) -> float: ...


class ImageTransform(Protocol):
    """What :class:`imgclass.model.dataset.ImageDataset` needs of a transform."""

    @property
    def resolution(self) -> int: ...

    @property
    def draft_size(self) -> tuple[int, int]: ...

    def to_array(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray: ...


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    # reducing_gap: a fast box pre-reduction for big downscales, then a bilinear pass.
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _pad_placement(size: tuple[int, int], resolution: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(scaled size, top-left offset) of an image of ``size`` centred on the padded square."""
    width, height = size
    scale = resolution / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return new_size, ((resolution - new_size[0]) // 2, (resolution - new_size[1]) // 2)


def _padded(image: Image.Image, side: int, fill: tuple[int, int, int], out: np.ndarray) -> np.ndarray:
    """Write ``image`` scaled to fit ``side`` and centred on a ``fill`` square into ``out`` (side, side, 3).

    The canvas is filled in numpy and only the scaled image is converted: one
    copy fewer than pasting onto a PIL canvas, same pixels.
    """
    new_size, (left, top) = _pad_placement(image.size, side)
    out[...] = fill
    out[top:top + new_size[1], left:left + new_size[0]] = np.asarray(_resize(image, new_size))
    return out


def _pad_draft_size(side: int) -> tuple[int, int]:
    """Draft size for a padded square of ``side``: only the longer side must stay >= ``side``.

    PIL reduces a JPEG by the largest power of two (up to 8) that keeps width
    >= ``draft_size[0]`` and height >= ``draft_size[1]``. ``(side, 1)`` keeps
    the width >= side, which is exact for JPEGs stored in landscape (most
    camera files, whatever their EXIF rotation) and merely conservative for
    portrait ones. A 1000x750 JPEG is then decoded at 1/4 scale (250x188)
    for a 224 px square instead of 1/2.
    """
    return (side, 1)


def resize_and_centre_crop(image: Image.Image, resolution: int,
                           crop_fraction: float = DEFAULT_CROP_FRACTION) -> Image.Image:
    """Scale the shorter side to ``resolution / crop_fraction`` and cut the centre square."""
    width, height = image.size
    short = max(resolution, round(resolution / crop_fraction))
    scale = short / min(width, height)
    new_width, new_height = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    left, top = (new_width - resolution) // 2, (new_height - resolution) // 2
    return _resize(image, (new_width, new_height)).crop((left, top, left + resolution, top + resolution))


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _output(out: np.ndarray | None, side: int) -> np.ndarray:
    return np.empty((side, side, 3), dtype=np.uint8) if out is None else out


@dataclass(frozen=True)
class EvalTransform:
    """Deterministic PIL image -> ``(R, R, 3)`` uint8 array: what the network sees at evaluation."""

    resolution: int
    resize_mode: str = "pad"
    fill: tuple[int, int, int] = (128, 128, 128)
    #: ``crop``: the centre square is this fraction of the shorter side (the backbone's own eval recipe)
    crop_fraction: float = DEFAULT_CROP_FRACTION

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction!r}")

    @property
    def draft_size(self) -> tuple[int, int]:
        """Decode size for :func:`imgclass.io.images.load_rgb`: JPEGs are decoded at reduced scale down to it.

        ``crop`` needs the shorter side >= R/crop_fraction: ``(S, S)``; ``pad``
        only the longer side >= R (see :func:`_pad_draft_size`).
        """
        if self.resize_mode == "pad":
            return _pad_draft_size(self.resolution)
        side = round(self.resolution / self.crop_fraction)
        return (side, side)

    @classmethod
    def for_backbone(cls, spec: BackbonePreprocessing, resolution: int, resize_mode: str) -> "EvalTransform":
        """The backbone's evaluation recipe: its mean colour as padding, its own crop fraction."""
        return cls(resolution, resize_mode, mean_fill(spec.mean), spec.crop_fraction)

    def to_array(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """The network's input square as an ``(R, R, 3)`` uint8 array, written into ``out`` if given."""
        out = _output(out, self.resolution)
        image = _rgb(image)
        if self.resize_mode == "pad":
            return _padded(image, self.resolution, self.fill, out)
        out[...] = np.asarray(resize_and_centre_crop(image, self.resolution, self.crop_fraction))
        return out


@dataclass(frozen=True)
class TrainTransform:
    """Training augmentation: colour jitter, scale-and-pad with a margin, random crop, flip.

    Padding keeps the whole object (as the original did); the margin of
    ``1/crop_fraction`` lets the random crop shift and slightly cut it.
    Randomness comes from torch's generator, so a seeded run is reproducible
    (DataLoader workers get their own seeds from the loader's generator).
    """

    resolution: int
    fill: tuple[int, int, int]
    random_crop: bool = True
    flip: bool = True
    color_jitter: float = 0.0
    crop_fraction: float = DEFAULT_CROP_FRACTION

    @classmethod
    def for_backbone(cls, spec: BackbonePreprocessing, resolution: int, random_crop: bool = True, flip: bool = True,
                     color_jitter: float = 0.0) -> "TrainTransform":
        """Augmentation around the backbone's recipe: its mean colour as padding, its crop fraction as margin."""
        return cls(resolution, mean_fill(spec.mean), random_crop, flip, color_jitter, spec.crop_fraction)

    @property
    def padded_side(self) -> int:
        """Side of the padded square the random crop is cut from."""
        return round(self.resolution / self.crop_fraction) if self.random_crop else self.resolution

    @property
    def draft_size(self) -> tuple[int, int]:
        """Decode size for JPEGs: enough for the padded square (see :func:`_pad_draft_size`)."""
        return _pad_draft_size(self.padded_side)

    def to_array(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """One random augmentation of ``image`` as an ``(R, R, 3)`` uint8 array, written into ``out`` if given."""
        out = _output(out, self.resolution)
        image = _rgb(image)
        if self.color_jitter > 0:
            from torchvision.transforms import ColorJitter

            s = self.color_jitter
            image = ColorJitter(brightness=s, contrast=s, saturation=s)(image)
        side = self.padded_side
        canvas = _padded(image, side, self.fill, np.empty((side, side, 3), dtype=np.uint8))
        left = top = 0
        if side > self.resolution:
            left, top = (int(v) for v in torch.randint(0, side - self.resolution + 1, (2,)))
        square = canvas[top:top + self.resolution, left:left + self.resolution]
        if self.flip and float(torch.rand(())) < 0.5:
            square = square[:, ::-1]
        out[...] = square
        return out


def mean_fill(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The padding colour that normalises to zero for a backbone with this mean."""
    return tuple(int(round(m * 255)) for m in mean)  # type: ignore[return-value]


class FlipAveraged(nn.Module):
    """``network`` whose output for an image is the mean of its outputs for the image and its mirror.

    Both halves run in one forward pass of twice the batch (one call is cheaper
    than two on every device). Averaging the penultimate features and then
    applying a linear head gives the same class scores as averaging the
    head's scores, so the wrapper can sit around the extractor or around the
    whole classifier. An image and its mirror get the same output, up to
    floating-point rounding.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        both = self.network(torch.cat([images, images.flip(-1)]))  # (B, 3, H, W): -1 is the width
        plain, mirrored = both.chunk(2)
        return (plain + mirrored) / 2


class ScaleAveraged(nn.Module):
    """``network`` whose output for an image is the mean of its outputs for the image at each of ``scales``.

    The input batch is enlarged (bilinear) inside the network, so every
    caller of the network gets it without a transform of its own; the
    backbones end in a global average pool, so any size in works. Why
    enlarging pays: a network trained on random crops that fill its input
    sees objects larger in training than in a whole-image evaluation input;
    a larger test input makes up for it (Touvron et al., NeurIPS 2019,
    "Fixing the train-test resolution discrepancy"), and more so the smaller
    the resolution (BENCHMARKS.md). The mean of the penultimate features and
    the mean of a linear head's scores choose the same class.
    """

    def __init__(self, network: nn.Module, scales: tuple[float, ...] = TTA_SCALES):
        super().__init__()
        if not scales or any(scale <= 0 for scale in scales):
            raise ValueError(f"scales must be positive, got {scales!r}")
        self.network = network
        self.scales = tuple(float(scale) for scale in scales)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = None
        for scale in self.scales:
            # uint8 batches are enlarged as floats (bilinear needs them on every device); the network normalises
            view = images if scale == 1 else nn.functional.interpolate(
                images.float(), scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1)
            output = self.network(view)
            total = output if total is None else total + output
        return total / len(self.scales)


def with_tta(network: nn.Module, tta: str) -> nn.Module:
    """``network`` with the test-time augmentation ``tta`` (one of :data:`TTA_MODES`) around it."""
    views = check_tta(tta).split("+")
    if "scales" in views:
        network = ScaleAveraged(network)
    if "flip" in views:
        network = FlipAveraged(network)
    return network


def check_tta(tta: str) -> str:
    """``tta`` if it is one of :data:`TTA_MODES`; a ValueError naming them otherwise."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    return tta
