"""The torch device a job runs on: `resolve_device("auto" | "cpu" | "cuda" | "cuda:1" ...)`.

    resolve_device("auto")   # cuda when a CUDA device is visible, else cpu

Tests: `python -m pytest -q tests/core/test_device.py`.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "cpu_model"]


def resolve_device(name: str) -> torch.device:
    """The device `name` means: "auto" is cuda when available, else cpu. A CUDA name without CUDA raises
    ValueError (callers that read it from a spec re-raise it as their own error naming the field)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)  # raises RuntimeError on names torch does not know
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {name!r} but no CUDA device is visible; use 'auto' or 'cpu'")
    return device


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for reports and model cards: timings mean little without it."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return model
