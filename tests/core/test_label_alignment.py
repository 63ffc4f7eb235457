"""Labels follow the images into the generator frame (core/label_alignment.py).

    python -m pytest -q tests/core/test_label_alignment.py
"""

import numpy as np
import pytest
import torch

from handsoff_ray.core.inversion import prepare_images
from handsoff_ray.core.label_alignment import align_labels, align_labels_in_content
from handsoff_ray.datasets.labeled_folder import LabeledSample


def _sample(h, w, *, keypoints=None, depth=None):
    seg = (np.arange(h * w).reshape(h, w) % 7).astype(np.uint8)
    kps = None if keypoints is None else np.asarray(keypoints, np.float32)
    return LabeledSample(id="a", image=np.zeros((h, w, 3), np.uint8), segmentation=seg, keypoints=kps, depth=depth)


class TestAlignLabels:
    def test_same_size_is_the_identity(self):
        s = _sample(6, 6, keypoints=[[1.0, 2.0, 2], [5.0, 0.0, 1]], depth=np.full((6, 6), 1.5, np.float32))
        a = align_labels(s, ("bg", "skin"), (6, 6))
        assert a.classes == ("bg", "skin")
        np.testing.assert_array_equal(a.segmentation, s.segmentation)
        np.testing.assert_array_equal(a.keypoints, s.keypoints)
        np.testing.assert_array_equal(a.depth, s.depth)

    def test_halving_keeps_blocks_and_maps_pixel_centres(self):
        blocks = np.array([[1, 2], [3, 4]], np.uint8)
        s = _sample(4, 4, keypoints=[[0.5, 2.5, 2], [3.0, 3.0, 2]])
        s.segmentation[:] = np.kron(blocks, np.ones((2, 2), np.uint8))
        a = align_labels(s, (), (2, 2))
        np.testing.assert_array_equal(a.segmentation, blocks)  # nearest: no invented in-between class
        # centres at integers: the middle of input pixels 0 and 1 (x = 0.5) is output pixel 0's centre
        np.testing.assert_allclose(a.keypoints[0], [0.0, 1.0, 2])
        np.testing.assert_allclose(a.keypoints[1], [1.25, 1.25, 2])

    def test_labels_are_cut_where_the_image_is_cut(self):
        # A 4 x 8 image into a square frame loses two columns each side, image and labels alike.
        h, w = 4, 8
        image = np.zeros((h, w, 3), np.uint8)
        image[:, 2:6] = 255
        s = _sample(h, w, keypoints=[[1.0, 1.0, 2], [2.0, 1.0, 2], [5.0, 3.0, 1]])
        s = LabeledSample(id="a", image=image, segmentation=s.segmentation, keypoints=s.keypoints)
        assert prepare_images(image[None], (4, 4)).min() == 1.0  # the image keeps only its white middle
        a = align_labels(s, (), (4, 4))
        np.testing.assert_array_equal(a.segmentation, s.segmentation[:, 2:6])
        np.testing.assert_allclose(a.keypoints, [[-1.0, 1.0, 0], [0.0, 1.0, 2], [3.0, 3.0, 1]])  # first cut away

    def test_invalid_depth_becomes_zero(self):
        depth = np.full((2, 2), 2.0, np.float32)
        depth[0, 1] = np.nan
        a = align_labels(_sample(2, 2, depth=depth), (), (2, 2))
        assert a.depth.dtype == np.float32
        np.testing.assert_array_equal(a.depth, [[2.0, 0.0], [2.0, 2.0]])

    def test_parts_a_set_lacks_stay_none(self):
        s = LabeledSample(id="a", image=np.zeros((4, 4, 3), np.uint8))
        a = align_labels(s, None, (2, 2))
        assert (a.classes, a.segmentation, a.keypoints, a.depth) == ((), None, None, None)


class TestAlignInContent:
    def test_padding_rows_are_ignored_and_keypoints_move_down(self):
        s = _sample(2, 4, keypoints=[[1.0, 1.0, 2]], depth=np.ones((2, 4), np.float32))
        a = align_labels_in_content(s, (), (4, 4), rows=slice(1, 3))
        np.testing.assert_array_equal(a.segmentation[1:3], s.segmentation)
        assert (a.segmentation[[0, 3]] == 255).all()  # ignore_index: never trained on
        assert (a.depth[[0, 3]] == 0).all() and (a.depth[1:3] == 1).all()
        np.testing.assert_allclose(a.keypoints, [[1.0, 2.0, 2]])


@pytest.mark.parametrize("size", [(3, 5), (5, 3)])
def test_nearest_resize_never_invents_classes(size):
    torch.manual_seed(0)
    s = _sample(7, 7)
    a = align_labels(s, (), size)
    assert a.segmentation.shape == size
    assert set(np.unique(a.segmentation)) <= set(np.unique(s.segmentation))
