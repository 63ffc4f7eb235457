"""Metrics follow the reference: dataset-level mIoU with background, PCK, depth errors."""

import math

import pytest
import torch

from handsoff_ray.core.metrics import SegmentationMeter, depth_errors, miou, pck, psnr


class TestMIoU:
    def test_perfect_prediction(self):
        t = torch.tensor([[0, 1], [2, 2]])
        assert miou(t, t, 3) == pytest.approx(1.0)

    def test_absent_class_counts_as_zero(self):
        # class 2 never appears in truth or prediction: the reference still averages its IoU of 0
        t = torch.tensor([0, 0, 1, 1])
        assert miou(t, t, 3) == pytest.approx(2 / 3)

    def test_dataset_level_accumulation_differs_from_per_image_mean(self):
        m = SegmentationMeter(2)
        a_pred, a_true = torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 0])
        b_pred, b_true = torch.tensor([0, 0]), torch.tensor([1, 0])
        m.update(a_pred, a_true)
        m.update(b_pred, b_true)
        # confusion: truth0 -> pred1 once (a), pred0 once (b); truth1 -> pred1 three times, pred0 once
        iou0 = 1 / (1 + 1 + 1)  # inter 1, union = pred0(2) + true0(2) - 1
        iou1 = 3 / (4 + 4 - 3)
        assert m.miou() == pytest.approx((iou0 + iou1) / 2)

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="shape"):
            miou(torch.zeros(2, 2), torch.zeros(4), 2)


class TestPCK:
    def test_threshold_and_visibility(self):
        target = torch.tensor([[[10.0, 10.0, 2.0], [20.0, 20.0, 0.0], [30.0, 30.0, 1.0]]])
        pred = torch.tensor([[[13.0, 10.0], [90.0, 90.0], [30.0, 40.0]]])
        # alpha 0.05 * 64 = 3.2 px: first within, third 10 px off; second is not labeled
        assert pck(pred, target, image_size=(64, 64), alpha=0.05) == pytest.approx(0.5)

    def test_no_visible_points_is_nan(self):
        target = torch.zeros(1, 2, 3)
        assert math.isnan(pck(torch.zeros(1, 2, 2), target, image_size=(8, 8)))


class TestDepth:
    def test_invalid_pixels_ignored(self):
        t = torch.tensor([1.0, 2.0, 0.0, float("nan")])
        p = torch.tensor([1.0, 3.0, 100.0, 5.0])
        e = depth_errors(p, t)
        assert e["rmse"] == pytest.approx(math.sqrt(0.5))
        assert e["abs_rel"] == pytest.approx(0.25)


def test_psnr_of_identical_images_is_large():
    x = torch.rand(2, 3, 8, 8)
    assert bool((psnr(x, x) > 100).all())
    assert psnr(x, x + 0.1)[0] == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-4)
