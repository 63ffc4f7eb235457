"""Imports point one way: interfaces -> pipeline -> core. The core never imports Ray."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).parents[1] / "handsoff_ray"
# module folder -> import prefixes it must never use
FORBIDDEN = {
    "core": ("ray", "handsoff_ray.pipeline", "handsoff_ray.cli", "handsoff_ray.toy", "handsoff_ray.datasets"),
    "datasets": ("ray", "handsoff_ray.pipeline", "handsoff_ray.cli"),
    # The downstream measurement is pure PyTorch over in-memory tensors: it builds on core only.
    "evaluation": ("ray", "handsoff_ray.pipeline", "handsoff_ray.cli", "handsoff_ray.toy", "handsoff_ray.datasets"),
    "pipeline": ("handsoff_ray.cli",),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer):
    bad = []
    for path in sorted((PKG / layer).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(PKG.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_toy_world_and_gan_training_stay_below_the_pipeline():
    for name in ("world.py", "params.py", "world_cli.py", "reals.py", "train_gan.py", "discriminator.py", "quality.py"):
        imported = _imports(PKG / "toy" / name)
        assert not any(n.startswith(("handsoff_ray.pipeline", "ray")) for n in imported), name
