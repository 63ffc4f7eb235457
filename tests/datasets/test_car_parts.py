"""Car-Parts-Segmentation reader: COCO polygons and RLE, name-matched categories, the 10/11-class merges,
stretching to the 384x512 content frame, and errors that name annotations.json or the image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from handsoff_ray.datasets.car_parts import CLASSES_19, VARIANTS, open_car_parts, rasterize, rle_decode
from handsoff_ray.datasets.labeled_folder import LabeledSetError
from handsoff_ray.datasets.public import detect_format
from tests.datasets.public_fixtures import CAR_PARTS, write_car_parts


def _rle_encode_string(counts):
    """pycocotools' rleToString, written from its description (5-bit groups, delta to the count two back)."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


class TestMerges:
    def test_ten_classes_as_handsoff_merges_them(self):
        names, table = VARIANTS["10"]
        assert names == ("background", "bumper", "back window", "door", "light", "windshield", "hood", "mirror",
                         "trunk", "wheel")
        got = {fine: names[table[i]] for i, fine in enumerate(CLASSES_19)}
        assert got["back_bumper"] == got["front_bumper"] == "bumper"
        assert {got[p] for p in CAR_PARTS if p.endswith("door")} == {"door"}
        assert {got[p] for p in CAR_PARTS if p.endswith("light")} == {"light"}
        assert (got["back_glass"], got["front_glass"]) == ("back window", "windshield")
        assert got["tailgate"] == got["trunk"] == "trunk" and got["left_mirror"] == got["right_mirror"] == "mirror"

    def test_long_tail_variant_separates_the_back_bumper(self):
        names, table = VARIANTS["11-back-bumper"]
        assert len(names) == 11 and names[-1] == "back bumper" and names[1] == "front bumper"
        assert names[table[CLASSES_19.index("back_bumper")]] == "back bumper"
        assert names[table[CLASSES_19.index("front_bumper")]] == "front bumper"


