"""Where a run's stage outputs are, for whoever reads them: the inverted latents and the label generator.

    store, rel = latent_location(run_store, image_id)      # by the run's latents/_refs.json, in _artifacts/
    ws, metrics = read_latent(run_store, image_id)          # ([L, D], the inversion's metrics)
    store, rel = label_generator_location(run_store)        # the merged label generator the run refers to

The stages that write them (invert, fit) and every reader (fit reads latents; the demo, benchmarks and tests
load the label generator) share these, so no stage imports another to find its inputs.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load as st_load

from handsoff_ray.pipeline.layout import ARTIFACTS, RUN
from handsoff_ray.pipeline.storage import RunStore

__all__ = ["latent_location", "read_latent", "label_generator_location"]


def latent_location(store: RunStore, image_id: str, refs: dict | None = None) -> tuple[RunStore, str]:
    """(store, path) of one image's latent: by the run's refs in the shared artifacts, else (a run written
    before content identities) latents/<id>.safetensors in the run folder."""
    refs = store.read_json(RUN.latents_refs) if refs is None else refs
    if refs and image_id in refs.get("latents", {}):
        return store.sibling(ARTIFACTS.root), ARTIFACTS.latent(refs["latents"][image_id])
    return store, RUN.legacy_latent(image_id)


def read_latent(store: RunStore, image_id: str, refs: dict | None = None) -> tuple[torch.Tensor, dict]:
    """(ws [L, D], inversion metrics) of one inverted image of the run (`refs`: its latents/_refs.json)."""
    where, rel = latent_location(store, image_id, refs)
    blob = where.read_bytes(rel)
    # safetensors' layout: an 8-byte little-endian header length, then the JSON header holding __metadata__.
    # Read from the bytes already in memory (safe_open would need them written to a file first).
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    return st_load(blob)["ws"], json.loads(header["__metadata__"]["handsoff_ray.inversion"])


def label_generator_location(store: RunStore) -> tuple[RunStore, str]:
    """(store, path) of the run's merged label generator: the artifact its _ref.json names, else (a run written
    before content identities) label_generator/label_generator.safetensors in the run folder."""
    ref = store.read_json(RUN.label_generator_ref)
    if ref is not None:
        return store.sibling(ARTIFACTS.root), ARTIFACTS.label_generator_file(ref["identity"])
    return store, RUN.legacy_label_generator_file
