"""The one image dataset: files decoded, shaped by a transform and assembled into batches.

Every loop over image files uses :class:`ImageDataset`: step 3's features,
refinement (training with :class:`~imgclass.model.transforms.TrainTransform`,
validation) and the predictor's batch scoring. It

- decodes with :func:`imgclass.io.images.load_rgb`, JPEGs at reduced scale
  (the transform's ``draft_size``): far cheaper than a full decode and resize;
- writes each image straight into one ``(B, R, R, 3)`` uint8 batch array: no
  per-image tensors, no collate copy. That layout *is* channels-last: the
  network gets it as an NCHW view without a copy, and a GPU receives 1 byte
  per pixel (normalisation happens there);
- never stops at a bad file: an unreadable image leaves zeros in its slot and
  its error message in :attr:`ImageBatch.errors`, for the caller to report
  (and to leave out of losses and feature files).

A :class:`torch.utils.data.DataLoader` gets whole batches from it through
``__getitems__`` (pass ``collate_fn=as_batch``), so a worker process builds a
batch and the main process receives one array.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from imgclass.io.images import UnreadableImageError, load_rgb
from imgclass.model.transforms import ImageTransform


class ImageBatch(NamedTuple):
    """Images ``(B, R, R, 3)`` uint8, their positions in the dataset ``(B,)``, and why any could not be read.

    A NamedTuple, so a DataLoader can pin its tensors for fast GPU copies.
    """

    images: torch.Tensor
    indices: torch.Tensor
    #: '' for a readable image, else the reason (that image's pixels are zeros)
    errors: list[str]

    @property
    def readable(self) -> torch.Tensor:
        """Boolean mask ``(B,)`` of the images that could be read."""
        return torch.tensor([not message for message in self.errors], dtype=torch.bool)


class ImageDataset(Dataset):
    """``paths[i]`` decoded and shaped by ``transform``; fetched a batch at a time (see the module docstring)."""

    def __init__(self, paths: Sequence[Path | str], transform: ImageTransform):
        self.paths = [Path(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, out: np.ndarray) -> str:
        """Write image ``index`` into ``out`` (R, R, 3); return '' or, for an unreadable file, zeros and why."""
        try:
            image = load_rgb(self.paths[index], draft_size=self.transform.draft_size)
            self.transform.to_array(image, out)
            return ""
        except UnreadableImageError as exc:
            out.fill(0)
            return str(exc)

    def __getitems__(self, indices: Sequence[int]) -> ImageBatch:
        side = self.transform.resolution
        images = torch.empty((len(indices), side, side, 3), dtype=torch.uint8)
        slots = images.numpy()
        errors = [self.load(int(i), slots[j]) for j, i in enumerate(indices)]
        return ImageBatch(images, torch.tensor([int(i) for i in indices], dtype=torch.int64), errors)

    def __getitem__(self, index: int) -> ImageBatch:
        """A batch of one (the DataLoader uses :meth:`__getitems__`)."""
        return self.__getitems__([index])


def as_batch(batch: ImageBatch) -> ImageBatch:
    """The DataLoader's ``collate_fn``: ``__getitems__`` already built the batch (module-level: picklable)."""
    return batch
