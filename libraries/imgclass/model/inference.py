"""Featurization: images -> penultimate-layer features, in batches, written as they come.

- :class:`Featurizer` is the network plus the preprocessing it needs, saved
  as one checkpoint (``featurizer.pth``) by step 2 and loaded by step 3.
- :class:`ImageFileDataset` decodes and resizes images (JPEGs at reduced
  scale); an unreadable file yields an all-zero image and its error message,
  so one bad file is reported instead of stopping the run.
- :class:`ImageBatches` assembles whole batches straight into one
  ``(B, R, R, 3)`` uint8 array, in the main process or in DataLoader workers.
  That layout *is* channels-last: the network gets it as an NCHW view without
  a copy, and a GPU receives 1 byte per pixel (normalisation happens there).
- :func:`extract_features` runs the batches under ``torch.inference_mode``
  (channels-last, optional reduced precision; pinned memory and asynchronous
  copies on CUDA) and hands each batch to a callback, so nothing needs the
  whole feature matrix in memory.
- :class:`FeatureWriter` writes those batches into a ``.npy`` file at their
  offsets (no matrix and no memory map in the process), renamed into place
  only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from imgclass.model.backbones import BACKBONES, FeatureExtractor, build_feature_extractor
from imgclass.errors import MissingArtifactError
from imgclass.io.images import UnreadableImageError, load_rgb
from imgclass.model.transforms import EvalTransform, chw_tensor, mean_fill
from imgclass.model.runtime import autocast, available_cpus, release_free_memory

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

    def fingerprint(self) -> str:
        """SHA-256 of what determines the outputs: the recipe and every weight (not where they came from).

        Two featurizers with the same fingerprint compute the same features, so
        features stored for one can be reused for the other (see
        :mod:`imgclass.model.feature_store`). The file ``featurizer.pth`` itself is
        not hashed: ``torch.save`` writes different bytes for the same weights.
        """
        digest = hashlib.sha256()
        recipe = {k: v for k, v in self.describe().items() if k != "source"}
        digest.update(json.dumps(recipe, sort_keys=True).encode())
        modules = {"extractor": self.extractor, "head": self.head}
        for prefix, module in modules.items():
            if module is None:
                continue
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(f"{prefix}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        return digest.hexdigest()

    def save(self, path: Path) -> None:
        """Save as a checkpoint dict of plain values and tensors (loadable with weights_only=True)."""
        from imgclass.io.atomic import atomic_path

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
    """Decodes ``paths[i]`` and returns ``(uint8 image tensor (3, R, R), i, error message or '')``.

    :meth:`load` gives the same image as an ``(R, R, 3)`` array, which is what
    :class:`ImageBatches` copies into its batches.
    """

    def __init__(self, paths: Sequence[Path | str], transform: EvalTransform):
        self.paths = [Path(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, out: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """``(image (R, R, 3) uint8, '')``, or all zeros and the error message for an unreadable file."""
        try:
            image = load_rgb(self.paths[index], draft_size=self.transform.draft_size)
            return self.transform.to_array(image, out), ""
        except UnreadableImageError as exc:
            side = self.transform.resolution
            if out is None:
                out = np.empty((side, side, 3), dtype=np.uint8)
            out.fill(0)
            return out, str(exc)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        array, error = self.load(index)
        return chw_tensor(array), index, error


class ImageBatches(Dataset):
    """Item ``b`` is batch ``b`` of ``dataset``: ``(uint8 (B, R, R, 3), indices (B,), errors)``.

    Each image is written straight into the batch array (no per-image tensors,
    no collate copy). Used with ``DataLoader(batch_size=None)``, so a worker
    process builds a whole batch and the main process receives one array.
    """

    def __init__(self, dataset: ImageFileDataset, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __getitem__(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        start = batch * self.batch_size
        indices = range(start, min(start + self.batch_size, len(self.dataset)))
        side = self.dataset.transform.resolution
        images = torch.empty((len(indices), side, side, 3), dtype=torch.uint8)
        slots = images.numpy()
        errors = [self.dataset.load(i, slots[j])[1] for j, i in enumerate(indices)]
        return images, torch.tensor(list(indices), dtype=torch.int64), errors


#: largest number of images per forward pass on the CPU (measured: see :class:`DevicePlan`)
CPU_FORWARD_BATCH = 16
#: CPU worker processes start only for jobs of at least this many batches per worker
MIN_BATCHES_PER_CPU_WORKER = 4


@dataclass(frozen=True)
class DevicePlan:
    """How batches travel to ``device`` and what layout the network gets.

    CUDA: page-locked (pinned) host batches and ``non_blocking`` copies, so the
    upload overlaps the previous batch's compute; cuDNN autotuning for the
    fixed input size. CPU and CUDA: channels-last (faster convolutions; the
    batches already have that layout). MPS: contiguous NCHW, which its
    kernels prefer. CPU: the forward pass takes at most
    :data:`CPU_FORWARD_BATCH` images at a time (activations that stay in
    cache; about 10% faster than 32 at once on the development machine).
    """

    device: torch.device
    pin_memory: bool
    non_blocking: bool
    channels_last: bool
    cudnn_benchmark: bool
    #: the network runs on chunks of at most this many images of a batch (None: the whole batch)
    max_forward_batch: int | None = None

    @classmethod
    def for_device(cls, device: torch.device) -> "DevicePlan":
        cuda, cpu = device.type == "cuda", device.type == "cpu"
        return cls(device, pin_memory=cuda, non_blocking=cuda, channels_last=device.type != "mps",
                   cudnn_benchmark=cuda, max_forward_batch=CPU_FORWARD_BATCH if cpu else None)

    def to_network_input(self, images_nhwc: torch.Tensor) -> torch.Tensor:
        """``(B, R, R, 3)`` uint8 host batch -> ``(B, 3, R, R)`` on the device (uint8: 4x less to copy)."""
        images = images_nhwc.to(self.device, non_blocking=self.non_blocking).permute(0, 3, 1, 2)
        return images if self.channels_last else images.contiguous()


BatchCallback = Callable[[np.ndarray, np.ndarray], None]


def _forward(network: nn.Module, images_nhwc: torch.Tensor, plan: DevicePlan) -> torch.Tensor:
    """The network's output for a host batch, computed in chunks of ``plan.max_forward_batch`` images."""
    chunk = plan.max_forward_batch or len(images_nhwc)
    if len(images_nhwc) <= chunk:
        return network(plan.to_network_input(images_nhwc))
    return torch.cat([network(plan.to_network_input(part)) for part in images_nhwc.split(chunk)])

