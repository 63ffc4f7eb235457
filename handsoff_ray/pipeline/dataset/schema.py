"""The synthetic dataset's Parquet schema: one row per image + label pair.

| column                       | type            | meaning                                                  |
|------------------------------|-----------------|----------------------------------------------------------|
| sample_id                    | int64           | position in the run's sample sequence (0, 1, 2, ...)     |
| seed                         | int64           | the sample's own seed = hash(run seed, sample_id)       |
| image                        | image           | PNG, RGB, at the label resolution                        |
| segmentation                 | image (null)    | PNG, 8-bit class ids (classes in the schema metadata)    |
| keypoints                    | list<float32>   | J*3 values: x, y (pixels, centres at integers), v 0|2    |
| depth                        | image (null)    | PNG, 16-bit, depth = value / depth_scale; 0 = invalid    |
| uncertainty_<task>           | float32         | image score: mean of the top 10 % pixel disagreements    |
| latent                       | binary (null)   | float16 w (style_dim values), when synthesis.store_latent|
| spec_hash                    | string          | the synthesis stage hash of the spec that wrote the row  |

Schema metadata (`handsoff_ray` key, JSON): classes, keypoint names, depth_scale, image size. The
`image` columns are struct<bytes: PNG, path: null>, the storage of the Hugging Face `datasets` Image
feature, and the `huggingface` key holds the `datasets` features of every column, so
`datasets.load_dataset("parquet", data_files=".../data/*.parquet")` decodes `image`, `segmentation` and
`depth` as PIL images (RGB, L with class ids, I;16) instead of raw bytes. Filtering
by uncertainty is a policy readers apply to the `uncertainty_*` columns (see reader.py); rows are
never dropped at write time, so a different policy never needs a regeneration.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
from PIL import Image

__all__ = [
    "TASK_COLUMNS", "dataset_schema", "schema_meta", "pairs_to_table", "encode_png", "decode_png", "decode_row",
    "depth_scale",
]

TASK_COLUMNS = ("segmentation", "keypoints", "depth")
IMAGE_COLUMNS = ("image", "segmentation", "depth")  # PNG bytes, in datasets' Image storage layout
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_META_KEY = b"handsoff_ray"
_HF_KEY = b"huggingface"  # what datasets' Parquet builder reads its Features from


def _hf_feature(field: pa.Field) -> dict:
    """The `datasets` feature (as its JSON dict) of one column: Image for the PNG columns, else a Value."""
    if field.name in IMAGE_COLUMNS:
        return {"_type": "Image"}  # datasets uses it only when the column's type is its storage, IMAGE_TYPE
    if pa.types.is_list(field.type):
        return {"feature": _hf_feature(pa.field("item", field.type.value_type)), "_type": "Sequence"}
    name = str(field.type)  # arrow names; datasets spells float and double float32 and float64
    return {"dtype": {"float": "float32", "double": "float64"}.get(name, name), "_type": "Value"}


def encode_png(array: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> RGB PNG; uint8 [H, W] -> 8-bit PNG; uint16 [H, W] -> 16-bit PNG."""
    img = Image.fromarray(np.ascontiguousarray(array))  # uint16 [H, W] becomes mode "I;16"
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast: synthesis throughput matters more than bytes
    return buf.getvalue()


def decode_png(data: bytes | dict) -> np.ndarray:
    """PNG bytes, or an image cell {bytes, path} of this schema, -> uint8 / uint16 array."""
    img = Image.open(io.BytesIO(_png_bytes(data)))
    arr = np.array(img)  # writable: readers hand it to torch.from_numpy
    return arr.astype(np.uint16) if img.mode.startswith("I") else arr


