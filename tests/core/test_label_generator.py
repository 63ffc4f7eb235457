"""The label generator: factorized inference equals the naive hypercolumn MLP; fitting, decoding, I/O."""

from __future__ import annotations

import json
import math

import pytest
import torch

from handsoff_ray.core import stylegan2
from handsoff_ray.core.label_generator import (
    LabelGenerator,
    TaskSpec,
    clean_small_classes,
    decode_keypoints,
    fit_label_generator,
    load_label_generator,
    merge_label_generators,
    predict_naive,
    render_heatmaps,
    save_label_generator,
)
from handsoff_ray.core.label_generator.fit import _ValSet
from handsoff_ray.core.label_generator.pools import build_task_data, _near_keypoints, sample_pixels

SMALL = (16, 8)




def _features(sizes, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(s, s) if isinstance(s, int) else s for s in sizes]
    return [torch.randn(n, 3 + i % 3, h, w, generator=gen) for i, (h, w) in enumerate(shapes)]


def _randomise_batchnorm(lg: LabelGenerator, seed: int = 0) -> None:
    """Non-trivial running statistics and affine terms, so BatchNorm folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lg.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.3, generator=gen)
                m.bias.normal_(0, 0.3, generator=gen)


THREE_TASKS = {"seg": TaskSpec("segmentation", 5, hidden=SMALL), "kp": TaskSpec("keypoints", 3, hidden=(8, 4)),
               "depth": TaskSpec("depth", 1, hidden=SMALL)}


class TestTaskSpec:
    @pytest.mark.parametrize("kwargs,match", [
        ({"kind": "normals", "num_outputs": 3}, "kind must be one of"),
        ({"kind": "segmentation", "num_outputs": 0}, "num_outputs must be >= 1"),
        ({"kind": "depth", "num_outputs": 2}, "a depth head has one output"),
        ({"kind": "segmentation", "num_outputs": 2, "hidden": (8,)}, "two positive widths"),
        ({"kind": "segmentation", "num_outputs": 2, "class_weights": (1.0,)}, "one weight per class"),
        ({"kind": "keypoints", "num_outputs": 2, "sigma": 0}, "sigma must be > 0"),
        ({"kind": "keypoints", "num_outputs": 2, "positive_fraction": 1.0}, "positive_fraction"),
    ])
    def test_rejects_invalid_specs(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            TaskSpec(**kwargs)

    def test_dict_round_trip_normalises_lists(self):
        spec = TaskSpec("segmentation", 3, hidden=[4, 2], class_weights=[1, 2, 3])
        assert spec.hidden == (4, 2) and spec.class_weights == (1.0, 2.0, 3.0)
        assert TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


class TestFactorizedPredict:
    @pytest.mark.parametrize("sizes,out_size", [
        pytest.param([4, 4, 8, 8, 16, 16], (16, 16), id="out16"),
        pytest.param([4, 4, 8, 8, 16, 16], (24, 24), id="out24-non-integer"),
        pytest.param([4, 4, 8, 8, 16, 16, 32, 32], (16, 16), id="out16-with-downsampled-maps"),
        pytest.param([(4, 2), (8, 4), (16, 8)], (16, 8), id="non-square"),
    ])
    def test_equals_naive_hypercolumn_mlp(self, sizes, out_size):
        feats = _features(sizes)
        lg = LabelGenerator([f.shape[1] for f in feats], THREE_TASKS, out_size=out_size, ensemble_size=3)
        _randomise_batchnorm(lg)
        lg.eval()
        fast, naive = lg.predict(feats), predict_naive(lg, feats)
        for name, spec in THREE_TASKS.items():
            assert fast[name].shape == (3, 2, spec.num_outputs, *out_size)
            scale = naive[name].abs().max()
            assert (fast[name] - naive[name]).abs().max() <= 1e-4 * scale, name

    def test_on_generator_features(self):
        cfg = stylegan2.GeneratorConfig(resolution=16, style_dim=16, n_mlp=2, channel_base=128, channel_max=16)
        G = stylegan2.Generator(cfg).eval()
        with torch.no_grad():
            ws = G.mapping(stylegan2.z_from_seeds([0, 1], cfg.style_dim))
            _, feats = G.synthesis(ws, return_features=True)
        assert [f.shape[1] for f in feats] == [s.channels for s in stylegan2.feature_spec(cfg)]
        for out_size in [(8, 8), (32, 32)]:  # the 16x16 maps are down-sampled for (8, 8)
            lg = LabelGenerator([f.shape[1] for f in feats], {"seg": TaskSpec("segmentation", 4, hidden=SMALL)},
                                out_size=out_size, ensemble_size=2)
            _randomise_batchnorm(lg, seed=1)
            lg.eval()
            fast, naive = lg.predict(feats)["seg"], predict_naive(lg, feats)["seg"]
            assert (fast - naive).abs().max() <= 1e-4 * naive.abs().max()

    def test_member_subsets_and_chunk_sizes_give_the_same_outputs(self):
        feats = _features([4, 8, 16])
        lg = LabelGenerator([f.shape[1] for f in feats], {"seg": TaskSpec("segmentation", 3, hidden=SMALL)},
                            out_size=(16, 16), ensemble_size=4).eval()
        _randomise_batchnorm(lg)
        full = lg.predict(feats)["seg"]
        torch.testing.assert_close(lg.predict(feats, members=[3, 1])["seg"], full[[3, 1]], atol=1e-5, rtol=0)
        for chunk in (1, 5, 16):
            torch.testing.assert_close(lg.predict(feats, chunk=chunk)["seg"], full, atol=1e-5, rtol=0)

    def test_rejects_features_of_another_generator(self):
        lg = LabelGenerator([3, 4], {"seg": TaskSpec("segmentation", 2, hidden=SMALL)}, out_size=(8, 8),
                            ensemble_size=1)
        with pytest.raises(ValueError, match="fitted on \\[3, 4\\]"):
            lg.predict([torch.zeros(1, 3, 4, 4), torch.zeros(1, 5, 8, 8)])
        with pytest.raises(ValueError, match="members \\[7\\] are not in this label generator"):
            lg.predict([torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 8, 8)], members=[7])

    def test_init_is_reference_mlp(self):
        lg = LabelGenerator([3, 4], {"seg": TaskSpec("segmentation", 2, hidden=(6, 5))}, out_size=(8, 8),
                            ensemble_size=1)
        layers = [type(m).__name__ for m in lg.heads["seg"].members[0]]
        assert layers == ["Linear", "ReLU", "BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Linear"]
        first = lg.heads["seg"].members[0][0]
        assert first.weight.shape == (6, 7) and first.bias.abs().max() == 0


def _separable_problem(n=2, size=16, seed=0):
    """Features whose finest map's channel 0 decides the class: a per-pixel MLP must learn it."""
    feats = _features([4, 8, size], n=n, seed=seed)
    masks = (feats[-1][:, 0] > 0).long()
    per_image = [[f[i] for f in feats] for i in range(n)]
    return feats, per_image, masks


