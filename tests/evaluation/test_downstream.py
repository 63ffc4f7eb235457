"""Downstream evaluation: data validation, models, deterministic training, reference metrics, and the
toy-world check that more labeled data gives a better network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from handsoff_ray.evaluation import (
    DownstreamData,
    DownstreamNet,
    build_downstream,
    evaluate_downstream,
    images_to_input,
    predict_downstream,
    train_downstream,
)
from handsoff_ray.evaluation.data import IGNORE_INDEX
from handsoff_ray.evaluation.train import _flip, _losses
from handsoff_ray.core.label_generator import render_heatmaps
from handsoff_ray.core.metrics import SegmentationMeter, depth_errors, miou, pck
from handsoff_ray.toy.world import render_batch

TOY_FLIP_PAIRS = [(0, 1), (3, 4)]  # left/right eye, mouth corners




@pytest.fixture(scope="module")
def toy12() -> DownstreamData:
    return DownstreamData.from_batch(render_batch(range(100, 112), 32))


def _random_data(n: int = 3, h: int = 8, w: int = 8, j: int = 2, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "images": rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
        "segmentation": rng.integers(0, classes, (n, h, w), dtype=np.uint8),
        "keypoints": np.concatenate([rng.uniform(0, w - 1, (n, j, 2)), np.full((n, j, 1), 2.0)], 2).astype(np.float32),
        "depth": rng.uniform(1, 2, (n, h, w)).astype(np.float32),
    }


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class TestDownstreamData:
    def test_numpy_arrays_become_tensors_and_tasks_follow_the_labels(self):
        d = DownstreamData(**_random_data())
        assert isinstance(d.images, torch.Tensor) and d.keypoints.dtype == torch.float32
        assert d.tasks == ("segmentation", "keypoints", "depth")
        assert len(d) == 3 and d.image_size == (8, 8)
        assert DownstreamData(images=_random_data()["images"]).tasks == ()

    def test_from_toy_batch(self, toy12):
        assert len(toy12) == 12 and toy12.tasks == ("segmentation", "keypoints", "depth")
        assert toy12.keypoints.shape == (12, 5, 3)

    @pytest.mark.parametrize("change, match", [
        ({"images": np.zeros((2, 8, 8), np.uint8)}, "images must be uint8"),
        ({"images": np.zeros((3, 8, 8, 3), np.float32)}, "images must be uint8"),
        ({"segmentation": np.zeros((3, 8, 7), np.uint8)}, "segmentation must have shape"),
        ({"segmentation": np.zeros((3, 8, 8), np.float32)}, "integer class ids"),
        ({"keypoints": np.zeros((3, 2, 2), np.float32)}, "keypoints must be"),
        ({"depth": np.zeros((2, 8, 8), np.float32)}, "depth must have shape"),
        ({"weights": np.array([1.0, -1.0, 1.0])}, "weights must be"),
        ({"weights": np.zeros(3)}, "weights must be"),
        ({"weights": np.ones(2)}, "weights must have shape"),
    ])
    def test_rejects_bad_arrays(self, change, match):
        with pytest.raises(ValueError, match=match):
            DownstreamData(**(_random_data() | change))

    def test_rejects_empty_images(self):
        with pytest.raises(ValueError, match="images is empty"):
            DownstreamData(images=np.zeros((0, 8, 8, 3), np.uint8))

    def test_subset_keeps_every_field_in_order(self):
        d = DownstreamData(**_random_data(), weights=np.array([1.0, 2.0, 3.0]))
        s = d.subset([2, 0])
        assert torch.equal(s.images, d.images[[2, 0]]) and torch.equal(s.depth, d.depth[[2, 0]])
        assert s.weights.tolist() == [3.0, 1.0]
        with pytest.raises(ValueError, match="no indices"):
            d.subset([])
        with pytest.raises(IndexError, match=r"indices must be in \[0, 3\)"):
            d.subset([3])


class TestBuild:
    @pytest.mark.parametrize("size", [(32, 32), (20, 28)])  # 20x28 is padded to 24x32 inside
    def test_unet_outputs_every_requested_task_at_input_size(self, size):
        model = build_downstream("unet", num_classes=4, num_keypoints=3, depth=True, base_width=4)
        out = model(torch.rand(2, 3, *size))
        assert set(out) == {"segmentation", "keypoints", "depth"}
        assert out["segmentation"].shape == (2, 4, *size)
        assert out["keypoints"].shape == (2, 3, *size)
        assert out["depth"].shape == (2, 1, *size)

    def test_only_requested_tasks(self):
        model = build_downstream("unet", num_classes=0, num_keypoints=2, base_width=4)
        assert model.tasks == ("keypoints",)
        assert set(model(torch.rand(1, 3, 16, 16))) == {"keypoints"}

    def test_deeplab_mobilenet_outputs_at_input_size(self):
        model = build_downstream("deeplabv3", num_classes=3, num_keypoints=2, depth=True, backbone="mobilenet_v3_large")
        out = model.eval()(torch.rand(1, 3, 40, 40))
        assert out["segmentation"].shape == (1, 3, 40, 40)
        assert out["keypoints"].shape == (1, 2, 40, 40)
        assert out["depth"].shape == (1, 1, 40, 40)

    def test_init_is_seeded_and_leaves_the_global_rng_alone(self):
        before = torch.random.get_rng_state()
        a = build_downstream("unet", num_classes=3, base_width=4, seed=1)
        assert torch.equal(torch.random.get_rng_state(), before)
        b = build_downstream("unet", num_classes=3, base_width=4, seed=1)
        c = build_downstream("unet", num_classes=3, base_width=4, seed=2)
        assert _same_state(_state(a), _state(b)) and not _same_state(_state(a), _state(c))

    @pytest.mark.parametrize("kind", ["unet", "deeplabv3"])
    def test_regression_heads_start_at_empty_heatmaps_and_the_mean_depth(self, kind):
        model = build_downstream(kind, num_classes=0, num_keypoints=2, depth=True, base_width=4,
                                 backbone="mobilenet_v3_large").eval()
        model.log_depth_offset.fill_(0.3)
        out = model(torch.rand(1, 3, 16, 16))
        assert torch.equal(out["keypoints"], torch.zeros(1, 2, 16, 16))
        assert torch.allclose(out["depth"], torch.full((1, 1, 16, 16), 0.3))

    def test_config_rebuilds_the_same_architecture(self):
        a = build_downstream("unet", num_classes=3, num_keypoints=1, base_width=4, seed=3)
        b = build_downstream(**a.config)
        assert _same_state(_state(a), _state(b))

    def test_normalises_with_imagenet_statistics(self):
        model = build_downstream("unet", num_classes=2, base_width=4)
        seen = []
        model.trunk.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        model(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 8, 8))
        assert torch.allclose(seen[0], torch.zeros(1, 3, 8, 8), atol=1e-6)

    @pytest.mark.parametrize("kwargs, match", [
        ({"kind": "segformer", "num_classes": 3}, "unknown downstream kind"),
        ({"kind": "deeplabv3", "num_classes": 3, "backbone": "vgg16"}, "unknown backbone"),
        ({"num_classes": 0}, "no task requested"),
        ({"num_classes": 1}, "num_classes=1"),
        ({"num_classes": -2}, "must be >= 0"),
        ({"num_classes": 3, "pretrained_backbone": "x.pth"}, "UNet has no pretrained backbone"),
        ({"num_classes": 3, "base_width": 2}, "base_width must be >= 4"),
    ])
    def test_rejects_bad_options(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            build_downstream(**kwargs)

    def test_unet_groupnorm_runs_in_fp32_under_bf16_autocast(self):
        # bf16 GroupNorm backward was a third of a CPU step (benchmarks/downstream_step.py); the UNet's
        # norms compute in fp32 and keep plain GroupNorm's parameters and state_dict keys.
        model = build_downstream("unet", num_classes=2, base_width=4)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert norms and all(type(m) is not torch.nn.GroupNorm for m in norms)
        norm = norms[0]
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, norm.num_channels, 8, 8)
        plain = torch.nn.GroupNorm(norm.num_groups, norm.num_channels)
        plain.load_state_dict(norm.state_dict())
        assert torch.equal(norm(x), plain(x))  # fp32: the plain module exactly
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(x.bfloat16())
        assert y.dtype == torch.float32
        assert torch.equal(y, plain(x.bfloat16().float()))

    def test_forward_rejects_channels_last_images(self):
        model = build_downstream("unet", num_classes=2, base_width=4)
        with pytest.raises(ValueError, match="images_to_input"):
            model(torch.rand(1, 8, 8, 3))


@pytest.fixture(scope="module")
def imagenet_mobilenet() -> dict[str, torch.Tensor]:
    """A torchvision MobileNetV3-Large classifier state dict (random, seeded) as the ImageNet file would hold it."""
    from torchvision.models import mobilenet_v3_large

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        return mobilenet_v3_large(weights=None).state_dict()  # keys "features.N..." and "classifier..."


class TestPretrainedBackbone:
    @pytest.mark.parametrize("layout, suffix", [("torchvision", ".pth"), ("backbone", ".safetensors")])
    def test_weights_are_copied_from_a_local_file(self, tmp_path, imagenet_mobilenet, layout, suffix):
        state = imagenet_mobilenet
        if layout == "backbone":  # the DeepLab backbone's own key names, no prefix
            state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        path = tmp_path / f"mobilenet{suffix}"
        if suffix == ".pth":
            torch.save(state, path)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        model = build_downstream("deeplabv3", num_classes=3, backbone="mobilenet_v3_large", pretrained_backbone=path)
        loaded = model.trunk.backbone.state_dict()
        key = "16.0.weight"  # the last stage's 1x1 conv
        assert torch.equal(loaded[key], imagenet_mobilenet["features." + key])
        assert torch.equal(loaded["0.1.running_var"], imagenet_mobilenet["features.0.1.running_var"])

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="is not a file"):
            build_downstream("deeplabv3", num_classes=3, backbone="mobilenet_v3_large",
                             pretrained_backbone=tmp_path / "absent.pth")

    def test_wrong_network(self, tmp_path):
        path = tmp_path / "resnet_like.pth"
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, path)
        with pytest.raises(ValueError, match="is not a mobilenet_v3_large checkpoint"):
            build_downstream("deeplabv3", num_classes=3, backbone="mobilenet_v3_large", pretrained_backbone=path)

    def test_wrong_shapes(self, tmp_path, imagenet_mobilenet):
        state = dict(imagenet_mobilenet)
        state["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
        path = tmp_path / "bad.pth"
        torch.save(state, path)
        with pytest.raises(ValueError, match="does not fit the mobilenet_v3_large backbone"):
            build_downstream("deeplabv3", num_classes=3, backbone="mobilenet_v3_large", pretrained_backbone=path)


class TestLosses:
    def test_dice_counts_a_small_class_like_a_large_one(self):
        """CE + Dice: a prediction that misses a 4-pixel class entirely costs a Dice term of ~1/classes present,
        whatever the class's size, while its CE share is ~4/area x the logit margin."""
        target = torch.zeros(1, 16, 16, dtype=torch.long)
        target[0, :8] = 1
        target[0, 10:12, 10:12] = 2  # 4 pixels of class 2
        perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 20
        miss_small = perfect.clone()
        miss_small[0, :, 10:12, 10:12] = torch.tensor([20.0, 0, 0])[:, None, None]  # class 2 painted background
        batch = {"segmentation": target, "weights": torch.ones(1)}
        ce = lambda out: float(_losses({"segmentation": out}, batch, sigma=1, min_visibility=2)["segmentation"])  # noqa: E731
        dice = lambda out: float(_losses({"segmentation": out}, batch, sigma=1, min_visibility=2,  # noqa: E731
                                         seg_loss="ce_dice")["segmentation"])
        assert dice(perfect) == pytest.approx(ce(perfect), abs=1e-3)  # nothing to add when every class is right
        # Dice with +1 smoothing: class 2 scores 1/5 (nothing hit, 4 pixels), background 249/253 (4 extra
        # pixels), class 1 is perfect; the loss is 1 - their mean, ~0.27, against a CE of ~0.06.
        expected = 1 - (1 / 5 + 249 / 253 + 1) / 3
        assert dice(miss_small) - ce(miss_small) == pytest.approx(expected, abs=1e-3)
        assert ce(miss_small) < 0.5  # plain CE barely notices

    def test_dice_ignores_ignored_pixels_and_zero_weights(self):
        target = torch.randint(0, 3, (2, 8, 8))
        logits = torch.randn(2, 3, 8, 8)
        ignored = target.clone()
        ignored[1] = IGNORE_INDEX
        a = _losses({"segmentation": logits}, {"segmentation": target, "weights": torch.tensor([1.0, 0.0])},
                    sigma=1, min_visibility=2, seg_loss="ce_dice")["segmentation"]
        b = _losses({"segmentation": logits}, {"segmentation": ignored, "weights": torch.ones(2)},
                    sigma=1, min_visibility=2, seg_loss="ce_dice")["segmentation"]
        assert float(a) == pytest.approx(float(b), abs=1e-6)

    def test_all_zero_heatmaps_cost_exactly_one_per_visible_keypoint(self):
        kps = torch.tensor([[[3.0, 4.0, 2.0], [0.0, 0.0, 2.0], [5.0, 5.0, 1.0]]])
        batch = {"keypoints": kps, "weights": torch.ones(1)}
        out = {"keypoints": torch.zeros(1, 3, 12, 12)}
        assert float(_losses(out, batch, sigma=1.5, min_visibility=2)["keypoints"]) == pytest.approx(1.0)
        # The exact target costs 0 on the visible points; the occluded one is not trained.
        out = {"keypoints": render_heatmaps(kps[..., :2], (12, 12), 1.5)}
        out["keypoints"][0, 2] = 7.0
        assert float(_losses(out, batch, sigma=1.5, min_visibility=2)["keypoints"]) == pytest.approx(0.0, abs=1e-7)

    def test_cross_entropy_skips_ignored_pixels_like_the_reference(self):
        logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        target = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
        target[0, :2] = 255
        got = _losses({"segmentation": logits}, {"segmentation": target, "weights": torch.ones(2)},
                      sigma=1.0, min_visibility=2)["segmentation"]
        want = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
        assert float(got) == pytest.approx(float(want), rel=1e-6)

    def test_depth_loss_is_l1_on_log_depth_of_valid_pixels(self):
        depth = torch.tensor([[[1.0, math.e], [0.0, float("nan")]]])
        pred = torch.zeros(1, 1, 2, 2)  # log-depth 0 everywhere
        got = _losses({"depth": pred}, {"depth": depth, "weights": torch.ones(1)}, sigma=1.0, min_visibility=2)
        assert float(got["depth"]) == pytest.approx(0.5)  # (|0 - 0| + |0 - 1|) / 2 valid pixels

    def test_sample_weights_scale_each_sample(self):
        logits = torch.zeros(2, 2, 1, 1)
        logits[1, 1] = 10.0  # sample 1 is confidently right, sample 0 is 50/50
        target = torch.ones(2, 1, 1, dtype=torch.long)
        got = _losses({"segmentation": logits}, {"segmentation": target, "weights": torch.tensor([0.0, 1.0])},
                      sigma=1.0, min_visibility=2)
        assert float(got["segmentation"]) < 1e-3


