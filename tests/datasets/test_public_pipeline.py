"""The paper's datasets through the real stages (engine: local) with tiny generators.

- CelebAMask-HQ (public layout, 8-class merge) -> invert -> fit.
- DeepFashion-MultiModal (segmentation + 21 keypoints) with a non-square 16x8 generator (4x2 const)
  -> invert -> fit -> synthesize.
- Car-Parts with generator.crop_rows: only the content rows are compared in inversion, labelled in
  fit, and emitted by synthesis.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from handsoff_ray.core.checkpoint import save_generator
from handsoff_ray.core.inversion import invert
from handsoff_ray.core.label_generator import load_label_generator
from handsoff_ray.core.stylegan2 import Generator, GeneratorConfig
from handsoff_ray.core.pairs import synthesize
from handsoff_ray.pipeline.dataset.schema import decode_row, schema_meta
from handsoff_ray.pipeline.context import RunContext, open_run
from handsoff_ray.pipeline.run import run_stage
from handsoff_ray.pipeline.run import run_stage
from tests.datasets.public_fixtures import write_car_parts, write_celebamask, write_deepfashion
from tests.pipeline.runs import label_generator_folder
from tests.support import spec_with

_LG = {"ensemble_size": 2, "max_steps": 10, "batch_pixels": 64, "patience": 2}


def _spec(output, checkpoint, data, tasks, **sections):
    base = {
        "name": "paper",
        "generator": {"checkpoint": checkpoint},
        "data": data,
        "inversion": {"steps": 3, "batch_size": 4, "lpips_weight": 0.0},
        "label_generator": {**_LG, "tasks": tasks},
        "synthesis": {"num_samples": 5, "shard_size": 5, "batch_size": 5},
        "storage": {"output": str(output)},
        "resources": {"engine": "local"},
    }
    return spec_with(base, **sections)


SEG_ONLY = {"segmentation": {"hidden": [16, 8], "min_pixels": 0}, "keypoints": {"enabled": False},
            "depth": {"enabled": False}}


def test_celebamask_public_layout_inverts_and_fits(tmp_path, tiny_generator_path):
    write_celebamask(tmp_path / "CelebAMask-HQ", ids=[0, 1, 2, 3])
    spec = _spec(tmp_path / "runs", tiny_generator_path,
                 {"path": str(tmp_path / "CelebAMask-HQ"), "format": "celebamask", "classes": "8", "limit": 4},
                 SEG_ONLY)
    inv = run_stage(spec, "invert", engine="local")
    assert inv["images"] == 4 and sorted(inv["per_image"]) == ["0", "1", "2", "3"]
    fit = run_stage(spec, "fit", engine="local")
    lg = load_label_generator(f"{label_generator_folder(open_run(spec))}/label_generator.safetensors")
    assert fit["tasks"] == ["segmentation"] and lg.tasks["segmentation"].num_outputs == 8 and lg.out_size == (16, 16)


def test_celebamask_19_classes_evaluated_in_the_8_class_map(tmp_path, tiny_generator_path):
    """The paper's face protocol: fit on 19 classes, merge synthetic and real test labels to 8, score."""
    from handsoff_ray.pipeline.run import run_stage

    write_celebamask(tmp_path / "CelebAMask-HQ", ids=[0, 1, 2, 3, 4, 5])
    spec = _spec(tmp_path / "runs", tiny_generator_path,
                 {"path": str(tmp_path / "CelebAMask-HQ"), "format": "celebamask", "ids": ["0", "1", "2"]},
                 SEG_ONLY,
                 evaluation={"enabled": True, "test_path": str(tmp_path / "CelebAMask-HQ"),
                             "test_format": "celebamask", "test_ids": ["3", "4", "5"], "classes": "8",
                             "model": "unet", "unet_width": 4, "max_steps": 2, "batch_size": 2,
                             "use_uncertainty_filter": False})
    run_stage(spec, "invert", engine="local")
    assert run_stage(spec, "fit", engine="local")["tasks"] == ["segmentation"]
    run_stage(spec, "synthesize", engine="local")
    report = run_stage(spec, "evaluate")
    assert report["classes"] == ["background", "skin", "nose", "eye", "brow", "ear", "mouth", "hair"]
    # 8 IoUs: the test labels were read in the 8-class map; unmerged 19-class synthetic labels (ids up
    # to 18) would not even train an 8-way network.
    assert len(report["synthetic"]["iou"]) == 8 and 0.0 <= report["synthetic"]["miou"] <= 1.0


@pytest.fixture(scope="module")
def tall_generator_path(tmp_path_factory) -> str:
    """A random-init 16x8 StyleGAN2 (4x2 constant), the shape of StyleGAN-Human 1024x512."""
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=16, style_dim=32, n_mlp=2, channel_base=256, channel_max=32,
                                  init_aspect=2))
    path = tmp_path_factory.mktemp("gen") / "tall.safetensors"
    save_generator(G, path, metadata={"note": "random init, tests only"})
    return str(path)


