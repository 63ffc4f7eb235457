"""`score_arms`: every network of an evaluation gets the same optimiser steps, or the user is told why not."""

from pathlib import Path

import pytest

from handsoff_ray.config import load_spec
from handsoff_ray.evaluation import DownstreamData
from handsoff_ray.pipeline.stages.evaluate import score_arms
from handsoff_ray.toy.world import CLASSES, render_batch

SPEC = Path(__file__).parents[2] / "jobs" / "specs" / "toy.yaml"


@pytest.fixture(scope="module")
def faces() -> DownstreamData:
    return DownstreamData.from_batch(render_batch(range(7_000_000, 7_000_006), 16))


def _spec(epochs: int):
    spec = load_spec(SPEC)
    ev = spec.evaluation.model_copy(update={"epochs": epochs, "max_steps": 2, "batch_size": 2, "unet_width": 4,
                                            "train_seeds": 1, "precision": "fp32"})
    return spec.model_copy(update={"evaluation": ev})


def _score(faces, epochs):
    arms = {"big": faces.subset(range(4)), "small": faces.subset(range(2))}
    seg_only = {name: DownstreamData(images=d.images, segmentation=d.segmentation) for name, d in arms.items()}
    test = DownstreamData(images=faces.images[4:], segmentation=faces.segmentation[4:])
    return score_arms(seg_only, test, _spec(epochs), num_classes=len(CLASSES), num_keypoints=0, depth=False)


def test_a_small_set_that_runs_out_of_epochs_is_reported(faces, capsys):
    out = _score(faces, epochs=1)  # big: 2 batches an epoch -> 2 steps; small: 1 batch -> 1 step
    assert out["big"]["steps"] == 2 and out["small"]["steps"] == 1
    assert "the small network gets 1 steps" in capsys.readouterr().err


def test_equal_steps_say_nothing(faces, capsys):
    out = _score(faces, epochs=2)
    assert out["big"]["steps"] == out["small"]["steps"] == 2
    assert "raise evaluation.epochs" not in capsys.readouterr().err
