"""Small job specs for pipeline tests, and copies of the package's one finished run (see conftest.py)."""

from __future__ import annotations

import shutil

from handsoff_ray.config import JobSpec
from tests.support import spec_with


def make_spec(output, generator, labeled, **sections) -> JobSpec:
    """A 16x16 run: 4 labeled images, 2 members, 10 pairs in shards of 4; `sections` override parts."""
    base = {
        "name": "t",
        "generator": {"checkpoint": generator},
        "data": {"path": labeled, "limit": 4},
        "inversion": {"steps": 4, "batch_size": 3},
        "label_generator": {
            "ensemble_size": 2, "max_steps": 12, "batch_pixels": 64, "patience": 2,
            "tasks": {"segmentation": {"hidden": [16, 8], "min_pixels": 0},
                      "keypoints": {"hidden": [16, 8]}, "depth": {"hidden": [16, 8]}},
        },
        "synthesis": {"num_samples": 10, "shard_size": 4, "batch_size": 3},
        "storage": {"output": str(output)},
        "resources": {"engine": "local"},
    }
    return spec_with(base, **sections)


def copy_run(finished, tmp_path, **sections) -> JobSpec:
    """The finished run copied under tmp_path/runs, with a spec for it (sections override parts)."""
    spec, _ = finished
    shutil.copytree(spec.storage.output, tmp_path / "runs")
    return make_spec(tmp_path / "runs", spec.generator.checkpoint, spec.data.path, **sections)


def latent_file(store, image_id: str) -> str:
    """The local path of one image's latent in the shared artifacts, by the run's latents/_refs.json."""
    from handsoff_ray.pipeline.layout import ARTIFACTS, RUN

    key = store.read_json(RUN.latents_refs)["latents"][image_id]
    return store.sibling(ARTIFACTS.root).path(ARTIFACTS.latent(key))


def label_generator_folder(store) -> str:
    """The local folder of the run's label generator in the shared artifacts (label_generator/_ref.json)."""
    from handsoff_ray.pipeline.layout import ARTIFACTS, RUN

    return store.sibling(ARTIFACTS.root).path(ARTIFACTS.label_generator(store.read_json(RUN.label_generator_ref)["identity"]))
