"""Device, precision and worker choices."""

from __future__ import annotations

import pytest
import torch

from imgclass.errors import ParameterError
from imgclass.runtime import default_workers, resolve_device, resolve_precision


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


def test_worker_choice_leaves_the_model_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_workers(3, torch.device("cpu")) == 3
    monkeypatch.setattr("imgclass.runtime.available_cpus", lambda: 2)
    assert default_workers(-1, torch.device("cpu")) == 0
    monkeypatch.setattr("imgclass.runtime.available_cpus", lambda: 16)
    assert default_workers(-1, torch.device("cpu")) == 4
    assert default_workers(-1, torch.device("cuda")) == 8
