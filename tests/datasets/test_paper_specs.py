"""The ready specs for the paper's datasets: valid as written, missing only the user's files, and their
data sections accepted by the readers (checked on fixtures in the public layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from handsoff_ray.config import load_spec
from handsoff_ray.pipeline.labeled import open_spec_labeled_set
from handsoff_ray.pipeline.resolved import resolved_plan
from tests.datasets.public_fixtures import write_car_parts, write_celebamask, write_deepfashion

SPECS = Path(__file__).parents[2] / "jobs" / "specs"
PAPER = ["celebamask-16", "celebamask-50", "car-parts-16", "deepfashion-keypoints"]


@pytest.mark.parametrize("name", PAPER)
def test_spec_validates_and_misses_only_the_users_files(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none of the checkpoints or datasets exist here
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.name == name
    problems = resolved_plan(spec)["problems"]
    assert problems and all(p.startswith(("generator.checkpoint: no such file", "data.path: no such folder",
                                          "evaluation.test_path: no such folder")) for p in problems), problems


@pytest.mark.parametrize("name", PAPER)
def test_spec_documents_checkpoint_data_and_protocol(name):
    text = (SPECS / f"{name}.yaml").read_text()
    for word in ("# Checkpoint:", "# Data:", "# Protocol", "https://github.com/"):
        assert word in text, f"{name}.yaml lacks {word!r}"


WRITERS = {
    "celebamask-16": (write_celebamask, 4, 19),
    "celebamask-50": (write_celebamask, 4, 19),
    "car-parts-16": (write_car_parts, 4, 10),
    "deepfashion-keypoints": (write_deepfashion, 3, 24),
}


@pytest.mark.parametrize("name", PAPER)
def test_spec_data_section_reads_the_public_layout(name, tmp_path):
    write, n_images, n_classes = WRITERS[name]
    write(tmp_path / "data")
    spec = load_spec(SPECS / f"{name}.yaml", {"data.path": str(tmp_path / "data")})
    labeled, ids = open_spec_labeled_set(spec, tasks=spec.label_generator.tasks.enabled())
    assert len(ids) == n_images and len(labeled.classes) == n_classes
    if name == "car-parts-16":
        assert labeled.image_size == (384, 512)  # the LSUN-car content frame, rows 64..448 of the canvas
        assert spec.generator.crop_rows == (64, 448)
    if name == "deepfashion-keypoints":
        assert len(labeled.keypoint_names) == 21


def test_celebamask_spec_evaluates_in_the_8_class_map():
    spec = load_spec(SPECS / "celebamask-16.yaml")
    assert spec.data.classes == "19" and spec.evaluation.classes == "8"
    assert spec.evaluation.model == "deeplabv3" and spec.evaluation.backbone == "resnet101"


def test_data_check_command_reads_public_layouts(tmp_path):
    from click.testing import CliRunner

    from handsoff_ray.cli import main

    write_car_parts(tmp_path / "cars")
    write_car_parts(tmp_path / "cars", "testset", sizes=((20, 20),))
    out = CliRunner().invoke(main, ["data", "check", str(tmp_path / "cars"), "--split", "testset"])
    assert out.exit_code == 0, out.output
    assert "format: car_parts" in out.output and "images: 1" in out.output
    (tmp_path / "cars" / "trainingset" / "JPEGImages" / "car2.jpg").write_bytes(b"broken")
    out = CliRunner().invoke(main, ["data", "check", str(tmp_path / "cars"), "--limit", "2"])
    assert out.exit_code == 2 and "trainingset/JPEGImages/car2.jpg: cannot decode" in out.output