FIT = dict(max_steps=60, batch_pixels=128, eval_every=20, patience=5)


class TestFit:
    def test_learns_a_separable_segmentation(self):
        feats, per_image, masks = _separable_problem()
        tasks = {"seg": TaskSpec("segmentation", 2, hidden=SMALL, min_pixels=0)}
        lg, history = fit_label_generator(per_image, {"seg": masks}, tasks, out_size=(16, 16), ensemble_size=2,
                                          **{**FIT, "max_steps": 150})
        labels = lg.decode("seg", lg.predict(feats)["seg"])
        assert (labels == masks).float().mean() > 0.95
        assert set(history["seg"]) == {0, 1}
        assert history["seg"][0]["val_loss"][-1] < history["seg"][0]["val_loss"][0]

    def test_learns_keypoints_and_depth_that_the_features_encode(self):
        n, size = 2, 16
        feats = _features([4, 8, size], n=n, seed=3)
        kp = torch.tensor([[[4.0, 5.0, 2.0]], [[11.0, 9.0, 2.0]]])
        depth = 1.0 + 4.0 * torch.sigmoid(feats[-1][:, 1])  # metres in [1, 5]
        with torch.no_grad():  # the finest map carries the answer in channel 0
            feats[-1][:, 0] = render_heatmaps(kp, (size, size), sigma=1.5)[:, 0] * 4
        per_image = [[f[i] for f in feats] for i in range(n)]
        tasks = {"kp": TaskSpec("keypoints", 1, hidden=SMALL, sigma=1.5), "depth": TaskSpec("depth", 1, hidden=SMALL)}
        lg, _ = fit_label_generator(per_image, {"kp": kp, "depth": depth}, tasks, out_size=(size, size),
                                    ensemble_size=1, **{**FIT, "max_steps": 200, "lr": 3e-3})
        out = lg.predict(feats)
        torch.testing.assert_close(lg.decode("kp", out["kp"])[..., :2], kp[..., :2], atol=0.25, rtol=0)
        rel = (lg.decode("depth", out["depth"]) - depth).abs() / depth
        assert rel.mean() < 0.05

    def test_member_subsets_fit_identically_and_merge(self):
        _, per_image, masks = _separable_problem()
        kp = torch.tensor([[[3.0, 4.0, 2.0], [10.0, 12.0, 1.0]]]).repeat(2, 1, 1)
        depth = torch.rand(2, 16, 16) + 0.5
        targets = {"seg": masks, "kp": kp, "depth": depth}
        tasks = {"seg": TaskSpec("segmentation", 2, hidden=SMALL, min_pixels=0),
                 "kp": TaskSpec("keypoints", 2, hidden=(8, 4), sigma=1.5), "depth": TaskSpec("depth", 1, hidden=SMALL)}
        common = dict(out_size=(16, 16), ensemble_size=3, seed=7, **FIT)
        whole, _ = fit_label_generator(per_image, targets, tasks, **common)
        part_a, _ = fit_label_generator(per_image, targets, tasks, members=[2], **common)
        part_b, _ = fit_label_generator(per_image, targets, tasks, members=[0, 1], **common)
        merged = merge_label_generators([part_a, part_b])
        assert merged.member_ids == [0, 1, 2]
        assert whole.state_dict().keys() == merged.state_dict().keys()
        for key, value in whole.state_dict().items():
            assert torch.equal(value, merged.state_dict()[key]), key
        assert merged.history_summary["seg"].keys() == {"0", "1", "2"}
        # A different seed gives different members.
        other, _ = fit_label_generator(per_image, targets, tasks, members=[2], **{**common, "seed": 8})
        assert not torch.equal(other.heads["seg"].members[0][0].weight, part_a.heads["seg"].members[0][0].weight)

    def test_merge_rejects_overlapping_or_mismatched_parts(self):
        a = LabelGenerator([3], {"seg": TaskSpec("segmentation", 2, hidden=SMALL)}, out_size=(8, 8),
                           ensemble_size=3, member_ids=[0, 1])
        b = LabelGenerator([3], {"seg": TaskSpec("segmentation", 2, hidden=SMALL)}, out_size=(8, 8),
                           ensemble_size=3, member_ids=[1, 2])
        c = LabelGenerator([3], {"seg": TaskSpec("segmentation", 2, hidden=SMALL)}, out_size=(8, 8),
                           ensemble_size=3, member_ids=[2], seed=5)
        with pytest.raises(ValueError, match="share member ids \\[1\\]"):
            merge_label_generators([a, b])
        with pytest.raises(ValueError, match="same spec and seed"):
            merge_label_generators([a, c])

    def test_early_stopping_keeps_the_best_weights(self, monkeypatch):
        _, per_image, masks = _separable_problem()
        tasks = {"seg": TaskSpec("segmentation", 2, hidden=SMALL, min_pixels=0)}
        scripted, snapshots = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.1]), []

        def fake_val_loss(self, member):
            snapshots.append({k: v.clone() for k, v in member.state_dict().items()})
            return next(scripted)

        monkeypatch.setattr(_ValSet, "loss", fake_val_loss)
        events = []
        lg, history = fit_label_generator(per_image, {"seg": masks}, tasks, out_size=(16, 16), ensemble_size=1,
                                          max_steps=1000, batch_pixels=64, eval_every=10, patience=3,
                                          callback=events.append)
        h = history["seg"][0]
        assert h["stopped_early"] and h["steps"] == [10, 20, 30, 40, 50]
        assert h["best_step"] == 20 and h["best_val_loss"] == 0.5
        assert [e["step"] for e in events] == [10, 20, 30, 40, 50]
        assert set(events[0]) == {"task", "member", "step", "train_loss", "val_loss"}
        final = lg.heads["seg"].members[0].state_dict()
        assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
        assert not torch.equal(final["0.weight"], snapshots[-1]["0.weight"])

    def test_cosine_schedule_decays_the_rate_to_zero_at_max_steps(self, monkeypatch):
        _, per_image, masks = _separable_problem()
        tasks = {"seg": TaskSpec("segmentation", 2, hidden=SMALL, min_pixels=0)}
        rates = []
        real_step = torch.optim.Adam.step

        def spy(self, *a, **kw):
            rates.append(self.param_groups[0]["lr"])
            return real_step(self, *a, **kw)

        monkeypatch.setattr(torch.optim.Adam, "step", spy)
        fit_label_generator(per_image, {"seg": masks}, tasks, out_size=(16, 16), ensemble_size=1,
                            lr_schedule="cosine", **{**FIT, "max_steps": 40, "patience": 100})
        assert len(rates) == 40 and rates[0] == pytest.approx(1e-3)
        assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 1e-5
        rates.clear()
        fit_label_generator(per_image, {"seg": masks}, tasks, out_size=(16, 16), ensemble_size=1,
                            **{**FIT, "max_steps": 40, "patience": 100})
        assert rates == [1e-3] * 40

    def test_rejects_unknown_lr_schedule(self):
        _, per_image, masks = _separable_problem()
        tasks = {"seg": TaskSpec("segmentation", 2, hidden=SMALL, min_pixels=0)}
        with pytest.raises(ValueError, match="lr_schedule must be constant or cosine"):
            fit_label_generator(per_image, {"seg": masks}, tasks, out_size=(16, 16), lr_schedule="step", **FIT)

    def test_validation_pixels_are_never_sampled_for_training(self):
        masks = torch.randint(0, 3, (2, 16, 16))
        is_val = torch.rand(2 * 16 * 16, generator=torch.Generator().manual_seed(0)) < 0.3
        data = build_task_data("seg", TaskSpec("segmentation", 3, min_pixels=0), masks, is_val, (16, 16),
                                      class_balanced=True, max_val_pixels=10_000, seed=0)
        train = torch.cat(data.pools)
        assert not is_val[train].any() and is_val[torch.cat(data.val_pools)].all()

    def test_class_balanced_sampling_draws_classes_equally(self):
        masks = torch.zeros(1, 32, 32, dtype=torch.long)
        masks[0, :2, :4] = 1  # 8 pixels of class 1 among 1024
        is_val = torch.zeros(1024, dtype=torch.bool)
        spec = TaskSpec("segmentation", 2, min_pixels=0)
        gen = torch.Generator().manual_seed(0)
        for balanced, expected in [(True, 0.5), (False, 8 / 1024)]:
            data = build_task_data("seg", spec, masks, is_val, (32, 32), class_balanced=balanced,
                                          max_val_pixels=10, seed=0)
            share = data.labels[sample_pixels(data, 20_000, gen)].float().mean().item()
            assert share == pytest.approx(expected, abs=0.02)

    @pytest.mark.parametrize("targets,match", [
        ({"seg": torch.zeros(2, 8, 8, dtype=torch.long)}, "expected \\(2, 16, 16\\)"),
        ({"seg": torch.full((2, 16, 16), 4)}, "class id 4 outside \\[0, 2\\)"),
        ({"other": torch.zeros(2, 16, 16)}, "one target per task"),
    ])
    def test_rejects_bad_targets(self, targets, match):
        _, per_image, _ = _separable_problem()
        with pytest.raises(ValueError, match=match):
            fit_label_generator(per_image, targets, {"seg": TaskSpec("segmentation", 2)}, out_size=(16, 16),
                                ensemble_size=1, max_steps=1)

    def test_rejects_unlabeled_keypoints(self):
        _, per_image, _ = _separable_problem()
        kp = torch.zeros(2, 2, 3)
        with pytest.raises(ValueError, match="no keypoint has v >= min_visibility=2"):
            fit_label_generator(per_image, {"kp": kp}, {"kp": TaskSpec("keypoints", 2)}, out_size=(16, 16),
                                ensemble_size=1, max_steps=1)


