"""The procedural face world: determinism, exact labels, sizes, and its labeled-set export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import handsoff_ray.toy.world as world
from handsoff_ray.datasets.labeled_folder import open_labeled_set
from handsoff_ray.toy.params import sample_params
from handsoff_ray.datasets.toy import write_toy_labeled_set
from handsoff_ray.toy.world import CLASSES, KEYPOINT_NAMES, render_batch, render_face
from handsoff_ray.toy.world_cli import main, make_grid

EYE, NOSE, MOUTH, HAIR, BG = (CLASSES.index(c) for c in ("eye", "nose", "mouth", "hair", "background"))
KEYPOINT_PART = (EYE, EYE, NOSE, MOUTH, MOUTH)


@pytest.fixture(scope="module")
def samples64() -> list[world.ToySample]:
    return [render_face(s, 64) for s in range(50)]


@pytest.fixture(scope="module")
def samples128() -> list[world.ToySample]:
    return [render_face(s, 128) for s in range(60)]


class TestDeterminism:
    def test_same_seed_gives_identical_arrays(self):
        for seed in (0, 7, 123456789):
            a, b = render_face(seed, 64), render_face(seed, 64)
            for name in ("image", "segmentation", "keypoints", "depth"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name
            assert a.params == b.params

    def test_batch_equals_single_renders(self):
        seeds = [5, 2, 9]
        batch = render_batch(seeds, 32)
        for k, seed in enumerate(seeds):
            one = render_face(seed, 32)
            assert np.array_equal(batch.images[k], one.image)
            assert np.array_equal(batch.segmentation[k], one.segmentation)
            assert np.array_equal(batch.keypoints[k], one.keypoints)
            assert np.array_equal(batch.depth[k], one.depth)
        assert batch.seeds == tuple(seeds)

    def test_different_seeds_give_different_faces(self, samples64):
        images = {s.image.tobytes() for s in samples64}
        assert len(images) == len(samples64)

    def test_params_are_json_serialisable(self):
        p = sample_params(3)
        assert json.loads(json.dumps(p)) == p

    def test_labels_do_not_depend_on_resolution(self):
        # Output pixel j at 32 px and pixel 3j+1 at 96 px share their centre: same seed, same labels there.
        for seed in range(6):
            small, large = render_face(seed, 32), render_face(seed, 96)
            assert np.array_equal(small.segmentation, large.segmentation[1::3, 1::3])
            np.testing.assert_allclose(small.depth, large.depth[1::3, 1::3], atol=1e-5)
            # pixel coordinates with centres at integers: x96 = 3 * x32 + 1
            np.testing.assert_allclose(large.keypoints[:, :2], 3 * small.keypoints[:, :2] + 1, atol=1e-3)

    def test_bounding_boxes_never_clip_a_layer(self, monkeypatch, samples64):
        # Layers are painted inside bounding boxes for speed; painting on the full canvas must agree.
        full = lambda self, *a, **k: (slice(0, self.n), slice(0, self.n))  # noqa: E731
        monkeypatch.setattr(world._Canvas, "box", full)
        monkeypatch.setattr(world._Canvas, "rows_from", full)
        monkeypatch.setattr(world._Face, "feature_box", lambda self, cv, *a: (slice(0, cv.n), slice(0, cv.n)))
        for t in samples64[:40]:
            r = render_face(t.seed, 64)
            assert np.array_equal(r.segmentation, t.segmentation), t.seed
            assert np.array_equal(r.image, t.image), t.seed
            assert np.array_equal(r.depth, t.depth), t.seed


class TestLabels:
    def test_all_classes_appear_across_50_samples(self, samples64):
        seen = set()
        for t in samples64:
            seen |= set(np.unique(t.segmentation).tolist())
        assert seen == set(range(len(CLASSES)))

    def test_output_types_and_ranges(self, samples64):
        for t in samples64:
            assert t.image.dtype == np.uint8 and t.image.shape == (64, 64, 3)
            assert t.segmentation.dtype == np.uint8 and t.segmentation.max() < len(CLASSES)
            assert t.keypoints.dtype == np.float32 and t.keypoints.shape == (len(KEYPOINT_NAMES), 3)
            assert set(t.keypoints[:, 2].tolist()) <= {1.0, 2.0}
            assert t.depth.dtype == np.float32 and np.isfinite(t.depth).all()
            assert 1.0 <= t.depth.min() and t.depth.max() <= 2.0

    def test_keypoints_are_inside_the_image(self, samples64):
        for t in samples64:
            xy = t.keypoints[:, :2]
            assert (xy >= 0).all() and (xy <= 63).all(), t.seed

    def test_visible_keypoints_lie_on_their_part(self, samples128):
        n_visible = 0
        for t in samples128:
            for j, (x, y, v) in enumerate(t.keypoints):
                if v != 2:
                    continue
                n_visible += 1
                i, k = int(round(y)), int(round(x))
                if KEYPOINT_PART[j] == MOUTH:  # corners are the tips of the lips: mouth within one pixel
                    assert (t.segmentation[i - 1:i + 2, k - 1:k + 2] == MOUTH).any(), (t.seed, j)
                else:
                    assert t.segmentation[i, k] == KEYPOINT_PART[j], (t.seed, KEYPOINT_NAMES[j])
        assert n_visible > 0.9 * 5 * len(samples128)

    def test_occluded_keypoints_are_covered(self, samples128):
        # Visibility is decided on the supersampled labels, so read those (a 384 px render with one sample
        # per pixel is the 128 px render's supersample grid) exactly at each keypoint: an occluded keypoint
        # has something other than its own part there; for the eyes and the nose tip (probed at the point
        # itself) visible and "own part there" are the same thing.
        occluded = 0
        for t in samples128:
            _, fine, _, _ = world._render(t.params, 3 * 128, 1)
            for j, (x, y, v) in enumerate(t.keypoints):
                # output pixel centre x -> supersample index 3x + 1, the centre sample of that pixel
                seen = fine[int(round(3 * y + 1)), int(round(3 * x + 1))]
                if v == 1:
                    occluded += 1
                    assert seen != KEYPOINT_PART[j], (t.seed, KEYPOINT_NAMES[j], CLASSES[seen])
                elif KEYPOINT_PART[j] != MOUTH:  # a visible mouth corner is a lip tip: skin may be under it
                    assert seen == KEYPOINT_PART[j], (t.seed, KEYPOINT_NAMES[j], CLASSES[seen])
        assert occluded >= 5  # fringes and hands do hide keypoints

    def test_labels_are_the_supersampled_labels_at_pixel_centres(self, samples64):
        for t in samples64[:10]:
            _, fine, _, _ = world._render(t.params, 192, 1)  # one sample per supersample of the 64 px render
            assert np.array_equal(fine[1::3, 1::3], t.segmentation), t.seed

    def test_hair_colour_changes_exactly_the_hair_pixels(self, samples64):
        # Label/image consistency: repaint with another hair colour. Every pixel labelled hair changes,
        # and every pixel that changes has hair in its footprint (anti-aliased borders, strands thinner
        # than a pixel); nothing else changes.
        for t in samples64[:20]:
            if not (t.segmentation == HAIR).any():
                continue
            p = dict(t.params, hair_colour=[1.0 - c for c in t.params["hair_colour"]])
            image, seg, _, _ = world._render(p, 64, 3)
            assert np.array_equal(seg, t.segmentation)
            changed = (image != t.image).any(axis=-1)
            assert changed[t.segmentation == HAIR].all(), t.seed
            _, fine, _, _ = world._render(t.params, 192, 1)
            footprint = (fine == HAIR).reshape(64, 3, 64, 3).any(axis=(1, 3))  # [192, 192] -> [64, 64]
            assert not (changed & ~footprint).any(), t.seed

    def test_background_plane_depth_is_seen_only_on_background_pixels(self, samples64):
        for t in samples64[:20]:
            p = dict(t.params, bg_depth_m=t.params["bg_depth_m"] - 0.01)
            _, seg, _, depth = world._render(p, 64, 3)
            moved = depth != t.depth
            assert moved.any() and (seg[moved] == BG).all(), t.seed

    def test_face_is_nearer_than_the_background(self, samples64):
        skin = CLASSES.index("skin")
        for t in samples64:
            assert t.depth[t.segmentation == skin].max() < t.params["bg_depth_m"] - 0.1


class TestSizes:
    @pytest.mark.parametrize("size", [16, 32, 64, 128])
    def test_size_is_configurable(self, size):
        t = render_face(11, size)
        assert t.image.shape == (size, size, 3)
        assert t.segmentation.shape == t.depth.shape == (size, size)
        assert ((t.keypoints[:, :2] >= 0) & (t.keypoints[:, :2] <= size - 1)).all()

    @pytest.mark.parametrize("size", [8, 15, 257, 64.0])
    def test_rejects_sizes_out_of_range(self, size):
        with pytest.raises(ValueError, match=r"size must be an integer in \[16, 256\]"):
            render_face(0, size)

    def test_rejects_even_supersampling(self):
        with pytest.raises(ValueError, match="supersample must be an odd positive integer"):
            render_face(0, 64, supersample=2)

    def test_rejects_negative_seed(self):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            render_face(-1)


class TestExport:
    def test_toy_labeled_set_round_trips(self, tmp_path):
        seeds = [3, 17, 40]
        root = write_toy_labeled_set(tmp_path / "toy", seeds, 32)
        ls = open_labeled_set(root, require=("segmentation", "keypoints", "depth"))
        assert ls.ids == ("000003", "000017", "000040")
        assert ls.classes == CLASSES and ls.keypoint_names == KEYPOINT_NAMES
        for k, seed in enumerate(seeds):
            t, s = render_face(seed, 32), ls.load(k)
            assert np.array_equal(s.image, t.image)
            assert np.array_equal(s.segmentation, t.segmentation)
            assert np.array_equal(s.keypoints, t.keypoints)
            np.testing.assert_allclose(s.depth, t.depth, atol=0.5e-3 + 1e-6)  # stored in millimetres

    def test_grid_and_cli(self, tmp_path, capsys):
        out = tmp_path / "grid.png"
        main(["--grid", str(out), "--n", "2", "--size", "32", "--zoom", "2"])
        assert json.loads(capsys.readouterr().out)["grid"] == str(out)
        with Image.open(out) as im:
            assert im.size == (2 * (3 * 64 + 4 + 6), 64 + 6)  # two (image | labels | depth) tiles
        grid = make_grid([render_face(0, 32)], zoom=1)
        assert grid.shape == (32 + 6, 3 * 32 + 4 + 6, 3) and grid.dtype == np.uint8
