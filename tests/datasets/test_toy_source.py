"""`data.format: toy`: toy faces named by seed range are a labeled set with nothing on disk."""

from __future__ import annotations

import numpy as np
import pytest

from handsoff_ray.config import SpecError, parse_spec
from handsoff_ray.datasets.labeled_folder import LabeledSetError, open_labeled_set
from handsoff_ray.datasets.public import open_public_set
from handsoff_ray.datasets.toy import open_toy_set
from handsoff_ray.datasets.toy import write_toy_labeled_set


def test_toy_set_equals_the_folder_of_the_same_seeds(tmp_path):
    write_toy_labeled_set(tmp_path / "toy", seeds=[3, 4, 11], size=32)
    folder = open_labeled_set(tmp_path / "toy", require=("segmentation", "keypoints", "depth"))
    toy = open_toy_set("3-4,11", size=32)
    assert toy.ids == folder.ids == ("000003", "000004", "000011")
    assert (toy.classes, toy.keypoint_names, toy.depth_scale) == (folder.classes, folder.keypoint_names,
                                                                   folder.depth_scale)
    for sid in toy.ids:
        a, b = toy.load(sid), folder.load(sid)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.segmentation, b.segmentation)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_array_equal(a.depth, b.depth)  # NaN-aware; the same uint16 quantisation
        assert a.depth.dtype == b.depth.dtype == np.float32


def test_toy_set_selects_like_a_folder():
    ls = open_public_set(None, "toy", seeds="10-19", limit=3, resize=(48, 48))
    assert ls.ids == ("000010", "000011", "000012") and ls.image_size == (48, 48)
    assert ls.load(0).image.shape == (48, 48, 3)
    with pytest.raises(LabeledSetError, match="not in the dataset"):
        open_public_set(None, "toy", seeds="0-3", ids=["000009"])
    with pytest.raises(LabeledSetError, match="square"):
        open_public_set(None, "toy", seeds="0-3", resize=(32, 48))


@pytest.mark.parametrize("data, message", [
    ({"format": "toy"}, "data: .*seeds is required with format toy"),
    ({"format": "toy", "seeds": "0-x"}, "expected seed ranges like 0-15"),
    ({"path": "./labeled", "seeds": "0-15"}, "data: .*seeds names toy faces; it needs format toy"),
])
def test_spec_checks_toy_seeds(data, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({"data": data})


def test_toy_test_set_needs_no_test_path():
    spec = parse_spec({"evaluation": {"enabled": True, "test_format": "toy", "test_seeds": "1000000-1000009"}})
    assert spec.evaluation.test_path is None
    with pytest.raises(SpecError, match="test_path is required"):
        parse_spec({"evaluation": {"enabled": True}})