#: (network output or batch of images, dataset indices, error messages)
_Batch = tuple[torch.Tensor, torch.Tensor, list[str]]


class _FeaturizedBatches(Dataset):
    """Item ``b``: batch ``b`` decoded *and* run through the network, ``(outputs, indices, errors)``.

    What a CPU worker process does: on a CPU, one process per core, each with
    its own batches and one compute thread, beats one process whose threads
    share every convolution (measured in BENCHMARKS.md), and decoding then
    runs beside the network instead of between its passes.
    """

    def __init__(self, batches: ImageBatches, network: nn.Module, dtype: torch.dtype, threads: int):
        self.batches = batches
        self.network = network
        self.dtype = dtype
        self.threads = threads

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, batch: int) -> _Batch:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        images, indices, errors = self.batches[batch]
        cpu = torch.device("cpu")
        with torch.inference_mode(), autocast(cpu, self.dtype):
            output = _forward(self.network, images, DevicePlan.for_device(cpu)).float()
        release_free_memory()
        return output, indices, errors


def _batches(dataset: ImageFileDataset, batch_size: int, plan: DevicePlan, workers: int) -> Iterator[_Batch]:
    """Batches of images in order; decoded by ``workers`` processes (0: here, between forward passes)."""
    loader = DataLoader(ImageBatches(dataset, batch_size), batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=plan.pin_memory, persistent_workers=False,
                        prefetch_factor=2 if workers > 0 else None)
    return iter(loader)