def test_deepfashion_on_a_non_square_generator_end_to_end(tmp_path, tall_generator_path):
    write_deepfashion(tmp_path / "DeepFashion-MultiModal")
    tasks = {"segmentation": {"hidden": [16, 8], "min_pixels": 0},
             "keypoints": {"hidden": [16, 8], "sigma": 1.0}, "depth": {"enabled": False}}
    spec = _spec(tmp_path / "runs", tall_generator_path,
                 {"path": str(tmp_path / "DeepFashion-MultiModal"), "format": "auto", "limit": 3}, tasks)
    assert run_stage(spec, "invert", engine="local")["images"] == 3
    fit = run_stage(spec, "fit", engine="local")
    assert fit["out_size"] == [16, 8] and fit["tasks"] == ["segmentation", "keypoints"]
    out = run_stage(spec, "synthesize", engine="local")
    assert out["shards_written_now"] == 1
    table = pq.read_table(open_run(spec).path("dataset/data"))
    meta = schema_meta(table.schema)
    assert len(meta["classes"]) == 24 and len(meta["keypoint_names"]) == 21
    row = decode_row(table.slice(0, 1).to_pylist()[0], meta)
    assert row["image"].shape == (16, 8, 3) and row["segmentation"].shape == (16, 8)
    assert row["keypoints"].shape == (21, 3)


def test_car_crop_rows_in_inversion_fit_and_synthesis(tmp_path, tiny_generator_path):
    # 16-row canvas, content rows 2..14: the proportions of LSUN-car 512's rows 64..448.
    write_car_parts(tmp_path / "Car-Parts-Segmentation")
    spec = _spec(tmp_path / "runs", tiny_generator_path,
                 {"path": str(tmp_path / "Car-Parts-Segmentation"), "format": "car_parts", "resize": [12, 16],
                  "limit": 4},
                 SEG_ONLY, generator={"crop_rows": [2, 14]})
    run_stage(spec, "invert", engine="local")
    run_stage(spec, "fit", engine="local")
    store = open_run(spec)
    lg = load_label_generator(f"{label_generator_folder(store)}/label_generator.safetensors")
    assert lg.out_size == (16, 16) and lg.tasks["segmentation"].num_outputs == 10
    G = RunContext(spec).generator(torch.device("cpu"))
    pairs = synthesize(G, lg, sample_ids=range(3), run_seed=0, crop_rows=(2, 14), return_maps=True)
    assert pairs.images.shape == (3, 12, 16, 3) and pairs.labels["segmentation"].shape == (3, 12, 16)
    assert pairs.uncertainty_maps["segmentation"].shape == (3, 12, 16)
    full = synthesize(G, lg, sample_ids=range(3), run_seed=0, return_maps=True)
    # The crop is the middle of the full canvas, labels and image alike.
    assert (full.labels["segmentation"][:, 2:14] == pairs.labels["segmentation"]).all()
    assert (full.images[:, 2:14] == pairs.images).all()
    # The synthesize stage writes the cropped pairs and says so in the schema metadata.
    run_stage(spec, "synthesize", engine="local")
    table = pq.read_table(store.path("dataset/data"))
    meta = schema_meta(table.schema)
    assert meta["image_size"] == [12, 16]
    row = decode_row(table.slice(0, 1).to_pylist()[0], meta)
    assert row["image"].shape == (12, 16, 3) and row["segmentation"].shape == (12, 16)


def test_inversion_ignores_the_padding_rows(tiny_generator_path):
    from handsoff_ray.core.checkpoint import load_generator

    G = load_generator(tiny_generator_path)
    w = G.latent_avg.reshape(1, 1, -1).expand(1, G.cfg.n_latent, -1)
    with torch.no_grad():
        out = G.synthesis(w, noise_mode="const")
    content = out[:, :, 2:14].clamp(-1, 1)
    res = invert(G, content, lpips_model=None, lpips_weight=0, steps=0, crop_rows=(2, 14))
    # The loss is the MSE over the content rows alone (the padding rows of G's output are free) ...
    want = ((out[:, :, 2:14] - content) / 2).square().mean()
    assert abs(res.final_loss.item() - want.item()) < 1e-7
    # ... while without crop_rows the same content (letterboxed with black) is compared everywhere.
    padded = torch.cat([-torch.ones(1, 3, 2, 16), content, -torch.ones(1, 3, 2, 16)], dim=2)
    uncropped = invert(G, padded, lpips_model=None, lpips_weight=0, steps=0)
    assert uncropped.final_loss.item() > res.final_loss.item()
    with pytest.raises(ValueError, match="crop_rows must satisfy"):
        invert(G, content, lpips_model=None, lpips_weight=0, steps=0, crop_rows=(2, 20))


def test_crop_rows_outside_the_canvas_fail_before_anything_is_written(tmp_path, tiny_generator_path):
    from handsoff_ray.pipeline.errors import UserError

    write_car_parts(tmp_path / "cars")
    spec = _spec(tmp_path / "runs", tiny_generator_path,
                 {"path": str(tmp_path / "cars"), "format": "car_parts", "resize": [12, 16]}, SEG_ONLY,
                 generator={"crop_rows": [2, 40]})
    with pytest.raises(UserError, match=r"generator.crop_rows: crop_rows must satisfy 0 <= start < stop <= 16"):
        run_stage(spec, "invert", engine="local")
    assert not (tmp_path / "runs").exists()
