"""The one batched inference loop: images -> network outputs, batch by batch, in order.

Step 3 (features or class scores), refinement's validation and the
:class:`~imgclass.model.predictor.Predictor` (serving, batch scoring,
notebooks) all run networks through this module:

- :func:`infer` runs a network over an :class:`~imgclass.model.dataset.ImageDataset`
  and yields an :class:`OutputBatch` per batch, so nothing needs all outputs in
  memory. Worker processes (their number from :class:`~imgclass.model.runtime.Runtime`)
  decode, and on the CPU also run the network;
- :func:`run_network` is the forward pass itself, also used directly for
  images that are already decoded (the service): channels-last, in chunks on
  the CPU, under the caller's precision;
- :class:`DevicePlan` says how batches travel to the device.

Batch invariance: on the CPU, the loop runs the network on chunks of exactly
:data:`CPU_FORWARD_BATCH` images, padding a short last chunk with blank
images whose outputs are dropped. An image's features then come out of the
same kernels whatever ``run_mbSize``, ``run_workers`` (and so the threads per
process) or its position in the dataset are, so the same images and
parameters give bit-identical features and ``metrics.json``. Without it they
did not: oneDNN picks different fp32 kernels for different batch sizes and
thread counts, and with worker processes (one thread each instead of the
main process's two) every fp32 feature of the demo changed in its last
bits, small differences that can tip which C cross-validation picks
(tests/test_inference.py checks the invariance).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from imgclass.model.dataset import ImageDataset, as_batch
from imgclass.model.runtime import Runtime, autocast, available_cpus, release_free_memory
from imgclass.model.transforms import ImageTransform

#: largest number of images per forward pass on the CPU (see :class:`DevicePlan`)
CPU_FORWARD_BATCH = 16


@dataclass(frozen=True)
class DevicePlan:
    """How batches travel to ``device`` and what layout the network gets.

    CUDA: page-locked (pinned) host batches and ``non_blocking`` copies, so the
    upload overlaps the previous batch's compute; cuDNN autotuning for the
    fixed input size. CPU and CUDA: channels-last (faster convolutions; the
    batches already have that layout). MPS: contiguous NCHW, which its
    kernels prefer. CPU: the forward pass takes at most
    :data:`CPU_FORWARD_BATCH` images at a time, so activations stay in cache
    (faster than whole batches on the development machine: BENCHMARKS.md).

    ``pad_chunks`` (``batch_invariant=True``, what :func:`infer` asks for on
    the CPU): every chunk is padded to exactly that size, so results do not
    depend on how images were batched. The service's plan leaves it off: a
    one-image request would otherwise pay for 16.
    """

    device: torch.device
    pin_memory: bool
    non_blocking: bool
    channels_last: bool
    cudnn_benchmark: bool
    #: the network runs on chunks of at most this many images of a batch (None: the whole batch)
    max_forward_batch: int | None = None
    #: pad a short chunk to ``max_forward_batch`` images (batch-invariant outputs; see :func:`run_network`)
    pad_chunks: bool = False

    @classmethod
    def for_device(cls, device: torch.device, batch_invariant: bool = False) -> "DevicePlan":
        """The plan for ``device``; ``batch_invariant``: on the CPU, pad every chunk to the same size."""
        cuda, cpu = device.type == "cuda", device.type == "cpu"
        return cls(device, pin_memory=cuda, non_blocking=cuda, channels_last=device.type != "mps",
                   cudnn_benchmark=cuda, max_forward_batch=CPU_FORWARD_BATCH if cpu else None,
                   pad_chunks=cpu and batch_invariant)

    def prepare(self, network: nn.Module) -> nn.Module:
        """``network`` on the device, in the memory layout its inputs will have."""
        network = network.to(self.device)
        return network.to(memory_format=torch.channels_last) if self.channels_last else network

    def to_network_input(self, images_nhwc: torch.Tensor) -> torch.Tensor:
        """``(B, R, R, 3)`` uint8 host batch -> ``(B, 3, R, R)`` on the device (uint8: 4x less to copy)."""
        images = images_nhwc.to(self.device, non_blocking=self.non_blocking).permute(0, 3, 1, 2)
        return images if self.channels_last else images.contiguous()


def run_network(network: nn.Module, images_nhwc: torch.Tensor, plan: DevicePlan) -> torch.Tensor:
    """The network's output for a host batch ``(B, R, R, 3)``, in chunks of ``plan.max_forward_batch`` images.

    The caller chooses gradients and precision (``torch.inference_mode()``,
    :func:`~imgclass.model.runtime.autocast`); ``network`` comes from
    :meth:`DevicePlan.prepare`. With ``plan.pad_chunks`` every chunk has
    exactly ``plan.max_forward_batch`` images: a short one is padded with
    blank images (their outputs are dropped), so each image's output is the
    same whatever batch it arrived in (see the module docstring).
    """
    chunk = plan.max_forward_batch or len(images_nhwc)
    if len(images_nhwc) == 0:
        return network(plan.to_network_input(images_nhwc))
    outputs = []
    for part in images_nhwc.split(chunk):
        count = len(part)
        if plan.pad_chunks and count < chunk:
            part = torch.cat([part, part.new_zeros((chunk - count, *part.shape[1:]))])
        outputs.append(network(plan.to_network_input(part))[:count])
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class OutputBatch(NamedTuple):
    """One batch of :func:`infer`: float32 outputs ``(B, D)`` (NaN rows: unreadable), dataset indices, errors."""

    outputs: np.ndarray
    indices: np.ndarray
    errors: list[str]

    @property
    def failures(self) -> list[tuple[int, str]]:
        """``(dataset index, error message)`` of each unreadable image."""
        return [(int(i), message) for i, message in zip(self.indices, self.errors) if message]

    @property
    def readable(self) -> np.ndarray:
        """Boolean mask ``(B,)`` of the rows that hold real outputs."""
        return np.array([not message for message in self.errors], dtype=bool)


#: a batch on its way: (network output, dataset indices, error messages)
_Pending = tuple[torch.Tensor, torch.Tensor, list[str]]


class _NetworkOutputs(Dataset):
    """Batch ``indices``: decoded *and* run through the network, ``(outputs, indices, errors)``.

    What a CPU worker process does: on a CPU, one process per core, each with
    its own batches and ``threads`` compute threads, beats one process whose
    threads share every convolution (see :func:`~imgclass.model.runtime.worker_count`),
    and decoding then runs beside the network instead of between its passes.
    """

    def __init__(self, dataset: ImageDataset, network: nn.Module, dtype: torch.dtype, threads: int):
        self.dataset = dataset
        self.network = network
        self.dtype = dtype
        self.threads = threads

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: Sequence[int]) -> _Pending:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        images, batch_indices, errors = self.dataset.__getitems__(indices)
        cpu = torch.device("cpu")
        with torch.inference_mode(), autocast(cpu, self.dtype):
            output = run_network(self.network, images, DevicePlan.for_device(cpu, batch_invariant=True)).float()
        release_free_memory()
        return output, batch_indices, errors

    def __getitem__(self, index: int) -> _Pending:
        return self.__getitems__([index])


def _identity(batch: _Pending) -> _Pending:
    return batch


def _worker_outputs(dataset: ImageDataset, network: nn.Module, batch_size: int, dtype: torch.dtype,
                    workers: int) -> DataLoader:
    """Network outputs batch by batch, in order, computed by ``workers`` CPU processes sharing the cores."""
    threads = max(1, available_cpus() // workers)
    # GNU OpenMP (torch's thread pool on Linux) hangs in a forked child once the parent has used it, so
    # workers that need more than one thread start fresh interpreters ("spawn": slower to start, safe).
    context = None if threads == 1 else "spawn"
    return DataLoader(_NetworkOutputs(dataset, network, dtype, threads), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=_identity, persistent_workers=False, prefetch_factor=2,
                      multiprocessing_context=context)


def _image_batches(dataset: ImageDataset, batch_size: int, plan: DevicePlan, workers: int) -> DataLoader:
    """Batches of images in order; decoded by ``workers`` processes (0: here, between forward passes)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=as_batch,
                      pin_memory=plan.pin_memory, persistent_workers=False,
                      prefetch_factor=2 if workers > 0 else None)


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or previous
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _finish(pending: _Pending) -> OutputBatch:
    output, indices, errors = pending
    outputs = output.float().cpu().numpy()
    bad = [i for i, message in enumerate(errors) if message]
    if bad:
        outputs[bad] = np.nan
    return OutputBatch(outputs, indices.numpy(), list(errors))