class TestFlip:
    def test_mirror_swaps_left_and_right(self):
        d = DownstreamData(**_random_data(n=2, w=8, j=3))
        batch = {"images": d.images, "segmentation": d.segmentation, "keypoints": d.keypoints, "depth": d.depth}
        perm = torch.tensor([1, 0, 2])
        lut = torch.arange(256)
        lut[1], lut[2] = 2, 1
        out = _flip(batch, torch.tensor([True, False]), perm, lut)
        assert torch.equal(out["images"][0], d.images[0].flip(1)) and torch.equal(out["images"][1], d.images[1])
        assert torch.equal(out["depth"][0], d.depth[0].flip(1))
        assert torch.equal(out["segmentation"][0], lut[d.segmentation[0].flip(1).long()].to(torch.uint8))
        assert out["keypoints"][0, 0, 0] == pytest.approx(7 - float(d.keypoints[0, 1, 0]))
        assert torch.equal(out["keypoints"][0, :, 1], d.keypoints[0, [1, 0, 2], 1])
        assert torch.equal(out["keypoints"][1], d.keypoints[1])
        twice = _flip(out, torch.tensor([True, False]), perm, lut)
        assert all(torch.equal(twice[k], batch[k]) for k in ("images", "segmentation", "depth"))
        assert torch.allclose(twice["keypoints"], batch["keypoints"])


