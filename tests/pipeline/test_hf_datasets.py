"""Hugging Face `datasets` reads the synthetic Parquet shards with images decoded, from the schema metadata."""

from __future__ import annotations

import numpy as np
import pytest

from handsoff_ray.pipeline.dataset.schema import decode_row, schema_meta
from handsoff_ray.pipeline.context import open_run


def test_load_dataset_decodes_images_and_label_maps(finished, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    import pyarrow.parquet as pq
    from PIL import Image

    root = open_run(finished[0]).path("dataset/data")
    ds = datasets.load_dataset("parquet", data_files=f"{root}/*.parquet", split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 10
    assert isinstance(ds.features["image"], datasets.Image) and isinstance(ds.features["depth"], datasets.Image)
    row = ds.sort("sample_id")[0]
    assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB"
    assert row["segmentation"].mode == "L" and row["depth"].mode.startswith("I")
    table = pq.read_table(root)
    ours = decode_row(table.sort_by("sample_id").slice(0, 1).to_pylist()[0], schema_meta(table.schema))
    np.testing.assert_array_equal(np.asarray(row["image"]), ours["image"])
    np.testing.assert_array_equal(np.asarray(row["segmentation"]), ours["segmentation"])  # class ids as pixels
    assert len(row["keypoints"]) == 15 and isinstance(row["uncertainty_segmentation"], float)
