"""`handsoff inspect`, `verify` and `preview`: look at a synthetic dataset without training on it.

    handsoff inspect handsoff-demo/runs/toy-demo/dataset
    handsoff verify handsoff-demo/runs/toy-demo/dataset      # every shard's sha256 against the manifest
    handsoff preview handsoff-demo/runs/toy-demo/dataset --out grid.png -n 16
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["inspect_dataset", "preview_dataset", "verify_dataset_uri"]


def verify_dataset_uri(uri: str, *, endpoint_url: str | None = None) -> dict:
    """`handsoff verify`: every shard of the dataset at uri against its manifest (see manifest.py)."""
    from handsoff_ray.pipeline.dataset.manifest import verify_dataset
    from handsoff_ray.pipeline.storage import resolve_filesystem, retry_remote

    fs, root = resolve_filesystem(uri, endpoint_url=endpoint_url)
    return retry_remote("verify", uri, lambda: verify_dataset(fs, root.rstrip("/"), uri))


def inspect_dataset(uri: str, *, endpoint_url: str | None = None, allow_incomplete: bool = False) -> dict:
    from handsoff_ray.pipeline.dataset.reader import SyntheticDataset

    ds = SyntheticDataset(uri, uncertainty_filter=None, endpoint_url=endpoint_url, allow_incomplete=allow_incomplete)
    rows, uncertainty = 0, {}
    columns = [f"uncertainty_{t}" for t in ds.meta["tasks"]]
    for f in ds.files:
        t = ds.read_shard(f, columns)
        rows += t.num_rows
        for c in columns:
            uncertainty.setdefault(c, []).append(t.column(c).to_numpy(zero_copy_only=False))
    schema = ds.open_shard(ds.files[0]).schema_arrow
    hist = {}
    for c, parts in uncertainty.items():
        v = np.concatenate(parts).astype(np.float64)
        q = np.quantile(v, [0, 0.1, 0.5, 0.9, 1.0])
        hist[c] = {"min": float(q[0]), "p10": float(q[1]), "median": float(q[2]), "p90": float(q[3]), "max": float(q[4])}
    return {
        "dataset": uri, "shards": len(ds.files), "rows": rows, "tasks": ds.meta["tasks"],
        "classes": ds.meta.get("classes"), "keypoints": ds.meta.get("keypoint_names"),
        "image_size": ds.meta.get("image_size"), "uncertainty": hist,
        "schema": {f.name: str(f.type) for f in schema}, **({"incomplete": ds.warnings} if ds.warnings else {}),
    }


def preview_dataset(uri: str, out: str, count: int, *, columns: int = 2, endpoint_url: str | None = None,
                    allow_incomplete: bool = False) -> dict:
    """The first `count` pairs of a dataset as a preview grid (preview.py) written to `out`."""
    from handsoff_ray.pipeline.dataset.reader import SyntheticDataset
    from handsoff_ray.pipeline.dataset.preview import preview_grid

    ds = SyntheticDataset(uri, uncertainty_filter=None, endpoint_url=endpoint_url, allow_incomplete=allow_incomplete)
    rows = []
    for row in ds:
        rows.append(row)
        if len(rows) == count:
            break
    images = np.stack([r["image"].numpy() for r in rows])
    seg = np.stack([r["segmentation"].numpy() for r in rows]) if "segmentation" in rows[0] else None
    kps = np.stack([r["keypoints"].numpy() for r in rows]) if "keypoints" in rows[0] else None
    task = next((t for t in ("segmentation", "keypoints", "depth") if f"uncertainty_{t}" in rows[0]), None)
    scores = np.array([float(r[f"uncertainty_{task}"]) for r in rows]) if task else None
    grid = preview_grid(images, segmentation=seg, keypoints=kps, uncertainty_scores=scores,
                        classes=ds.meta.get("classes"), columns=columns)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(grid).save(out)
    return {"out": out, "pairs": len(rows), "columns": min(columns, len(rows)), "uncertainty": task,
            "size": [grid.shape[1], grid.shape[0]]}
