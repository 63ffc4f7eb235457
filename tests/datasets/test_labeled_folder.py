"""The labeled-set folder format: writer -> reader round trip, eager validation, atomic writes."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handsoff_ray.datasets.labeled_folder import (
    LabeledSample,
    LabeledSetError,
    open_labeled_set,
    summarize,
    write_labeled_set,
)
from handsoff_ray.datasets.labeled_folder.samples import _MAX_PROBLEM_LINES

CLASSES = ("background", "skin", "hair")
NAMES = ("left_eye", "right_eye")
H, W = 6, 8
ALL = ("segmentation", "keypoints", "depth")


def _sample(i: int, *, size: tuple[int, int] = (H, W)) -> LabeledSample:
    rng = np.random.default_rng(i)
    h, w = size
    depth = (rng.integers(1000, 3000, (h, w)) / 1000.0).astype(np.float32)  # millimetre steps: exact on disk
    depth[0, 0] = np.nan  # invalid
    return LabeledSample(
        id=f"img{i:03d}",
        image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        segmentation=rng.integers(0, len(CLASSES), (h, w), dtype=np.uint8),
        keypoints=np.array([[1.25, 2.5, 2], [w - 1.0, 0.0, 1]], np.float32),
        depth=depth,
    )


def _write(root: Path, n: int = 3, **kw) -> Path:
    return write_labeled_set(root, [_sample(i) for i in range(n)], CLASSES, keypoint_names=NAMES, **kw)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return _write(tmp_path / "set")


class TestRoundTrip:
    def test_write_then_open_round_trips_exactly(self, tmp_path):
        samples = [_sample(i) for i in range(3)]
        root = write_labeled_set(tmp_path / "s", samples, CLASSES, keypoint_names=NAMES)
        ls = open_labeled_set(root, require=ALL)
        assert ls.ids == ("img000", "img001", "img002")
        assert ls.image_size == (H, W) and ls.classes == CLASSES and ls.keypoint_names == NAMES
        assert ls.depth_scale == 1000.0 and ls.tasks == ALL
        assert ls.has_masks and ls.has_keypoints and ls.has_depth
        for want in samples:
            got = ls.load(want.id)
            assert got.id == want.id
            assert np.array_equal(got.image, want.image)
            assert np.array_equal(got.segmentation, want.segmentation)
            assert np.array_equal(got.keypoints, want.keypoints) and got.keypoints.dtype == np.float32
            assert got.depth.dtype == np.float32
            assert np.array_equal(got.depth, want.depth, equal_nan=True)  # NaN = invalid survives

    def test_invalid_depths_are_stored_as_zero_and_read_as_nan(self, tmp_path):
        s = _sample(0)
        d = s.depth.copy()
        d[1, :3] = [0.0, -1.0, np.inf]
        root = write_labeled_set(tmp_path / "s", [LabeledSample(s.id, s.image, depth=d)], None)
        with Image.open(root / "depth" / f"{s.id}.png") as im:
            stored = np.asarray(im)
        assert stored.dtype == np.uint16 and (stored[1, :3] == 0).all() and stored[0, 0] == 0
        got = open_labeled_set(root, require=("depth",)).load(0).depth
        assert np.isnan(got[1, :3]).all() and np.isnan(got[0, 0])

    def test_parts_are_optional(self, tmp_path):
        s = _sample(0)
        root = write_labeled_set(tmp_path / "s", [LabeledSample(s.id, s.image)], None)
        assert sorted(p.name for p in root.iterdir()) == ["images"]
        ls = open_labeled_set(root, require=())
        assert ls.tasks == () and not (ls.has_masks or ls.has_keypoints or ls.has_depth)
        got = ls.load(0)
        assert got.segmentation is None and got.keypoints is None and got.depth is None

    def test_load_all_stacks_and_subset_reorders(self, good):
        ls = open_labeled_set(good, require=ALL)
        batch = ls.load_all()
        assert batch.ids == ls.ids
        assert batch.images.shape == (3, H, W, 3) and batch.segmentation.shape == (3, H, W)
        assert batch.keypoints.shape == (3, 2, 3) and batch.depth.shape == (3, H, W)
        sub = ls.subset(["img002", "img000"])
        assert sub.ids == ("img002", "img000") and len(sub) == 2
        assert np.array_equal(sub.load_all().images, batch.images[[2, 0]])
        assert ls.load_all([1]).ids == ("img001",)

    def test_subset_rejects_unknown_ids(self, good):
        ls = open_labeled_set(good)
        with pytest.raises(LabeledSetError, match=r"subset: 1 id\(s\) not in the set: 'nope'"):
            ls.subset(["img000", "nope"])
        with pytest.raises(KeyError, match="'nope' is not an image id"):
            ls.load("nope")

    def test_summarize_counts_classes_visibility_and_depth(self, good):
        ls = open_labeled_set(good, require=ALL)
        out = summarize(ls)
        assert out["images"] == 3 and out["image_size"] == [H, W] and out["tasks"] == list(ALL)
        assert math.isclose(sum(out["segmentation"]["pixel_fraction"].values()), 1.0, abs_tol=1e-5)
        seg = ls.load_all().segmentation
        assert out["segmentation"]["images_with_class"]["hair"] == int(sum((s == 2).any() for s in seg))
        assert out["keypoints"]["visibility"]["left_eye"] == {"unlabeled": 0, "occluded": 0, "visible": 3}
        assert out["keypoints"]["visibility"]["right_eye"] == {"unlabeled": 0, "occluded": 3, "visible": 0}
        assert out["depth"]["valid_fraction"] == round(1 - 1 / (H * W), 6)
        assert 1.0 <= out["depth"]["min"] <= out["depth"]["max"] < 3.0
        json.dumps(out)  # plain Python types, printable by the CLI

    def test_reader_writes_nothing(self, good):
        before = _snapshot(good)
        ls = open_labeled_set(good, require=ALL)
        ls.load_all()
        summarize(ls)
        assert _snapshot(good) == before
        # nor when the set is broken
        (good / "masks" / "img001.png").unlink()
        before = _snapshot(good)
        with pytest.raises(LabeledSetError):
            open_labeled_set(good)
        assert _snapshot(good) == before


class TestWriter:
    def test_refuses_a_folder_that_already_holds_images(self, good):
        with pytest.raises(LabeledSetError, match="images/: already holds images; write into an empty folder"):
            _write(good)

    @pytest.mark.parametrize(
        ("bad", "message"),
        [
            (lambda s: LabeledSample("../evil", s.image), r"id '\.\./evil' is not a safe file name"),
            (lambda s: LabeledSample(s.id, s.image[:, :, 0]), r"image must be uint8 \[H, W, 3\]"),
            (lambda s: LabeledSample(s.id, s.image, segmentation=np.full((H, W), 3, np.uint8)),
             r"segmentation ids span 3\.\.3, outside 0\.\.2 \(3 classes\)"),
            (lambda s: LabeledSample(s.id, s.image, keypoints=np.zeros((3, 3), np.float32)),
             r"keypoints must be \[2, 3\]"),
            (lambda s: LabeledSample(s.id, s.image, keypoints=np.array([[0, 0, 5], [0, 0, 2]], np.float32)),
             "keypoints need finite x, y and visibility 0, 1 or 2"),
            (lambda s: LabeledSample(s.id, s.image, depth=np.full((H, W), 70.0, np.float32)),
             r"depth 70 exceeds 65\.535 \(65535 / scale\); pass a smaller depth_scale"),
            (lambda s: LabeledSample(s.id, s.image, depth=np.full((H, W), 1e-4, np.float32)),
             "rounds to 0 \\(= invalid\\) at scale 1000; pass a larger depth_scale"),
        ],
    )
    def test_rejects_a_bad_sample_naming_it(self, tmp_path, bad, message):
        with pytest.raises(LabeledSetError, match=message):
            write_labeled_set(tmp_path / "s", [bad(_sample(0))], CLASSES, keypoint_names=NAMES)

    def test_rejects_inconsistent_samples(self, tmp_path):
        a, b = _sample(0), _sample(1, size=(H + 1, W))
        with pytest.raises(LabeledSetError, match=r"sample 'img001': image is 7x8, but the first sample's is 6x8"):
            write_labeled_set(tmp_path / "s1", [a, b], CLASSES, keypoint_names=NAMES)
        with pytest.raises(LabeledSetError, match="sample 'img001': depth is missing, unlike the first sample"):
            b = _sample(1)
            write_labeled_set(tmp_path / "s2", [a, LabeledSample(b.id, b.image, b.segmentation, b.keypoints)],
                              CLASSES, keypoint_names=NAMES)
        with pytest.raises(LabeledSetError, match="id 'img000' appears twice"):
            write_labeled_set(tmp_path / "s3", [a, a], CLASSES, keypoint_names=NAMES)
        with pytest.raises(LabeledSetError, match="samples have segmentation but classes is None"):
            write_labeled_set(tmp_path / "s4", [a], None, keypoint_names=NAMES)
        with pytest.raises(ValueError, match="samples is empty"):
            write_labeled_set(tmp_path / "s5", [], CLASSES)

    def test_interrupted_png_write_leaves_no_partial_file(self, tmp_path, monkeypatch):
        real_save = Image.Image.save

        def save_half_then_die(self, fp, *args, **kwargs):
            real_save(self, fp, *args, **kwargs)
            fp.truncate(fp.tell() // 2)
            raise KeyboardInterrupt  # e.g. the job was cancelled mid-write

        monkeypatch.setattr(Image.Image, "save", save_half_then_die)
        with pytest.raises(KeyboardInterrupt):
            _write(tmp_path / "s")
        assert list((tmp_path / "s" / "images").iterdir()) == []  # neither a half PNG nor a temporary

    def test_interrupted_set_is_reported_by_the_reader(self, tmp_path):
        def samples():
            yield _sample(0)
            yield _sample(1)
            raise RuntimeError("renderer crashed")

        with pytest.raises(RuntimeError):
            write_labeled_set(tmp_path / "s", samples(), CLASSES, keypoint_names=NAMES)
        with pytest.raises(LabeledSetError, match="masks/classes.yaml: missing") as e:
            open_labeled_set(tmp_path / "s", require=ALL)
        assert "depth/depth.yaml: missing" in str(e.value) and "keypoints.json: missing" in str(e.value)


class TestValidation:
    """Each broken set raises one LabeledSetError whose lines name the files at fault."""

    def _problems(self, root: Path, **kw) -> str:
        with pytest.raises(LabeledSetError) as e:
            open_labeled_set(root, **kw)
        return str(e.value)

    def test_missing_mask(self, good):
        (good / "masks" / "img001.png").unlink()
        with pytest.raises(LabeledSetError, match=r"^\S+: images/img001\.png has no mask: "
                                                  r"expected masks/img001\.png$"):  # one problem, one line
            open_labeled_set(good)

    def test_mask_without_image(self, good):
        (good / "images" / "img002.png").unlink()
        with pytest.raises(LabeledSetError, match=r"masks/img002\.png has no image: expected images/img002\.png"):
            open_labeled_set(good, require=())

    def test_corrupt_png(self, good):
        (good / "images" / "img000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        with pytest.raises(LabeledSetError, match=r"images/img000\.png: cannot decode \(.*\); re-export the file"):
            open_labeled_set(good)

    def test_corrupt_depth_png(self, good):
        data = (good / "depth" / "img001.png").read_bytes()
        (good / "depth" / "img001.png").write_bytes(data[: len(data) // 2])
        with pytest.raises(LabeledSetError, match=r"depth/img001\.png: cannot decode"):
            open_labeled_set(good)

    def test_mask_of_the_wrong_size(self, good):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(good / "masks" / "img001.png")
        with pytest.raises(LabeledSetError, match=r"masks/img001\.png: size 4x4 \(HxW\), expected 6x8 \(HxW\) "
                                                  r"like images/img001\.png"):
            open_labeled_set(good)

    def test_image_of_a_different_size(self, good):
        Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(good / "images" / "img002.png")
        text = self._problems(good, require=())
        assert re.search(r"images/img002\.png: size 5x5 \(HxW\), expected 6x8 like the other images", text)
        assert "masks/img002.png: size 6x8 (HxW), expected 5x5 (HxW) like images/img002.png" in text

    def test_unknown_class_ids(self, good):
        m = np.zeros((H, W), np.uint8)
        m[0, :3] = [5, 9, 3]
        Image.fromarray(m).save(good / "masks" / "img000.png")
        with pytest.raises(LabeledSetError, match=r"masks/img000\.png: class ids \[3, 5, 9\] not in "
                                                  r"masks/classes\.yaml \(3 classes, ids 0\.\.2\)"):
            open_labeled_set(good)

    def test_rgb_mask(self, good):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(good / "masks" / "img000.png")
        with pytest.raises(LabeledSetError, match=r"masks/img000\.png: mode RGB, expected single-channel class ids"):
            open_labeled_set(good)

    def test_8bit_depth(self, good):
        Image.fromarray(np.ones((H, W), np.uint8)).save(good / "depth" / "img000.png")
        with pytest.raises(LabeledSetError, match=r"depth/img000\.png: mode L, expected 16-bit grayscale"):
            open_labeled_set(good)

    def test_bad_classes_yaml(self, good):
        (good / "masks" / "classes.yaml").write_text("classes: [a, a]\n")
        with pytest.raises(LabeledSetError, match="masks/classes.yaml: class names repeat: a"):
            open_labeled_set(good)
        (good / "masks" / "classes.yaml").write_text("names: [a]\n")
        with pytest.raises(LabeledSetError, match=r"masks/classes\.yaml: expected `classes: \[name, \.\.\.\]`"):
            open_labeled_set(good)
        (good / "masks" / "classes.yaml").write_text("classes: [a\n")
        with pytest.raises(LabeledSetError, match=r"masks/classes\.yaml: not readable YAML"):
            open_labeled_set(good)

    def test_bad_depth_scale(self, good):
        (good / "depth" / "depth.yaml").write_text("scale: -3\n")
        with pytest.raises(LabeledSetError, match="depth/depth.yaml: scale must be a positive number, got -3"):
            open_labeled_set(good)

    @pytest.mark.parametrize(
        ("edit", "message"),
        [
            (lambda d: d["points"].update(img001=[[0, 0, 2]]),
             r"keypoints\.json: 'img001' has 1 points, expected 2 \(one per name\)"),
            (lambda d: d["points"].update(ghost=[[0, 0, 2], [0, 0, 2]]),
             r"keypoints\.json: points for 'ghost' but images/ghost\.png does not exist"),
            (lambda d: d["points"].pop("img002"),
             r"keypoints\.json: no points for images/img002\.png \(add them, with visibility 0 if unlabeled\)"),
            (lambda d: d["points"].update(img000=[[0, 0, 3], [0, 0, 2]]),
             r"keypoints\.json: 'img000' point 0 has visibility 3; use 0 \(unlabeled\), 1 \(occluded\) or 2"),
            (lambda d: d["points"].update(img000=[[0, "x", 2], [0, 0, 2]]),
             r"keypoints\.json: 'img000' point 0 is not \[x, y, v\] with finite numbers"),
            (lambda d: d.pop("names"), r'keypoints\.json: expected "names": \[name, \.\.\.\]'),
            (lambda d: d["points"].update(img001=[[500, -40, 2], [0, 0, 2]]),
             r"keypoints\.json: 'img001' point 0 \(left_eye\) at \(500, -40\) is marked visible but lies outside "
             r"images/img001\.png \(8x6\); fix it, or set v to 0"),
            (lambda d: d["points"].update(img002=[[0, 0, 2], [7.6, 5.5, 2]]),
             r"keypoints\.json: 'img002' point 1 \(right_eye\) at \(7\.6, 5\.5\) is marked visible but lies outside"),
        ],
    )
    def test_bad_keypoints(self, good, edit, message):
        doc = json.loads((good / "keypoints.json").read_text())
        edit(doc)
        (good / "keypoints.json").write_text(json.dumps(doc))
        with pytest.raises(LabeledSetError, match=message):
            open_labeled_set(good)

    def test_points_outside_the_image_are_fine_when_not_visible(self, good):
        doc = json.loads((good / "keypoints.json").read_text())
        doc["points"]["img001"] = [[500, -40, 0], [-0.5, 5.5, 2]]  # unlabeled far out; visible on the edge
        (good / "keypoints.json").write_text(json.dumps(doc))
        assert len(open_labeled_set(good)) == 3

    def test_keypoints_that_are_not_json(self, good):
        (good / "keypoints.json").write_text('{"names": ["a"],\n "points": {')
        with pytest.raises(LabeledSetError, match=r"keypoints\.json: not valid JSON \(line 2 column"):
            open_labeled_set(good)

    def test_required_part_missing(self, tmp_path):
        s = _sample(0)
        root = write_labeled_set(tmp_path / "s", [LabeledSample(s.id, s.image)], None)
        with pytest.raises(LabeledSetError, match=r"masks/: missing, but segmentation labels are required"):
            open_labeled_set(root)
        with pytest.raises(LabeledSetError, match=r"keypoints\.json: missing, but keypoints labels are required"):
            open_labeled_set(root, require=("keypoints",))
        with pytest.raises(ValueError, match=r"require: unknown part\(s\) \['masks'\]"):
            open_labeled_set(root, require=("masks",))

    def test_not_a_labeled_set(self, tmp_path):
        with pytest.raises(LabeledSetError, match="is not a folder"):
            open_labeled_set(tmp_path / "nowhere")
        with pytest.raises(LabeledSetError, match="images/: missing; put the RGB images at images/<id>.png"):
            open_labeled_set(tmp_path)
        (tmp_path / "images").mkdir()
        (tmp_path / "images" / "photo.jpg").write_bytes(b"")
        text = self._problems(tmp_path, require=())
        assert "images/photo.jpg: not a .png file" in text and "images/: holds no .png files" in text

    def test_all_problems_are_reported_together(self, good):
        (good / "masks" / "img001.png").unlink()
        (good / "images" / "img000.png").write_bytes(b"garbage")
        (good / "depth" / "depth.yaml").unlink()
        text = self._problems(good)
        lines = text.splitlines()
        assert lines[0] == f"3 problems in {good}:"
        assert any("images/img000.png: cannot decode" in ln for ln in lines)
        assert any("images/img001.png has no mask" in ln for ln in lines)
        assert any("depth/depth.yaml: missing" in ln for ln in lines)

    def test_error_survives_pickling(self, good):
        (good / "masks" / "img001.png").unlink()
        with pytest.raises(LabeledSetError) as e:
            open_labeled_set(good)
        again = pickle.loads(pickle.dumps(e.value))
        assert str(again) == str(e.value) and again.problems == e.value.problems and again.root == str(good)

    def test_long_problem_lists_are_capped(self, tmp_path):
        root = _write(tmp_path / "s", n=25)
        for p in (root / "masks").glob("*.png"):
            p.unlink()
        lines = self._problems(root).splitlines()
        assert lines[0] == f"25 problems in {root}:"
        assert len(lines) == 1 + _MAX_PROBLEM_LINES + 1 and lines[-1] == "  ... and 5 more"
