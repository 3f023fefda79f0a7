"""Where and how the network runs: device, numeric precision, loader workers.

Kept apart from the models so every step (featurization, refinement, serving)
picks the device and precision the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
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
    threshold the heap fragments, so a featurizing process's RSS crept up
    with the number of batches (ResNet-50 workers: ~770 MB after 500 images,
    ~1,100 MB after 5,000). ``malloc_trim(0)`` once per batch keeps it near
    flat (~760 MB at 500, ~825 MB at 5,000: BENCHMARKS.md) with no measurable
    cost in speed (a batch takes ~0.5 s). Elsewhere this does nothing.
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


def default_workers(run_workers: int, device: torch.device) -> int:
    """Decoding worker processes for a loop that runs the network in this process (refinement).

    ``run_workers``, or for -1 a choice that leaves the model its cores.

    On the CPU the forward pass needs the cores, so decoding gets at most a
    quarter of them (none on a machine with 2 or fewer); with a GPU, decoding
    is the bottleneck and may use all but one core.
    """
    if run_workers >= 0:
        return run_workers
    cpus = available_cpus()
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 2 else max(1, cpus // 4)


#: most CPU processes step 3 starts by default (each holds its own activations)
MAX_CPU_FEATURIZE_WORKERS = 8


def featurize_workers(run_workers: int, device: torch.device) -> int:
    """Worker processes for step 3: ``run_workers``, or for -1 the measured best choice.

    On the CPU each worker decodes its own batches *and* runs the network on
    them with ``cores // workers`` threads (see
    :func:`imgclass.model.inference.extract_features`): one worker per core, up to
    :data:`MAX_CPU_FEATURIZE_WORKERS`, none on a single core. On 2 cores this
    is 1.2x the throughput of one process running 2 threads with decoding in
    between for ResNet-18 on photo-size JPEGs (decoding is a large share of
    its work) and a tie for ResNet-50 and EfficientNet-Lite0 (BENCHMARKS.md);
    larger machines were not measured.
    With a GPU the workers only decode, as in :func:`default_workers`.
    """
    if run_workers >= 0:
        return run_workers
    if device.type != "cpu":
        return default_workers(run_workers, device)
    cpus = available_cpus()
    return 0 if cpus == 1 else min(cpus, MAX_CPU_FEATURIZE_WORKERS)
