"""CelebAMask-HQ reader: part order, class merges, selection before decoding, errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from handsoff_ray.datasets.celebamask import CLASSES_19, PARTS, VARIANTS, combine_parts, merge, open_celebamask
from handsoff_ray.datasets.labeled_folder import LabeledSetError
from handsoff_ray.datasets.public import detect_format
from handsoff_ray.datasets.public import check_labeled_set
from tests.datasets.public_fixtures import CELEBA_PARTS, expected_celeba_19, write_celebamask


def test_parts_follow_the_datasets_own_order():
    assert PARTS == CELEBA_PARTS and len(CLASSES_19) == 19


def test_later_parts_overwrite_earlier_ones():
    hw = (4, 4)
    skin, hair, eye_g, l_eye = (np.zeros(hw, np.uint8) for _ in range(4))
    skin[:, :] = 255
    hair[0, :] = 255
    eye_g[2, :] = 255
    l_eye[2, :2] = 255
    out = combine_parts({"hair": hair, "skin": skin, "eye_g": eye_g, "l_eye": l_eye}, hw)  # dict order is irrelevant
    assert out[0].tolist() == [13] * 4  # hair (13) painted after skin (1)
    assert out[2].tolist() == [4, 4, 3, 3]  # l_eye (4) after eye_g (3)
    assert out[1].tolist() == [1] * 4


class TestMerges:
    fine = np.arange(19, dtype=np.uint8)  # one pixel of every 19-class id

    def _named(self, variant):
        names, _ = VARIANTS[variant]
        return [names[i] for i in merge(self.fine, variant)]

    def test_eight_class_evaluation_merge(self):
        got = dict(zip(CLASSES_19, self._named("8")))
        assert VARIANTS["8"][0] == ("background", "skin", "nose", "eye", "brow", "ear", "mouth", "hair")
        for part in ("hat", "ear_r", "neck_l", "neck", "cloth", "background"):
            assert got[part] == "background"
        assert [got[p] for p in ("eye_g", "l_eye", "r_eye")] == ["eye"] * 3
        assert [got[p] for p in ("l_brow", "r_brow")] == ["brow"] * 2
        assert [got[p] for p in ("l_ear", "r_ear")] == ["ear"] * 2
        assert [got[p] for p in ("mouth", "u_lip", "l_lip")] == ["mouth"] * 3
        assert (got["skin"], got["nose"], got["hair"]) == ("skin", "nose", "hair")

    @pytest.mark.parametrize("variant, hat, glasses, n", [
        ("9-hat", "hat", "eye", 9), ("9-glasses", "background", "glasses", 9), ("10", "hat", "glasses", 10)])
    def test_long_tail_variants_keep_the_rare_part(self, variant, hat, glasses, n):
        got = dict(zip(CLASSES_19, self._named(variant)))
        assert len(VARIANTS[variant][0]) == n
        assert got["hat"] == hat and got["eye_g"] == glasses
        assert got["l_eye"] == "eye" and got["cloth"] == "background"


class TestReader:
    def test_reads_the_public_layout(self, tmp_path):
        parts = write_celebamask(tmp_path, ids=[0, 1, 2, 3])
        ls = open_celebamask(tmp_path)
        assert ls.ids == ("0", "1", "2", "3") and ls.image_size == (32, 32) and ls.classes == CLASSES_19
        s = ls.load("2")
        assert s.image.shape == (32, 32, 3) and s.segmentation.shape == (32, 32)
        # The 16x16 map, duplicated 2x2 to the image's 32x32: exact, so alignment can take it back.
        want = np.kron(expected_celeba_19(parts[2]), np.ones((2, 2), np.uint8))
        np.testing.assert_array_equal(s.segmentation, want)

    def test_gray_masks_read_like_rgb_ones(self, tmp_path):
        write_celebamask(tmp_path / "rgb", ids=[0], rgb_masks=True)
        write_celebamask(tmp_path / "gray", ids=[0], rgb_masks=False)
        a, b = open_celebamask(tmp_path / "rgb").load(0), open_celebamask(tmp_path / "gray").load(0)
        np.testing.assert_array_equal(a.segmentation, b.segmentation)

    def test_merge_variant_is_applied_to_samples(self, tmp_path):
        parts = write_celebamask(tmp_path, ids=[0])
        s = open_celebamask(tmp_path, classes="9-hat").load(0)
        assert s.segmentation.max() == 8  # face 0 wears the hat
        hat = np.kron(parts[0]["hat"], np.ones((2, 2), bool))
        assert (s.segmentation[hat] == 8).all()

    def test_limit_takes_the_numerically_first_ids(self, tmp_path):
        write_celebamask(tmp_path, ids=[0, 2, 10, 1999, 2000])
        ls = open_celebamask(tmp_path, limit=3)
        assert ls.ids == ("0", "2", "10")
        assert open_celebamask(tmp_path, ids=["2000"]).load(0).segmentation.any()  # mask folder 1

    def test_only_selected_images_are_decoded(self, tmp_path):
        write_celebamask(tmp_path, ids=[0, 1])
        (tmp_path / "CelebA-HQ-img" / "1.jpg").write_bytes(b"not a jpeg")
        assert open_celebamask(tmp_path, ids=["0"]).ids == ("0",)
        with pytest.raises(LabeledSetError, match=r"CelebA-HQ-img/1\.jpg: cannot decode"):
            open_celebamask(tmp_path)

    def test_every_problem_names_its_file(self, tmp_path):
        write_celebamask(tmp_path, ids=[0, 1, 2])
        anno = tmp_path / "CelebAMask-HQ-mask-anno" / "0"
        (anno / "00000_nose.png").write_bytes(b"\x89PNG broken")
        for p in anno.glob("00001_*.png"):
            p.unlink()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(anno / "00002_hair.png")
        with pytest.raises(LabeledSetError) as err:
            open_celebamask(tmp_path)
        msg = str(err.value)
        assert "CelebAMask-HQ-mask-anno/0/00000_nose.png: cannot decode" in msg
        assert "CelebA-HQ-img/1.jpg: no part masks; expected e.g. CelebAMask-HQ-mask-anno/0/00001_skin.png" in msg
        assert "CelebAMask-HQ-mask-anno/0/00002_hair.png: size 8x8, expected 16x16" in msg

    def test_mask_in_the_wrong_folder(self, tmp_path):
        write_celebamask(tmp_path, ids=[0])
        (tmp_path / "CelebAMask-HQ-mask-anno" / "3").mkdir()
        (tmp_path / "CelebAMask-HQ-mask-anno" / "0" / "00000_nose.png").rename(
            tmp_path / "CelebAMask-HQ-mask-anno" / "3" / "00000_nose.png")
        with pytest.raises(LabeledSetError, match=r"mask-anno/3/00000_nose.png: in the wrong folder; expected "
                                                  r"CelebAMask-HQ-mask-anno/0/00000_nose.png"):
            open_celebamask(tmp_path)

    def test_unknown_class_map_and_missing_folders(self, tmp_path):
        write_celebamask(tmp_path, ids=[0])
        with pytest.raises(LabeledSetError, match="data.classes: '7' is not a CelebAMask-HQ class map"):
            open_celebamask(tmp_path, classes="7")
        with pytest.raises(LabeledSetError, match="CelebA-HQ-img/: missing"):
            open_celebamask(tmp_path / "CelebAMask-HQ-mask-anno")
        with pytest.raises(LabeledSetError, match="data.ids: 1 id"):
            open_celebamask(tmp_path, ids=["5"])


def test_data_check_detects_the_layout_and_summarises(tmp_path):
    write_celebamask(tmp_path, ids=[0, 1, 2, 3])
    assert detect_format(tmp_path) == "celebamask"
    out = check_labeled_set(str(tmp_path))
    assert out["format"] == "celebamask" and out["images"] == 4 and out["image_size"] == [32, 32]
    assert out["segmentation"]["images_with_class"]["hat"] == 2  # faces 0 and 2
    assert check_labeled_set(str(tmp_path), limit=1)["images"] == 1


def test_merge_table_maps_full_label_sets_and_refuses_others():
    from handsoff_ray.datasets.public import merge_table

    names, table = merge_table("celebamask", CLASSES_19, "8")
    assert len(names) == 8 and table[CLASSES_19.index("eye_g")] == names.index("eye")
    assert merge_table("celebamask", names, "8")[1].tolist() == list(range(8))  # already merged: identity
    with pytest.raises(ValueError, match="neither celebamask's full label set"):
        merge_table("celebamask", ("background", "face"), "8")