class TestSegmentationCleanup:
    def test_small_classes_become_background_per_image(self):
        masks = torch.zeros(2, 8, 8, dtype=torch.long)
        masks[0, :2, :2] = 1  # 4 pixels: dropped
        masks[0, 4:, 4:] = 2  # 16 pixels: kept
        masks[1, :3, :3] = 1  # 9 pixels in image 1: kept
        masks[1, 0, 7] = 255  # ignore label is never cleaned
        out = clean_small_classes(masks, 5)
        assert (out[0] == 1).sum() == 0 and (out[0] == 2).sum() == 16
        assert (out[1] == 1).sum() == 9 and out[1, 0, 7] == 255
        assert torch.equal(clean_small_classes(masks, 0), masks)


class TestKeypoints:
    def test_decode_recovers_subpixel_gaussian_peaks(self):
        points = torch.tensor([[[5.3, 7.6, 2.0], [12.0, 3.25, 2.0], [0.0, 15.0, 2.0]]])
        heat = render_heatmaps(points, (16, 20), sigma=2.0)
        decoded = decode_keypoints(heat)
        torch.testing.assert_close(decoded[..., :2], points[..., :2], atol=1e-3, rtol=0)
        assert decoded[..., 2].tolist() == [[2.0, 2.0, 2.0]]

    def test_low_peaks_decode_as_invisible(self):
        heat = 0.3 * render_heatmaps(torch.tensor([[[4.0, 4.0]]]), (8, 8), sigma=1.0)
        assert decode_keypoints(heat, threshold=0.5)[0, 0, 2] == 0
        assert decode_keypoints(heat, threshold=0.2)[0, 0, 2] == 2

    def test_loss_ignores_keypoints_below_min_visibility(self):
        kp = torch.tensor([[[3.0, 3.0, 2.0], [5.0, 5.0, 1.0], [6.0, 1.0, 0.0]]])
        is_val = torch.zeros(64, dtype=torch.bool)
        data = build_task_data("kp", TaskSpec("keypoints", 3, sigma=1.0), kp, is_val, (8, 8),
                                      class_balanced=False, max_val_pixels=8, seed=0)
        out = torch.randn(64, 3, requires_grad=True)
        data.loss(out, torch.arange(64)).backward()
        assert out.grad[:, 0].abs().sum() > 0
        assert out.grad[:, 1:].abs().sum() == 0  # occluded (v=1) and unlabeled (v=0) are masked
        # positive pixels (near the trained keypoint) form their own sampling pool
        assert len(data.pools) == 2 and data.pool_weights.tolist() == [0.5, 0.5]


    def test_positive_pool_is_the_three_sigma_disc_of_trained_keypoints(self):
        kp = torch.tensor([[[3.0, 4.5, 2.0], [15.2, 0.3, 2.0], [30.0, 30.0, 2.0], [8.0, 8.0, 0.0]]])
        near = _near_keypoints(kp, kp[..., 2] >= 2, (16, 16), radius=3 * 1.5)
        heat = render_heatmaps(kp[:, :3], (16, 16), sigma=1.5)  # exp(-d^2 / 2 sigma^2) >= exp(-4.5)
        assert torch.equal(near, (heat >= math.exp(-4.5)).any(dim=1))


