"""resolve_device: 'auto' picks CUDA when visible; asking for CUDA without it is a clear error."""

from __future__ import annotations

import pytest
import torch

from handsoff_ray.core.device import resolve_device


def test_auto_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_explicit_names_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_raises(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"device is '{name}' but no CUDA device is visible; use 'auto' or 'cpu'"):
        resolve_device(name)
