"""Where and how the network runs: device, numeric precision, worker processes.

Kept apart from the models so every loop (featurization, refinement, serving,
batch scoring) picks the device, the precision and the number of worker
processes the same way: :class:`Runtime` carries the three, and
:func:`worker_count` is the one place that decides the workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from imgclass.errors import ParameterError


def resolve_device(run_device: str = "auto") -> torch.device:
    """``'auto'``: CUDA if available, then Apple's MPS, then the CPU; else the named device.

    Asking for a device that is not there is an error rather than a silent
    fallback, so a user who set ``run_device='cuda'`` knows the GPU was not used.
    """
    if run_device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(run_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("run_device is 'cuda' but no CUDA GPU is available; use run_device='auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ParameterError(f"run_device is '{run_device}' but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParameterError("run_device is 'mps' but Apple's MPS backend is not available")
    return device


@functools.lru_cache(maxsize=1)
def _glibc_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        return None


def release_free_memory() -> None:
    """Hand memory that the C heap holds but no longer uses back to the operating system (glibc only).

    Why: every forward pass allocates and frees tens of MB of activations;
    glibc keeps freed blocks in its heap, and with its adaptive mmap
    threshold the heap fragments, so a featurizing process's memory crept up
    with the number of batches. ``malloc_trim(0)`` once per batch keeps it
    flat at no measurable cost in speed (a trim is cheap next to a forward
    pass); the numbers are in BENCHMARKS.md. Elsewhere this does nothing.
    """
    trim = _glibc_malloc_trim()
    if trim is not None:
        trim(0)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_precision(run_precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for the forward pass.

    ``'auto'`` picks bf16 on CPUs with native bf16 support, fp16 on CUDA and
    MPS, and fp32 otherwise.
    """
    if run_precision == "fp32":
        return torch.float32
    if run_precision == "bf16":
        return torch.bfloat16
    if run_precision == "fp16":
        return torch.float16
    if run_precision != "auto":
        raise ParameterError(f"run_precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {run_precision!r}")
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager[object]:
    """Mixed-precision context for ``dtype`` (a no-op for fp32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def available_cpus() -> int:
    """CPUs this process may use (respects affinity masks and containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


#: most CPU processes an inference loop starts by default (each holds its own activations)
MAX_CPU_INFERENCE_WORKERS = 8
#: on the CPU, inference worker processes start only for jobs of at least this many batches per worker
MIN_BATCHES_PER_CPU_WORKER = 4
#: what a loop's worker processes do: decode only (the network runs here), or decode and run the network
TASKS = ("training", "inference")


def worker_count(run_workers: int, device: torch.device, task: str, n_batches: int | None = None) -> int:
    """How many worker processes a loop over images starts: the one place that decides it.

    Parameters
    ----------
    run_workers:
        The ``run_workers`` parameter: a count, or -1 for the choice below.
    device:
        Where the network runs.
    task:
        ``'training'``: the workers decode and augment, the network runs in
        this process. ``'inference'``: on the CPU each worker decodes its own
        batches *and* runs the network on them (see
        :func:`imgclass.model.inference.infer`); on a GPU they only decode.
    n_batches:
        The job's size, for ``'inference'`` on the CPU.

    Why these choices (measurements in BENCHMARKS.md):

    - a network on the CPU needs the cores, so decoders for it get at most a
      quarter of them (none on a machine with 2 or fewer); with a GPU, decoding
      is the bottleneck and may use all but one core (at most 8);
    - CPU inference: one process per core (at most
      :data:`MAX_CPU_INFERENCE_WORKERS`, none on a single core) was faster or
      as fast as one process whose threads share every convolution, because
      decoding then runs beside the network instead of between its passes;
    - a CPU inference job of fewer than :data:`MIN_BATCHES_PER_CPU_WORKER`
      batches per worker runs in this process whatever was asked: starting
      the workers (each with a first, slow forward pass) costs more than such
      a job gains from them.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    cpu_inference = task == "inference" and device.type == "cpu"
    if run_workers >= 0:
        workers = run_workers
    elif device.type == "cuda":
        workers = max(1, min(8, available_cpus() - 1))
    elif cpu_inference:
        cpus = available_cpus()
        workers = 0 if cpus == 1 else min(cpus, MAX_CPU_INFERENCE_WORKERS)
    else:
        cpus = available_cpus()
        workers = 0 if cpus <= 2 else max(1, cpus // 4)
    if cpu_inference and n_batches is not None and n_batches < MIN_BATCHES_PER_CPU_WORKER * workers:
        return 0
    return workers


@dataclass(frozen=True)
class Runtime:
    """Where and how networks run: the device, the compute precision and the ``run_workers`` request.

    One object for every loop that runs a network (step 3, refinement and its
    validation, the predictor), so each decides device, precision and worker
    processes the same way.
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    #: the ``run_workers`` parameter (-1: choose); see :func:`worker_count`
    run_workers: int = 0

    @classmethod
    def resolve(cls, run_device: str = "auto", run_precision: str = "auto", run_workers: int = -1) -> "Runtime":
        """From the ``run_device``, ``run_precision`` and ``run_workers`` parameters."""
        device = resolve_device(run_device)
        return cls(device, resolve_precision(run_precision, device), run_workers)

    @property
    def precision(self) -> str:
        """The dtype's name as stored with features: ``'float32'``, ``'bfloat16'``, ``'float16'``."""
        return str(self.dtype).replace("torch.", "")

    def workers(self, task: str, n_batches: int | None = None) -> int:
        """Worker processes for a loop of ``task`` over ``n_batches`` batches (see :func:`worker_count`)."""
        return worker_count(self.run_workers, self.device, task, n_batches)

    def autocast(self) -> ContextManager[object]:
        """Mixed precision on this device at this dtype (a no-op for fp32)."""
        return autocast(self.device, self.dtype)