class TestRasterize:
    def test_polygon_covers_pixel_centres_inside_it(self):
        ann = [{"category_id": 5, "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]}]
        out = rasterize(ann, {5: 2}, (4, 4), (4, 4))
        want = np.zeros((4, 4), np.uint8)
        want[1:3, 1:3] = 2  # centres (1.5, 1.5) .. (2.5, 2.5)
        np.testing.assert_array_equal(out, want)

    def test_later_annotations_overwrite_and_polygons_scale(self):
        anns = [{"category_id": 1, "segmentation": [[0, 0, 8, 0, 8, 8, 0, 8]]},
                {"category_id": 2, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}]
        out = rasterize(anns, {1: 7, 2: 9}, (8, 8), (4, 4))  # drawn at half size
        assert out[0, 0] == 9 and out[3, 3] == 7 and (out[:2, :2] == 9).all()

    def test_rle_uncompressed_and_compressed_agree(self):
        m = np.zeros((5, 6), np.uint8)
        m[1:4, 2:5] = 1
        m[0, 0] = 1
        flat = m.T.reshape(-1)  # COCO runs down columns
        counts, cur, run = [], 0, 0
        for v in flat:
            if v != cur:
                counts.append(run)
                cur, run = v, 0
            run += 1
        counts.append(run)
        np.testing.assert_array_equal(rle_decode({"counts": counts, "size": [5, 6]}, 5, 6), m)
        np.testing.assert_array_equal(rle_decode({"counts": _rle_encode_string(counts), "size": [5, 6]}, 5, 6), m)


class TestReader:
    def test_reads_a_split_stretched_to_the_content_frame(self, tmp_path):
        write_car_parts(tmp_path, "trainingset")
        write_car_parts(tmp_path, "testset", sizes=((20, 20),))
        assert detect_format(tmp_path) == "car_parts"
        ls = open_car_parts(tmp_path)
        assert ls.ids == ("car1", "car2", "car3", "car4") and ls.image_size == (384, 512)
        assert open_car_parts(tmp_path, split="testset").ids == ("car1",)
        small = open_car_parts(tmp_path, resize=(24, 32))
        s = small.load("car2")  # 48x64 source, bottom quarter back bumper, wheel over it
        assert s.image.shape == (24, 32, 3) and ls.classes[s.segmentation[-1, -1]] == "bumper"
        assert ls.classes[s.segmentation[-1, 10]] == "wheel"  # painted after the bumper
        assert ls.classes[s.segmentation[2, 2]] == "hood"

    def test_split_folder_can_be_given_directly(self, tmp_path):
        write_car_parts(tmp_path, "testset")
        assert len(open_car_parts(tmp_path / "testset", resize=(12, 16))) == 4

    def test_back_bumper_variant(self, tmp_path):
        write_car_parts(tmp_path)
        ls = open_car_parts(tmp_path, classes="11-back-bumper", resize=(24, 32))
        seg = ls.load("car1").segmentation
        assert ls.classes[seg[-1, -1]] == "back bumper" and ls.classes[seg[0, -1]] == "front bumper"

    def _broken(self, tmp_path, edit):
        doc = write_car_parts(tmp_path)
        edit(doc)
        (tmp_path / "trainingset" / "annotations.json").write_text(json.dumps(doc))
        with pytest.raises(LabeledSetError) as err:
            open_car_parts(tmp_path)
        return str(err.value)

    def test_unknown_category_names_the_json(self, tmp_path):
        msg = self._broken(tmp_path, lambda d: d["categories"].append({"id": 40, "name": "spoiler"}))
        assert "trainingset/annotations.json: category 'spoiler' is not one of the dataset's 18 parts" in msg

    def test_bad_annotations_are_listed_by_id(self, tmp_path):
        def edit(d):
            d["annotations"][0]["image_id"] = 999
            d["annotations"][1]["segmentation"] = [[1, 2, 3]]
        msg = self._broken(tmp_path, edit)
        assert "annotation 1: image_id 999 is not in images" in msg
        assert "annotation 2: each polygon must be [x1, y1, x2, y2, ...]" in msg

    def test_image_problems_name_the_image(self, tmp_path):
        write_car_parts(tmp_path)
        (tmp_path / "trainingset" / "JPEGImages" / "car2.jpg").unlink()
        (tmp_path / "trainingset" / "JPEGImages" / "car3.jpg").write_bytes(b"\xff\xd8 broken")
        with pytest.raises(LabeledSetError) as err:
            open_car_parts(tmp_path)
        assert "trainingset/JPEGImages/car2.jpg: missing" in str(err.value)
        assert "trainingset/JPEGImages/car3.jpg: cannot decode" in str(err.value)

    def test_size_disagreeing_with_the_json(self, tmp_path):
        msg = self._broken(tmp_path, lambda d: d["images"][0].update(height=99))
        assert "JPEGImages/car1.jpg: size 30x40, but trainingset/annotations.json says 99x40" in msg

    def test_not_json_and_missing_split(self, tmp_path):
        write_car_parts(tmp_path)
        with pytest.raises(LabeledSetError, match="testset/annotations.json: missing"):
            open_car_parts(tmp_path, split="testset")
        (tmp_path / "trainingset" / "annotations.json").write_text("{\n  'images': ")
        with pytest.raises(LabeledSetError, match=r"trainingset/annotations.json: not valid JSON \(line 2"):
            open_car_parts(tmp_path)


def test_rle_decode_matches_pycocotools():
    from pycocotools import mask as mask_api
    rng = np.random.default_rng(3)
    m = (rng.random((23, 17)) > 0.6).astype(np.uint8)
    rle = mask_api.encode(np.asfortranarray(m))
    counts = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
    np.testing.assert_array_equal(rle_decode({"counts": counts, "size": rle["size"]}, 23, 17), m)
