"""Saving and loading a label generator: safetensors weights with a JSON header (config, tasks,
depth normalisation, history summary).

Tests: `python -m pytest -q tests/core/test_label_generator.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from handsoff_ray.core.label_generator.model import LabelGenerator
from handsoff_ray.core.label_generator.tasks import TaskSpec

_FORMAT = "handsoff_ray.label_generator/1"


def save_label_generator(lg: LabelGenerator, path: str | Path) -> None:
    """Write weights as safetensors with a JSON header (config, tasks, depth normalisation, history summary)."""
    from safetensors.torch import save_file

    header = {"format": _FORMAT, **lg.config(), "history_summary": lg.history_summary,
              "target_norm": {name: head.target_norm.tolist() for name, head in lg.heads.items()}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in lg.state_dict().items()}
    save_file(tensors, str(path), metadata={"handsoff_ray": json.dumps(header)})


def load_label_generator(path: str | Path, *, device: torch.device | str = "cpu") -> LabelGenerator:
    """Read a file written by `save_label_generator`; the model is returned in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "handsoff_ray" not in meta:
        raise ValueError(f"{path} has no handsoff_ray header; write it with save_label_generator")
    header = json.loads(meta["handsoff_ray"])
    if header.get("format") != _FORMAT:
        raise ValueError(f"{path} has format {header.get('format')!r}; this code reads {_FORMAT!r}")
    tasks = {name: TaskSpec.from_dict(d) for name, d in header["tasks"].items()}
    lg = LabelGenerator(header["feature_channels"], tasks, out_size=tuple(header["out_size"]),
                        ensemble_size=header["ensemble_size"], member_ids=header["member_ids"], seed=header["seed"])
    lg.load_state_dict(load_file(str(path)))
    lg.history_summary = header.get("history_summary", {})
    return lg.to(device).eval()
