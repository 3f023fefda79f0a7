"""Device, precision and worker choices."""

from __future__ import annotations

import pytest
import torch

from imgclass.errors import ParameterError
from imgclass.model.runtime import Runtime, resolve_device, resolve_precision, worker_count


def test_auto_device_falls_back_to_cpu_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ParameterError, match="no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_precision_choices() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("fp16", cuda) == torch.float16
    assert resolve_precision("auto", cuda) == torch.float16
    assert resolve_precision("auto", cpu) in (torch.bfloat16, torch.float32)
    with pytest.raises(ParameterError, match="run_precision"):
        resolve_precision("fp8", cpu)


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr("imgclass.model.runtime.cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == torch.bfloat16
    monkeypatch.setattr("imgclass.model.runtime.cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == torch.float32  # emulated bf16 would be slower than fp32
    assert resolve_precision("auto", torch.device("mps")) == torch.float16
    assert resolve_precision("fp32", torch.device("cuda")) == torch.float32


def test_training_workers_leave_the_model_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert worker_count(3, cpu, "training") == 3
    monkeypatch.setattr("imgclass.model.runtime.available_cpus", lambda: 2)
    assert worker_count(-1, cpu, "training") == 0
    monkeypatch.setattr("imgclass.model.runtime.available_cpus", lambda: 16)
    assert worker_count(-1, cpu, "training") == 4
    assert worker_count(-1, cuda, "training") == 8


def test_cpu_inference_runs_one_process_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert worker_count(0, cpu, "inference") == 0 and worker_count(3, cpu, "inference") == 3
    for cpus, expected in ((1, 0), (2, 2), (4, 4), (64, 8)):
        monkeypatch.setattr("imgclass.model.runtime.available_cpus", lambda cpus=cpus: cpus)
        assert worker_count(-1, cpu, "inference") == expected
    monkeypatch.setattr("imgclass.model.runtime.available_cpus", lambda: 16)
    assert worker_count(-1, cuda, "inference") == worker_count(-1, cuda, "training") == 8  # GPU: they only decode
    assert worker_count(-1, mps, "inference") == worker_count(-1, mps, "training") == 4
    with pytest.raises(ValueError, match="task"):
        worker_count(-1, cpu, "serving")


def test_small_cpu_inference_jobs_run_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting workers costs more than a job of fewer than 4 batches per worker gains from them."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr("imgclass.model.runtime.available_cpus", lambda: 2)
    assert worker_count(-1, cpu, "inference", n_batches=7) == 0
    assert worker_count(-1, cpu, "inference", n_batches=8) == 2
    assert worker_count(2, cpu, "inference", n_batches=7) == 0  # also when asked for
    assert worker_count(2, cuda, "inference", n_batches=1) == 2  # GPU decoders start for any job
    assert worker_count(2, cpu, "training", n_batches=1) == 2


def test_runtime_resolves_the_three_run_parameters_once() -> None:
    runtime = Runtime.resolve("cpu", "fp32", 3)
    assert (runtime.device, runtime.dtype, runtime.precision) == (torch.device("cpu"), torch.float32, "float32")
    assert runtime.workers("training") == 3 and runtime.workers("inference", n_batches=100) == 3
    assert Runtime.resolve("cpu", "bf16").precision == "bfloat16"
    with pytest.raises(ParameterError):
        Runtime.resolve("cpu", "fp8")
