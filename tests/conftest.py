"""Shared fixtures: tiny generators and labeled sets written in the public formats."""

from __future__ import annotations

import pytest
import torch

from handsoff_ray.core.checkpoint import save_generator
from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig

# One intra-op thread per test process: on 2 shared cores, OpenMP oversubscription made tests up to
# 30x slower, and single-threaded kernels also keep float results identical run to run.
torch.set_num_threads(1)



@pytest.fixture(scope="session", autouse=True)
def _digest_cache(tmp_path_factory):
    """Stages cache file digests (pipeline/digests.py) under HANDSOFF_CACHE_DIR: a session's own, never ~/.cache."""
    import os

    old = os.environ.get("HANDSOFF_CACHE_DIR")
    os.environ["HANDSOFF_CACHE_DIR"] = str(tmp_path_factory.mktemp("handsoff-cache"))
    yield
    if old is None:
        os.environ.pop("HANDSOFF_CACHE_DIR", None)
    else:
        os.environ["HANDSOFF_CACHE_DIR"] = old


TINY = GeneratorConfig(resolution=16, style_dim=32, n_mlp=2, channel_base=256, channel_max=32)


@pytest.fixture(scope="session")
def tiny_generator_path(tmp_path_factory) -> str:
    """A random-init 16x16 StyleGAN2 in the project's own format."""
    torch.manual_seed(0)
    G = Generator(TINY)
    path = tmp_path_factory.mktemp("gen") / "tiny.safetensors"
    save_generator(G, path, metadata={"note": "random init, tests only"})
    return str(path)


@pytest.fixture(scope="session")
def toy_labeled_path(tmp_path_factory) -> str:
    """Six toy faces at 32x32 in the labeled-set folder format."""
    from handsoff_ray.datasets.toy import write_toy_labeled_set

    root = tmp_path_factory.mktemp("labeled") / "toy"
    write_toy_labeled_set(root, seeds=range(6), size=32)
    return str(root)
