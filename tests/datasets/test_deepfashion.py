"""DeepFashion-MultiModal reader: parsing PNGs, 21 keypoints with visibility, errors naming file and line."""

from __future__ import annotations

import numpy as np
import pytest

from handsoff_ray.datasets.deepfashion import CLASSES, KEYPOINT_NAMES, open_deepfashion
from handsoff_ray.datasets.labeled_folder import LabeledSetError
from handsoff_ray.datasets.public import detect_format
from tests.datasets.public_fixtures import DF_SIZE, write_deepfashion


def test_reads_parsing_and_keypoints(tmp_path):
    truth = write_deepfashion(tmp_path)
    assert detect_format(tmp_path) == "deepfashion"
    ls = open_deepfashion(tmp_path)
    assert len(CLASSES) == 24 and ls.classes == CLASSES and len(ls.keypoint_names) == 21 == len(KEYPOINT_NAMES)
    assert ls.ids == tuple(sorted(truth)) and ls.image_size == DF_SIZE  # the image without parsing is left out
    name = ls.ids[0]
    s = ls.load(name)
    seg, loc, vis = truth[name]
    np.testing.assert_array_equal(s.segmentation, seg)
    np.testing.assert_array_equal(s.keypoints[:, :2], loc.astype(np.float32))
    assert s.keypoints[0, 2] == 2  # dataset 0 = visible
    assert s.keypoints[3, 2] == 1  # dataset 1 = present but hidden
    assert s.keypoints[5, 2] == 0  # dataset 2 = not present (at -1, -1)


def test_resize_scales_keypoints_with_the_image(tmp_path):
    truth = write_deepfashion(tmp_path)
    name = sorted(truth)[0]
    s = open_deepfashion(tmp_path, resize=(88, 60)).load(name)
    assert s.image.shape == (88, 60, 3) and s.segmentation.shape == (88, 60)
    x, y = truth[name][1][0]
    np.testing.assert_allclose(s.keypoints[0, :2], [(x + 0.5) * 2 - 0.5, (y + 0.5) * 2 - 0.5])


def test_images_folder_also_accepted_and_limit(tmp_path):
    write_deepfashion(tmp_path)
    (tmp_path / "image").rename(tmp_path / "images")
    assert len(open_deepfashion(tmp_path, limit=2)) == 2


def test_keypoint_file_errors_name_file_and_line(tmp_path):
    truth = write_deepfashion(tmp_path)
    loc = tmp_path / "keypoints" / "keypoints_loc.txt"
    lines = loc.read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0]  # one value short
    loc.write_text("\n".join(lines) + "\n")
    vis = tmp_path / "keypoints" / "keypoints_vis.txt"
    vis.write_text(vis.read_text().replace(" 2 ", " 7 ", 1))
    with pytest.raises(LabeledSetError) as err:
        open_deepfashion(tmp_path)
    msg = str(err.value)
    assert "keypoints/keypoints_loc.txt: line 2: 41 values after the name, expected 42" in msg
    assert "keypoints/keypoints_vis.txt: " in msg and "has visibility 7" in msg
    assert len(truth) == 3


def test_parsing_problems_name_the_png(tmp_path):
    truth = write_deepfashion(tmp_path)
    a, b = sorted(truth)[:2]
    from PIL import Image

    Image.fromarray(np.full(DF_SIZE, 30, np.uint8)).save(tmp_path / "segm" / f"{a}_segm.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "segm" / f"{b}_segm.png")
    with pytest.raises(LabeledSetError) as err:
        open_deepfashion(tmp_path)
    assert f"segm/{a}_segm.png: class id 30, but the dataset has 24 classes" in str(err.value)
    assert f"segm/{b}_segm.png: size 10x10, expected 44x30 like image/{b}.jpg" in str(err.value)