def _featurized_batches(dataset: ImageFileDataset, batch_size: int, network: nn.Module, dtype: torch.dtype,
                        workers: int) -> Iterator[_Batch]:
    """Network outputs batch by batch, in order, computed by ``workers`` CPU processes sharing the cores."""
    threads = max(1, available_cpus() // workers)
    # GNU OpenMP (torch's thread pool on Linux) hangs in a forked child once the parent has used it, so
    # workers that need more than one thread start fresh interpreters ("spawn": slower to start, safe).
    context = None if threads == 1 else "spawn"
    loader = DataLoader(_FeaturizedBatches(ImageBatches(dataset, batch_size), network, dtype, threads),
                        batch_size=None, shuffle=False, num_workers=workers, persistent_workers=False,
                        prefetch_factor=2, multiprocessing_context=context)
    return iter(loader)


def effective_workers(n_images: int, batch_size: int, workers: int, device: torch.device) -> int:
    """The worker processes :func:`extract_features` really starts for ``n_images``.

    On the CPU a job of fewer than :data:`MIN_BATCHES_PER_CPU_WORKER` batches
    per worker runs in the calling process: starting the workers (each with a
    first, slow forward pass) costs about 0.4 s here, more than such a job
    gains from them (the 179 demo images: 150 img/s in one process, 120 with
    2 workers).
    """
    if device.type == "cpu" and -(-n_images // batch_size) < MIN_BATCHES_PER_CPU_WORKER * workers:
        return 0
    return workers


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or previous
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def extract_features(extractor: torch.nn.Module, dataset: ImageFileDataset, on_batch: BatchCallback,
                     batch_size: int = 32, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32, workers: int = 0,
                     progress: bool = True) -> list[tuple[int, str]]:
    """Run ``extractor`` over ``dataset`` and call ``on_batch(indices, features)`` per batch, in order.

    Features arrive as float32 numpy arrays whatever the compute precision.
    Rows of unreadable images are passed as NaN. Returns the ``(index,
    error)`` pairs of the images that could not be read.

    ``workers`` processes share the work (0: all of it here):

    - on the CPU each worker decodes its batches and runs the network on them
      with ``cores // workers`` threads; this process only collects the rows
      (a small job runs here instead, see :func:`effective_workers`);
    - on a GPU (or MPS) the workers decode and this process runs the network.
      A batch's features are fetched from the device only after the next
      batch has been started, so the GPU is not left waiting for the host.
    """
    device = device or torch.device("cpu")
    plan = DevicePlan.for_device(device)
    extractor = extractor.to(device).eval()
    if plan.channels_last:
        extractor = extractor.to(memory_format=torch.channels_last)
    failures: list[tuple[int, str]] = []
    bar = tqdm(total=len(dataset), desc="featurizing", unit="img", disable=not progress, leave=False)

    def finish(output: torch.Tensor, indices: torch.Tensor, errors: list[str]) -> None:
        features = output.float().cpu().numpy()
        bad = [i for i, message in enumerate(errors) if message]
        if bad:
            features[bad] = np.nan
            failures.extend((int(indices[i]), errors[i]) for i in bad)
        on_batch(indices.numpy(), features)
        bar.update(len(indices))

    workers = effective_workers(len(dataset), batch_size, workers, device)
    with contextlib.closing(bar):
        if device.type == "cpu" and workers > 0:
            for batch in _featurized_batches(dataset, batch_size, extractor, dtype, workers):
                finish(*batch)
            return failures
        pending: _Batch | None = None
        with torch.inference_mode(), autocast(device, dtype), _cudnn_benchmark(plan.cudnn_benchmark):
            for images, indices, errors in _batches(dataset, batch_size, plan, workers):
                output = _forward(extractor, images, plan)
                if pending is not None:
                    finish(*pending)
                pending = (output, indices, errors)
                if device.type == "cpu":
                    release_free_memory()
            if pending is not None:
                finish(*pending)
    return failures


class FeatureWriter:
    """Writes rows into a float32 ``.npy`` file as they come; the file appears only when complete.

    The file is created beside the target with its ``.npy`` header and full
    size, and each batch of rows is written at its offset with plain file
    writes: neither the matrix nor a memory map of it is held by the process,
    so its memory stays flat however many images there are (the operating
    system's page cache holds the written pages, outside the process).
    Rows may come in any order; a row never written reads as 0.
    """

    def __init__(self, target: Path, n_rows: int, dim: int):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.target.with_name(f".{self.target.name}.{os.getpid()}.tmp.npy")
        self.shape = (n_rows, dim)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": self.shape}
        self._file = open(self.tmp, "wb+")
        np.lib.format.write_array_header_1_0(self._file, header)
        self.data_offset = self._file.tell()
        self.row_bytes = dim * np.dtype(np.float32).itemsize
        self._file.truncate(self.data_offset + n_rows * self.row_bytes)  # sparse: no zeros written
        self.rows_written = 0

    def write(self, rows: np.ndarray, features: np.ndarray) -> None:
        """Write ``features[i]`` as row ``rows[i]`` (each run of consecutive rows in one write)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        values = np.ascontiguousarray(features, dtype=np.float32).reshape(len(rows), self.shape[1])
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows outside 0..{self.shape[0] - 1}")
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            if len(run):
                self._file.seek(self.data_offset + int(rows[run[0]]) * self.row_bytes)
                self._file.write(values[run[0]:run[-1] + 1].data)
        self.rows_written += len(rows)

    __call__ = write

    def commit(self) -> None:
        """Close and rename onto the target."""
        self._file.close()
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