def dataset_schema(tasks: list[str], meta: dict) -> pa.Schema:
    fields = [pa.field("sample_id", pa.int64()), pa.field("seed", pa.int64()), pa.field("image", IMAGE_TYPE)]
    fields += [
        pa.field("segmentation", IMAGE_TYPE, nullable=True),
        pa.field("keypoints", pa.list_(pa.float32()), nullable=True),
        pa.field("depth", IMAGE_TYPE, nullable=True),
    ]
    fields += [pa.field(f"uncertainty_{t}", pa.float32(), nullable=True) for t in TASK_COLUMNS]
    fields += [pa.field("latent", pa.binary(), nullable=True), pa.field("spec_hash", pa.string())]
    hf = {"info": {"features": {f.name: _hf_feature(f) for f in fields}}}
    return pa.schema(fields, metadata={_META_KEY: json.dumps({"tasks": tasks, **meta}).encode(),
                                       _HF_KEY: json.dumps(hf).encode()})


def schema_meta(schema: pa.Schema) -> dict:
    return json.loads(schema.metadata[_META_KEY])


def pairs_to_table(pairs, *, spec_hash: str, meta: dict) -> pa.Table:
    """SyntheticPairs (core.pairs) -> one Arrow table in the schema above."""
    n = len(pairs.sample_ids)
    tasks = list(pairs.labels)
    cols: dict[str, list] = {
        "sample_id": pairs.sample_ids.tolist(),
        "seed": pairs.seeds.tolist(),
        "image": [_png_cell(im) for im in pairs.images],
        "segmentation": [None] * n,
        "keypoints": [None] * n,
        "depth": [None] * n,
    }
    if "segmentation" in pairs.labels:
        cols["segmentation"] = [_png_cell(m) for m in pairs.labels["segmentation"]]
    if "keypoints" in pairs.labels:
        cols["keypoints"] = [k.reshape(-1).astype(np.float32).tolist() for k in pairs.labels["keypoints"]]
    if "depth" in pairs.labels:
        scale = depth_scale(meta)
        # 16-bit fixed point: 1/scale units up to 65535/scale; out-of-range depths saturate.
        cols["depth"] = [_png_cell(np.clip(np.round(d * scale), 0, 65535).astype(np.uint16))
                         for d in pairs.labels["depth"]]
    for t in TASK_COLUMNS:
        cols[f"uncertainty_{t}"] = pairs.uncertainty[t].tolist() if t in pairs.uncertainty else [None] * n
    cols["latent"] = ([w.astype(np.float16).tobytes() for w in pairs.latents] if pairs.latents is not None
                      else [None] * n)
    cols["spec_hash"] = [spec_hash] * n
    return pa.Table.from_pydict(cols, schema=dataset_schema(tasks, meta))


def _png_cell(array: np.ndarray) -> dict:
    return {"bytes": encode_png(array), "path": None}


def _png_bytes(cell) -> bytes:
    """An image cell's PNG: {bytes, path} (this schema), or plain bytes (datasets written before it)."""
    return cell["bytes"] if isinstance(cell, dict) else cell


def decode_row(row: dict, meta: dict) -> dict:
    """One Parquet row (as a dict) -> numpy arrays: image, segmentation, keypoints [J, 3], depth."""
    out = {"sample_id": row["sample_id"], "image": decode_png(row["image"])}
    if row.get("segmentation") is not None:
        out["segmentation"] = decode_png(row["segmentation"])
    if row.get("keypoints") is not None:
        out["keypoints"] = np.asarray(row["keypoints"], dtype=np.float32).reshape(-1, 3)
    if row.get("depth") is not None:
        out["depth"] = decode_png(row["depth"]).astype(np.float32) / depth_scale(meta)
    for t in TASK_COLUMNS:
        if row.get(f"uncertainty_{t}") is not None:
            out[f"uncertainty_{t}"] = row[f"uncertainty_{t}"]
    return out


def depth_scale(meta: dict) -> float:
    """The dataset's depth PNG scale; datasets written before it was recorded used the folder format's default."""
    if meta.get("depth_scale"):
        return float(meta["depth_scale"])
    # Imported here: the labeled-set package brings torch, which a reader of a current dataset never needs.
    from handsoff_ray.datasets.labeled_folder import DEFAULT_DEPTH_SCALE

    return DEFAULT_DEPTH_SCALE
