"""Device, precision and worker choices."""

from __future__ import annotations

import pytest
import torch

from imgclass.errors import ParameterError
from imgclass.model.runtime import default_workers, featurize_workers, resolve_device, resolve_precision


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


def test_worker_choice_leaves_the_model_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_workers(3, torch.device("cpu")) == 3
    monkeypatch.setattr("imgclass.model.runtime.available_cpus", lambda: 2)
    assert default_workers(-1, torch.device("cpu")) == 0
    monkeypatch.setattr("imgclass.model.runtime.available_cpus", lambda: 16)
    assert default_workers(-1, torch.device("cpu")) == 4
    assert default_workers(-1, torch.device("cuda")) == 8


def test_step_3_runs_one_featurizing_process_per_core_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert featurize_workers(0, cpu) == 0 and featurize_workers(3, cpu) == 3
    for cpus, expected in ((1, 0), (2, 2), (4, 4), (64, 8)):
        monkeypatch.setattr("imgclass.model.runtime.available_cpus", lambda cpus=cpus: cpus)
        assert featurize_workers(-1, cpu) == expected
    monkeypatch.setattr("imgclass.model.runtime.available_cpus", lambda: 16)
    assert featurize_workers(-1, cuda) == default_workers(-1, cuda) == 8  # with a GPU they only decode