def infer(network: nn.Module, dataset: ImageDataset, batch_size: int = 32, runtime: Runtime | None = None,
          progress: bool = False) -> Iterator[OutputBatch]:
    """Run ``network`` over ``dataset`` and yield each batch's outputs, in dataset order.

    Outputs arrive as float32 numpy arrays whatever the compute precision;
    rows of unreadable images are NaN and their errors are in the batch.
    ``network`` is put into eval mode on ``runtime.device`` (default: the
    CPU in fp32, no worker processes).

    Worker processes (``runtime.workers('inference', n_batches)``) share the work:

    - on the CPU each worker decodes its batches and runs the network on them
      with ``cores // workers`` threads; this process only collects the rows;
    - on a GPU (or MPS) the workers decode and this process runs the network.
      A batch's outputs are fetched from the device only after the next
      batch has been started, so the GPU is not left waiting for the host.

    Gradient and precision settings apply per batch, never while the caller
    holds a yielded batch.

    On the CPU the outputs are batch-invariant: the same whatever
    ``batch_size`` and worker processes (see the module docstring). A
    ``batch_size`` that is a multiple of :data:`CPU_FORWARD_BATCH` wastes no
    work on padding. On a GPU, cuDNN autotuning may pick other kernels in
    another process, so features agree to rounding, not bit for bit.
    """
    runtime = runtime or Runtime()
    device = runtime.device
    plan = DevicePlan.for_device(device, batch_invariant=True)
    network = plan.prepare(network.eval())
    workers = runtime.workers("inference", -(-len(dataset) // batch_size))
    with tqdm(total=len(dataset), desc="inference", unit="img", disable=not progress, leave=False) as bar:
        if device.type == "cpu" and workers > 0:
            for pending in _worker_outputs(dataset, network, batch_size, runtime.dtype, workers):
                bar.update(len(pending[1]))
                yield _finish(pending)
            return
        pending: _Pending | None = None
        for images, indices, errors in _image_batches(dataset, batch_size, plan, workers):
            with torch.inference_mode(), runtime.autocast(), _cudnn_benchmark(plan.cudnn_benchmark):
                output = run_network(network, images, plan)
            if device.type == "cpu":
                release_free_memory()
            if pending is not None:
                bar.update(len(pending[1]))
                yield _finish(pending)
            pending = (output, indices, errors)
        if pending is not None:
            bar.update(len(pending[1]))
            yield _finish(pending)


def readable_outputs(network: nn.Module, dataset: ImageDataset, output_dim: int, batch_size: int = 32,
                     runtime: Runtime | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(outputs, indices)``: the rows of the readable images of ``dataset`` and their dataset positions.

    For callers that need every output at once (fitting a probe or an SVM);
    unreadable images are left out, so ``indices`` maps rows back to labels.
    """
    rows, indices = [], []
    for batch in infer(network, dataset, batch_size, runtime):
        rows.append(batch.outputs[batch.readable])
        indices.append(batch.indices[batch.readable])
    if not rows:
        return np.zeros((0, output_dim), np.float32), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(indices)


def images_to_batch(images: Sequence[Image.Image | np.ndarray], transform: ImageTransform) -> torch.Tensor:
    """Already-decoded images -> one ``(B, R, R, 3)`` uint8 batch, laid out as :class:`ImageDataset` builds it.

    An item that is already an ``(R, R, 3)`` uint8 array was transformed by
    the caller and is copied as it is: the service transforms each image as
    soon as it is decoded, so that a request never holds more than one
    full-size decoded image.
    """
    side = transform.resolution
    batch = torch.empty((len(images), side, side, 3), dtype=torch.uint8)
    for slot, image in zip(batch.numpy(), images):
        if isinstance(image, np.ndarray):
            if image.shape != slot.shape or image.dtype != np.uint8:
                raise ValueError(f"a transformed image must be a {slot.shape} uint8 array, got {image.shape} "
                                 f"{image.dtype}")
            slot[...] = image
        else:
            transform.to_array(image, slot)
    return batch