class TestDepth:
    def test_normalisation_uses_valid_training_pixels_and_decode_returns_units(self):
        depth = torch.full((1, 8, 8), 2.0)
        depth[0, :4] = 8.0
        depth[0, 0, :2] = 0.0  # invalid
        is_val = torch.zeros(64, dtype=torch.bool)
        data = build_task_data("depth", TaskSpec("depth", 1), depth, is_val, (8, 8), class_balanced=False,
                                      max_val_pixels=8, seed=0)
        valid = torch.log(depth[depth > 0])
        mu, sd = data.target_norm
        assert mu == pytest.approx(valid.mean().item()) and sd == pytest.approx(valid.std().item())
        assert data.pools[0].numel() == 62
        lg = LabelGenerator([2], {"depth": TaskSpec("depth", 1, hidden=SMALL)}, out_size=(8, 8), ensemble_size=2)
        lg.heads["depth"].target_norm.copy_(torch.tensor([mu, sd]))
        normalised = ((torch.log(depth.clamp_min(1e-6)) - mu) / sd)[None, :, None].expand(2, 1, 1, 8, 8)
        decoded = lg.decode("depth", normalised)
        torch.testing.assert_close(decoded[depth > 0], depth[depth > 0])


class TestSaveLoad:
    def test_round_trip_keeps_outputs_and_header(self, tmp_path):
        _, per_image, masks = _separable_problem()
        depth = torch.rand(2, 16, 16) + 1.0
        tasks = {"seg": TaskSpec("segmentation", 2, hidden=SMALL, min_pixels=0), "depth": TaskSpec("depth", 1)}
        lg, _ = fit_label_generator(per_image, {"seg": masks, "depth": depth}, tasks, out_size=(16, 16),
                                    ensemble_size=2, members=[1], **{**FIT, "max_steps": 20})
        path = tmp_path / "lg.safetensors"
        save_label_generator(lg, path)
        back = load_label_generator(path)
        assert back.member_ids == [1] and back.tasks == lg.tasks and back.out_size == (16, 16)
        assert back.history_summary == json.loads(json.dumps(lg.history_summary))
        feats = [torch.stack([img[i] for img in per_image]) for i in range(3)]
        for name in tasks:
            torch.testing.assert_close(back.predict(feats)[name], lg.predict(feats)[name], atol=0, rtol=0)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = json.loads(f.metadata()["handsoff_ray"])
        assert header["target_norm"]["depth"][0] == pytest.approx(lg.heads["depth"].target_norm[0].item())
        assert header["feature_channels"] == lg.feature_channels and header["seed"] == 0
        assert not math.isnan(header["history_summary"]["seg"]["1"]["best_val_loss"])

    def test_load_rejects_foreign_safetensors(self, tmp_path):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        with pytest.raises(ValueError, match="write it with save_label_generator"):
            load_label_generator(tmp_path / "other.safetensors")


class TestInferencePlanCache:
    def test_weight_updates_are_seen_by_the_next_predict(self):
        feats = _features([4, 8])
        lg = LabelGenerator([f.shape[1] for f in feats], {"seg": TaskSpec("segmentation", 3, hidden=SMALL)},
                            out_size=(8, 8), ensemble_size=2).eval()
        before = lg.predict(feats)["seg"]
        _randomise_batchnorm(lg, seed=3)  # in-place parameter and buffer updates
        after = lg.predict(feats)["seg"]
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, predict_naive(lg, feats)["seg"], atol=1e-5, rtol=1e-4)
        other = LabelGenerator(lg.feature_channels, lg.tasks, out_size=(8, 8), ensemble_size=2, seed=9).eval()
        lg.load_state_dict(other.state_dict())
        torch.testing.assert_close(lg.predict(feats)["seg"], other.predict(feats)["seg"], atol=0, rtol=0)