class TestTraining:
    def _train(self, data, seed=0, **kwargs):
        model = build_downstream("unet", num_classes=8, num_keypoints=5, depth=True, base_width=4, seed=0)
        options = dict(epochs=2, batch_size=4, seed=seed, max_steps=4)
        summary = train_downstream(model, data, **(options | kwargs))
        return model, summary

    def test_repeats_bit_for_bit_on_cpu(self, toy12):
        opts = dict(augment=True, flip_pairs=TOY_FLIP_PAIRS, val_fraction=0.25)
        a, sa = self._train(toy12, **opts)
        b, sb = self._train(toy12, **opts)
        c, _ = self._train(toy12, seed=1, **opts)
        assert _same_state(_state(a), _state(b)) and sa.history == sb.history
        assert not _same_state(_state(a), _state(c))

    def test_zero_weight_samples_are_never_trained_on(self, toy12):
        keep = [0, 2, 3, 5, 6, 7, 9, 11]
        weights = torch.zeros(len(toy12))
        weights[keep] = 1.0
        a, _ = self._train(DownstreamData.from_batch(toy12, weights=weights))
        b, _ = self._train(toy12.subset(keep))
        assert _same_state(_state(a), _state(b))

    def test_validation_split_selects_the_best_epoch(self, toy12):
        model, summary = self._train(toy12, epochs=3, max_steps=None, val_fraction=0.25)
        assert summary.selected_on == "val_miou" and len(summary.val_indices) == 3
        assert summary.best_score == max(h["val_miou"] for h in summary.history)
        assert summary.steps == 3 * 2  # 9 training samples, batches of 4, the incomplete one skipped
        again = evaluate_downstream(model, toy12.subset(list(summary.val_indices)), batch_size=4)
        assert again["miou"] == pytest.approx(summary.best_score, abs=1e-12)

    def test_cosine_schedule_warms_up_and_ends_at_zero(self, toy12):
        rates = []

        class Spy(torch.optim.Adam):
            def step(self, closure=None):
                rates.append(self.param_groups[0]["lr"])
                return super().step(closure)

        from unittest import mock
        with mock.patch("torch.optim.Adam", Spy):
            self._train(toy12, epochs=100, max_steps=100, lr=1e-2, lr_schedule="cosine")
        assert len(rates) == 100
        assert rates[0] < rates[1] < rates[2]  # 3 warm-up steps (3 %)
        assert rates[2] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(2 * math.pi / 100)), rel=1e-6)
        assert rates[2:] == sorted(rates[2:], reverse=True) and rates[-1] < 1e-4

    def test_bf16_trains_and_stays_close_to_fp32(self, toy12):
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            pytest.skip("no native bf16 on this CPU (emulated bf16 is only slow, not wrong)")
        a, sa = self._train(toy12, max_steps=3)
        b, sb = self._train(toy12, max_steps=3, precision="bf16")
        assert not _same_state(_state(a), _state(b))  # it did run in bf16
        la = [h["loss"] for h in sa.history]
        lb = [h["loss"] for h in sb.history]
        assert lb == pytest.approx(la, rel=0.05)

    def test_callback_sees_every_step_and_max_steps_stops(self, toy12):
        seen = []
        _, summary = self._train(toy12, epochs=10, max_steps=5, callback=lambda step, logs: seen.append((step, logs)))
        steps = [s for s, logs in seen if "epoch" not in logs]
        assert steps == [1, 2, 3, 4, 5] and summary.steps == 5
        assert all(math.isfinite(logs["loss"]) for _, logs in seen)

    def test_depth_is_predicted_in_the_training_units(self, toy12):
        metres, _ = self._train(toy12)
        mm_data = DownstreamData(images=toy12.images, segmentation=toy12.segmentation,
                                 keypoints=toy12.keypoints, depth=toy12.depth * 1000)
        millimetres, _ = self._train(mm_data)
        assert float(metres.log_depth_offset) == pytest.approx(float(toy12.depth.log().mean()), rel=1e-5)
        p_m = predict_downstream(metres, toy12.images[:2])["depth"]
        p_mm = predict_downstream(millimetres, toy12.images[:2])["depth"]
        assert torch.allclose(p_mm, 1000 * p_m, rtol=1e-3)

    @pytest.mark.parametrize("drop, match", [
        ("segmentation", "predicts segmentation but the training data has none"),
        ("keypoints", "predicts keypoints but the training data has none"),
        ("depth", "predicts depth but the training data has none"),
    ])
    def test_rejects_missing_task_data(self, toy12, drop, match):
        data = DownstreamData(**{f: getattr(toy12, f) for f in ("images", "segmentation", "keypoints", "depth")
                                 if f != drop})
        with pytest.raises(ValueError, match=match):
            self._train(data)

    @pytest.mark.parametrize("kwargs, match", [
        ({"epochs": 0}, "epochs and batch_size must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"val_fraction": 0.99}, "leaves no training sample"),
        ({"sigma": 0.0}, "sigma must be > 0"),
        ({"augment": True}, "needs flip_pairs"),
        ({"augment": True, "flip_pairs": [(0, 5)]}, r"flip_pairs pair \(0, 5\) is out of range"),
        ({"task_weights": {"normals": 1.0}}, "task_weights names"),
        ({"seg_loss": "focal"}, "seg_loss must be one of"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of"),
        ({"precision": "fp16"}, "precision must be one of"),
        ({"lr_schedule": "cosine", "max_steps": None}, "cosine.*pass max_steps"),
    ])
    def test_rejects_bad_options(self, toy12, kwargs, match):
        with pytest.raises(ValueError, match=match):
            self._train(toy12, **kwargs)

    def test_rejects_a_split_that_leaves_only_zero_weights_to_train(self, toy12):
        _, summary = self._train(toy12, val_fraction=0.5, max_steps=1)
        weights = torch.zeros(len(toy12))
        weights[list(summary.val_indices)] = 1.0  # the same seed holds out the same samples
        with pytest.raises(ValueError, match="every training sample has weight 0"):
            self._train(DownstreamData.from_batch(toy12, weights=weights), val_fraction=0.5)

    def test_rejects_labels_outside_the_model(self, toy12):
        model = build_downstream("unet", num_classes=4, base_width=4)
        with pytest.raises(ValueError, match=r"class id \d+ but the model has num_classes=4"):
            train_downstream(model, toy12, epochs=1, batch_size=4, seed=0)
        model = build_downstream("unet", num_classes=0, num_keypoints=3, base_width=4)
        with pytest.raises(ValueError, match="has 5 keypoints but the model predicts 3"):
            train_downstream(model, toy12, epochs=1, batch_size=4, seed=0)

    def test_deeplab_needs_batches_of_two(self, toy12):
        model = build_downstream("deeplabv3", num_classes=8, backbone="mobilenet_v3_large")
        with pytest.raises(ValueError, match="batches of >= 2"):
            train_downstream(model, toy12, epochs=1, batch_size=1, seed=0)

    def test_deeplab_trains_a_step(self, toy12):
        model = build_downstream("deeplabv3", num_classes=8, num_keypoints=5, depth=True, backbone="mobilenet_v3_large")
        summary = train_downstream(model, toy12, epochs=1, batch_size=2, seed=0, max_steps=1)
        assert summary.steps == 1 and math.isfinite(summary.history[0]["loss"])


class _Oracle:
    """Returns the test labels as network outputs, so evaluation must score it perfectly."""

    def __init__(self, data: DownstreamData, num_classes: int):
        self.data, self.k = data, num_classes
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        sl = slice(self.calls, self.calls + n)
        self.calls += n
        seg = torch.nn.functional.one_hot(self.data.segmentation[sl].long(), self.k).permute(0, 3, 1, 2).float()
        heat = render_heatmaps(self.data.keypoints[sl, :, :2], self.data.image_size, 2.0)
        depth = torch.nan_to_num(self.data.depth[sl], nan=1.0).log()[:, None]
        return {"segmentation": seg, "keypoints": heat, "depth": depth}


class TestEvaluate:
    def _net_with(self, forward: _Oracle, num_classes: int, num_keypoints: int) -> DownstreamNet:
        model = build_downstream("unet", num_classes=num_classes, num_keypoints=num_keypoints, depth=True, base_width=4)
        model.forward = forward  # keep the DownstreamNet bookkeeping, replace the network
        return model

    def test_perfect_predictions_score_perfectly(self, toy12):
        depth = toy12.depth.clone()
        depth[:, 0, 0] = float("nan")  # invalid pixels are not scored
        test = DownstreamData(images=toy12.images, segmentation=toy12.segmentation, keypoints=toy12.keypoints,
                              depth=depth)
        model = self._net_with(_Oracle(test, 8), 8, 5)
        r = evaluate_downstream(model, test, batch_size=5, pck_alpha=0.01)
        present = torch.bincount(test.segmentation.reshape(-1).long(), minlength=8) > 0
        assert r["iou"] == pytest.approx(present.double().tolist(), abs=1e-6)  # absent classes score 0
        assert r["pck"] == 1.0 and r["num_keypoints"] == int((test.keypoints[..., 2] == 2).sum())
        assert r["depth_rmse"] < 1e-5 and r["num_depth_pixels"] == 12 * 32 * 32 - 12

    def test_scores_equal_the_reference_metrics_on_the_whole_set(self, toy12):
        model = build_downstream("unet", num_classes=8, num_keypoints=5, depth=True, base_width=4, seed=4)
        model.log_depth_offset.fill_(0.4)
        r = evaluate_downstream(model, toy12, batch_size=5, pck_alpha=0.2, keypoint_min_visibility=1)
        pred = predict_downstream(model, toy12.images, batch_size=5)  # same batches: same rounding
        assert r["miou"] == pytest.approx(miou(pred["segmentation"], toy12.segmentation, 8), abs=1e-12)
        assert r["pck"] == pytest.approx(pck(pred["keypoints"][..., :2], toy12.keypoints, image_size=(32, 32), alpha=0.2))
        want = depth_errors(pred["depth"], toy12.depth)
        assert r["depth_rmse"] == pytest.approx(want["rmse"], rel=1e-9)
        assert r["depth_abs_rel"] == pytest.approx(want["abs_rel"], rel=1e-9)

    def test_occluded_keypoints_are_not_scored_by_default(self, toy12):
        kps = toy12.keypoints.clone()
        kps[:4, 0, 2] = 1.0  # occluded: labeled position, but not visible
        kps[4, 1, 2] = 0.0  # unlabeled
        test = DownstreamData(images=toy12.images, keypoints=kps)
        model = build_downstream("unet", num_classes=0, num_keypoints=5, base_width=4)
        assert evaluate_downstream(model, test)["num_keypoints"] == 12 * 5 - 5
        assert evaluate_downstream(model, test, keypoint_min_visibility=1)["num_keypoints"] == 12 * 5 - 1

    def test_rejects_mismatched_options(self, toy12):
        model = build_downstream("unet", num_classes=8, base_width=4)
        with pytest.raises(ValueError, match="num_classes=9 but the model was built with 8"):
            evaluate_downstream(model, toy12, num_classes=9)
        with pytest.raises(ValueError, match="pck_alpha must be in"):
            evaluate_downstream(model, toy12, pck_alpha=0.0)
        with pytest.raises(ValueError, match="the test data has none"):
            evaluate_downstream(model, DownstreamData(images=toy12.images))

    def test_predict_rejects_float_images(self):
        model = build_downstream("unet", num_classes=2, base_width=4)
        with pytest.raises(ValueError, match="images must be uint8"):
            predict_downstream(model, torch.rand(1, 8, 8, 3))


class TestToyWorldEndToEnd:
    def test_more_labeled_images_train_a_clearly_better_network(self):
        """200 toy faces beat 8 on 100 held-out ones: the measurement can tell datasets apart."""
        train = DownstreamData.from_batch(render_batch(range(1000, 1200), 32))
        test = DownstreamData.from_batch(render_batch(range(5000, 5100), 32))
        scores = {}
        for n, steps, batch in ((200, 80, 12), (8, 60, 8)):
            model = build_downstream("unet", num_classes=8, base_width=8, seed=0)
            train_downstream(model, train.subset(range(n)), epochs=1000, batch_size=batch, seed=0,
                             max_steps=steps, lr=3e-3)
            scores[n] = evaluate_downstream(model, test)["miou"]
        constant = SegmentationMeter(8)
        constant.update(torch.zeros_like(test.segmentation), test.segmentation)  # all background
        assert scores[200] > scores[8] + 0.04, scores
        assert scores[200] > constant.miou() + 0.1, (scores, constant.miou())


def test_images_to_input_is_chw_in_unit_range():
    x = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)
    assert images_to_input(x).flatten().tolist() == pytest.approx([0.0, 1.0, 0.2])
