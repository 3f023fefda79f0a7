"""Featurization: images -> penultimate-layer features, in batches, written as they come.

- :class:`Featurizer` is the network plus the preprocessing it needs, saved
  as one checkpoint (``featurizer.pth``) by step 2 and loaded by step 3.
- :class:`ImageFileDataset` decodes and resizes images in DataLoader workers;
  an unreadable file yields an all-zero image and its error message, so one
  bad file is reported instead of stopping the run.
- :func:`extract_features` runs the batches under ``torch.inference_mode``
  (channels-last, optional reduced precision) and hands each batch to a
  callback, so nothing needs the whole feature matrix in memory.
- :class:`FeatureWriter` writes those batches into a memory-mapped ``.npy``
  that is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from imgclass.backbones import BACKBONES, FeatureExtractor, build_feature_extractor
from imgclass.errors import MissingArtifactError
from imgclass.images import UnreadableImageError, load_rgb
from imgclass.preprocessing import EvalTransform, mean_fill
from imgclass.runtime import autocast

CHECKPOINT_FORMAT = "imgclass-featurizer-1"


OUTPUTS = ("features", "logits")


@dataclass
class Featurizer:
    """A feature extractor, the preprocessing its inputs need, and optionally a trained head.

    A refined network (step 2 with ``classifier='dnn'`` or ``'svmDnnRefined'``)
    keeps its new last layer in ``head`` with the class names in ``labels``;
    ``output`` says whether step 3 stores the penultimate ``'features'`` or
    the head's class scores (``'logits'``).
    """

    extractor: FeatureExtractor
    resize_mode: str
    #: where the weights came from (a file path, 'random initialisation', or the refinement run)
    source: str
    head: nn.Linear | None = None
    labels: list[str] | None = None
    output: str = "features"

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "logits" and (self.head is None or not self.labels):
            raise ValueError("output='logits' needs a head and its labels")

    @property
    def network(self) -> nn.Module:
        """The module step 3 runs: the extractor, or extractor + head for class scores."""
        if self.output == "logits":
            return nn.Sequential(self.extractor, self.head).eval()
        return self.extractor

    @property
    def output_dim(self) -> int:
        return len(self.labels or []) if self.output == "logits" else self.extractor.feature_dim

    @property
    def transform(self) -> EvalTransform:
        spec = BACKBONES[self.extractor.backbone_name]
        return EvalTransform(self.extractor.resolution, self.resize_mode, mean_fill(spec.mean))

    def describe(self) -> dict[str, Any]:
        """JSON-ready description, stored with every artifact made from these features."""
        return {**self.extractor.recipe(), "resize_mode": self.resize_mode, "source": self.source,
                "output": self.output, "output_dim": self.output_dim, "labels": self.labels}

    def save(self, path: Path) -> None:
        """Save as a checkpoint dict of plain values and tensors (loadable with weights_only=True)."""
        from imgclass.atomic import atomic_path

        checkpoint = {"format": CHECKPOINT_FORMAT, **self.describe(),
                      "state_dict": self.extractor.state_dict(),
                      "head_state_dict": None if self.head is None else self.head.state_dict()}
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    @classmethod
    def load(cls, path: Path) -> "Featurizer":
        if not path.is_file():
            raise MissingArtifactError(f"{path} does not exist: run scripts/2_refineDNN.py first")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise MissingArtifactError(f"{path} is not a featurizer checkpoint; re-run scripts/2_refineDNN.py")
        extractor = build_feature_extractor(checkpoint["backbone"], checkpoint["resolution"])
        extractor.load_state_dict(checkpoint["state_dict"], strict=True)
        head = None
        if checkpoint.get("head_state_dict") is not None:
            weight = checkpoint["head_state_dict"]["weight"]
            head = nn.Linear(weight.shape[1], weight.shape[0])
            head.load_state_dict(checkpoint["head_state_dict"], strict=True)
            head.eval()
        return cls(extractor.eval(), checkpoint["resize_mode"], checkpoint["source"], head,
                   checkpoint.get("labels"), checkpoint.get("output", "features"))


class ImageFileDataset(Dataset):
    """Decodes ``paths[i]`` and returns ``(uint8 image tensor, i, error message or '')``."""

    def __init__(self, paths: Sequence[Path | str], transform: EvalTransform):
        self.paths = [Path(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            image = load_rgb(self.paths[index], draft_size=self.transform.draft_size)
            return self.transform(image), index, ""
        except UnreadableImageError as exc:
            side = self.transform.resolution
            return torch.zeros((3, side, side), dtype=torch.uint8), index, str(exc)


BatchCallback = Callable[[np.ndarray, np.ndarray], None]


def extract_features(extractor: torch.nn.Module, dataset: ImageFileDataset, on_batch: BatchCallback,
                     batch_size: int = 32, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32, workers: int = 0,
                     progress: bool = True) -> list[tuple[int, str]]:
    """Run ``extractor`` over ``dataset`` and call ``on_batch(indices, features)`` per batch.

    Features arrive as float32 numpy arrays whatever the compute precision.
    Rows of unreadable images are passed as NaN. Returns the ``(index,
    error)`` pairs of the images that could not be read.
    """
    device = device or torch.device("cpu")
    extractor = extractor.to(device).eval()
    use_channels_last = device.type != "mps"
    if use_channels_last:
        extractor = extractor.to(memory_format=torch.channels_last)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers > 0 else None)
    failures: list[tuple[int, str]] = []
    bar = tqdm(total=len(dataset), desc="featurizing", unit="img", disable=not progress, leave=False)
    with torch.inference_mode(), autocast(device, dtype), contextlib.closing(bar):
        for images, indices, errors in loader:
            images = images.to(device, non_blocking=True)
            if use_channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            features = extractor(images).float().cpu().numpy()
            bad = [i for i, message in enumerate(errors) if message]
            if bad:
                features[bad] = np.nan
                failures += [(int(indices[i]), errors[i]) for i in bad]
            on_batch(indices.numpy(), features)
            bar.update(len(indices))
    return failures


class FeatureWriter:
    """Writes rows into a float32 ``.npy`` file as they come; the file appears only when complete.

    The array lives in a memory-mapped temporary file beside the target, so
    memory stays flat however many images there are.
    """

    def __init__(self, target: Path, n_rows: int, dim: int):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.target.with_name(f".{self.target.name}.{os.getpid()}.tmp.npy")
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=(n_rows, dim))
        self.rows_written = 0

    def write(self, rows: np.ndarray, features: np.ndarray) -> None:
        self.array[rows] = features
        self.rows_written += len(rows)

    __call__ = write

    def commit(self) -> None:
        """Flush and rename onto the target."""
        self.array.flush()
        del self.array
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        with contextlib.suppress(AttributeError):
            del self.array
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
