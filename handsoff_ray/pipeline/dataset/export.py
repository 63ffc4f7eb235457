"""Turn a synthetic Parquet dataset into the formats downstream tools read, or into a filtered view.

    handsoff export runs/toy-demo/dataset --format png-folder --out exported/       # a labeled-set folder
    handsoff export s3://bucket/runs/faces/dataset --format coco --out coco/        # COCO json + PNGs
    handsoff filter runs/toy-demo/dataset --out runs/toy-demo/dataset-q80 --keep 0.8

All three read through `SyntheticDataset`, so the uncertainty policy is the same one training readers
apply ("reference", a kept quantile, or none). Rows are written in sample-id order, so an export of
the same dataset with the same policy is the same files.

- png-folder: exactly the labeled-set layout `handsoff data check` and the pipeline read (images/, masks/
  + classes.yaml, keypoints.json, depth/), plus uncertainty.csv. Synthetic pairs can thus be inverted,
  refitted or evaluated like real ones.
- coco: images/<id>.png and annotations.json with one annotation per (image, present class), the mask as
  compressed RLE (pycocotools), area and bbox; with keypoints, one extra annotation per image in the
  category "object" carrying the J keypoints (COCO visibility 0/1/2) and their names in the category.
- filter: the kept rows of every shard, one shard each in the same order (DatasetWriter: the names,
  hashes, manifest and _SUCCESS of a synthesized dataset), and a README card naming the policy; it is itself a dataset every reader opens (with `uncertainty_filter=None`, since it is filtered).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from handsoff_ray.pipeline.dataset.layout import DATASET_FILES
from handsoff_ray.pipeline.errors import UserError

__all__ = ["export_dataset", "filter_dataset", "FORMATS"]

FORMATS = ("png-folder", "coco")


def _open(uri: str, policy, task: str | None, endpoint_url: str | None, allow_incomplete: bool):
    from handsoff_ray.pipeline.dataset.reader import SyntheticDataset

    return SyntheticDataset(uri, uncertainty_filter=policy, filter_task=task, endpoint_url=endpoint_url,
                            allow_incomplete=allow_incomplete)


@contextlib.contextmanager
def _staged_folder(out: Path):
    """Yield a hidden folder beside out to write into; it becomes out only when the block completes.

    A failure midway removes it, so out never holds half an export and a retry starts clean.
    """
    if out.is_file():
        raise UserError(f"{out} is a file; pass a folder that does not exist yet")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; export into a new folder so nothing already there is overwritten")
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
    except OSError as err:
        raise UserError(f"cannot write under {out.parent}: {err.strerror}; pick another --out") from None
    try:
        yield staging
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sample_name(sample_id: int) -> str:
    return f"{int(sample_id):08d}"


def export_dataset(uri: str, out: str, fmt: str, *, uncertainty_filter="reference", filter_task: str | None = None,
                   limit: int | None = None, endpoint_url: str | None = None, allow_incomplete: bool = False) -> dict:
    """Write the (filtered) dataset at uri into the local folder out as `fmt`; returns a summary."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    ds = _open(uri, uncertainty_filter, filter_task, endpoint_url, allow_incomplete)  # checked before any write
    out_path = Path(out)
    tasks = [t for t in ("segmentation", "keypoints", "depth") if t in ds.meta["tasks"]]
    scores: list[list] = []

    def rows():  # records each row's uncertainty as the writer consumes it
        for r in itertools.islice(ds.numpy_rows(), limit):
            scores.append([_sample_name(r["sample_id"]), r["sample_id"], *[r.get(f"uncertainty_{t}") for t in tasks]])
            yield r

    writer = _write_png_folder if fmt == "png-folder" else _write_coco
    with _staged_folder(out_path) as staging:
        writer(staging, rows(), ds.meta)
        with open(staging / "uncertainty.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "sample_id", *[f"uncertainty_{t}" for t in tasks]])
            w.writerows(scores)
    return {"format": fmt, "out": str(out_path), "rows": len(scores), "source": uri,
            "uncertainty_filter": uncertainty_filter}


def _write_png_folder(out: Path, rows, meta: dict) -> None:
    from handsoff_ray.datasets.labeled_folder import LabeledSample, write_labeled_set
    from handsoff_ray.pipeline.dataset.schema import depth_scale

    def samples():
        for r in rows:
            depth = r.get("depth")
            if depth is not None:
                depth = np.where(depth > 0, depth, np.nan).astype(np.float32)  # 0 marks invalid in both formats
            kp = r.get("keypoints")
            yield LabeledSample(id=_sample_name(r["sample_id"]), image=r["image"], segmentation=r.get("segmentation"),
                                keypoints=kp, depth=depth)

    tasks = meta["tasks"]
    write_labeled_set(out, samples(), list(meta.get("classes") or []) if "segmentation" in tasks else None,
                      keypoint_names=list(meta.get("keypoint_names") or []) if "keypoints" in tasks else None,
                      depth_scale=depth_scale(meta))


def _write_coco(out: Path, rows, meta: dict) -> None:
    from PIL import Image
    from pycocotools import mask as mask_utils

    classes = list(meta.get("classes") or [])
    kp_names = list(meta.get("keypoint_names") or [])
    # Class id 0 is background in every HandsOff class list; COCO categories are the foreground parts.
    categories = [{"id": i, "name": name, "supercategory": "part"} for i, name in enumerate(classes) if i > 0]
    kp_cat = len(classes) if classes else 1
    if kp_names:
        categories.append({"id": kp_cat, "name": "object", "supercategory": "object", "keypoints": kp_names,
                           "skeleton": []})
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for r in rows:
        name = _sample_name(r["sample_id"])
        h, w = r["image"].shape[:2]
        Image.fromarray(r["image"]).save(out / "images" / f"{name}.png")
        image_id = int(r["sample_id"])
        images.append({"id": image_id, "file_name": f"images/{name}.png", "height": h, "width": w})
        seg = r.get("segmentation")
        if seg is not None:
            for c in np.unique(seg):
                if c == 0:
                    continue
                binary = np.asfortranarray((seg == c).astype(np.uint8))
                rle = mask_utils.encode(binary)
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c),
                                    "segmentation": rle, "area": float(mask_utils.area(rle)),
                                    "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
        kp = r.get("keypoints")
        if kp is not None and kp_names:
            vis = kp[:, 2] > 0
            xs, ys = kp[vis, 0], kp[vis, 1]
            bbox = ([float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]
                    if vis.any() else [0.0, 0.0, float(w), float(h)])
            flat = np.stack([kp[:, 0], kp[:, 1], np.where(vis, 2, 0)], axis=1).reshape(-1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": kp_cat,
                                "keypoints": [float(v) for v in flat], "num_keypoints": int(vis.sum()),
                                "bbox": bbox, "area": float(w * h), "iscrowd": 0})
    doc = {"info": {"description": "HandsOff synthetic dataset", "source": "handsoff_ray"},
           "images": images, "annotations": annotations, "categories": categories}
    (out / "annotations.json").write_text(json.dumps(doc))


def filter_dataset(uri: str, out: str, *, uncertainty_filter="reference", filter_task: str | None = None,
                   endpoint_url: str | None = None, allow_incomplete: bool = False) -> dict:
    """Write the rows the policy keeps as a new dataset at out (local or s3://), shard by shard.

    Locally the dataset is written into a hidden folder that is renamed to out when complete; on S3 its
    _SUCCESS, written last, is what readers wait for.
    """
    import pyarrow.fs as pafs

    from handsoff_ray.pipeline.storage import resolve_filesystem

    if uncertainty_filter is None:
        raise UserError("filter needs a policy: --keep QUANTILE or --policy reference")
    ds = _open(uri, uncertainty_filter, filter_task, endpoint_url, allow_incomplete)
    fs, root = resolve_filesystem(out, endpoint_url=endpoint_url)
    if fs.get_file_info(posixpath.join(root, DATASET_FILES.success)).type != pafs.FileType.NotFound:
        raise UserError(f"{out} already holds a finished dataset; pick a new --out")
    if not isinstance(fs, pafs.LocalFileSystem):
        return {"out": out, **_write_filtered(ds, fs, root, uri, uncertainty_filter)}
    with _staged_folder(Path(root)) as staging:
        summary = _write_filtered(ds, fs, str(staging), uri, uncertainty_filter)
    return {"out": out, **summary}


def _write_filtered(ds, fs, root: str, uri: str, uncertainty_filter) -> dict:
    """The kept rows of every shard of ds under root, each recorded like a synthesized shard, then _SUCCESS."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from handsoff_ray.pipeline.dataset.writer import ROW_GROUP, DatasetWriter
    from handsoff_ray.pipeline.storage import RunStore

    writer = DatasetWriter(RunStore(fs=fs, root=root, run_id=posixpath.basename(root)))  # atomic, S3 retries
    keep = pa.array(sorted(ds.keep), pa.int64())
    shards, kept_total, total = {}, 0, 0
    for k, path in enumerate(ds.files):
        table = ds.read_shard(path)
        kept = table.filter(pc.is_in(table.column("sample_id"), value_set=keep))
        with tempfile.TemporaryDirectory(prefix="handsoff-filter-") as tmp:
            pq.write_table(kept, f"{tmp}/part.parquet", row_group_size=ROW_GROUP)
            shards[str(k)] = {**writer.commit_shard(k, f"{tmp}/part.parquet"), "rows": kept.num_rows,
                              "source_rows": table.num_rows}
        kept_total, total = kept_total + kept.num_rows, total + table.num_rows
    policy = {"uncertainty_filter": uncertainty_filter, "task": ds.filter_task, "source": uri}
    manifest = {"filtered_from": policy, "shards": shards, "num_samples": kept_total, "meta": ds.meta}
    card = (f"# Filtered HandsOff dataset\n\nRows of `{uri}` kept by the uncertainty policy "
            f"`{uncertainty_filter}` on task `{policy['task']}`: {kept_total} of {total}.\n"
            "Open it with `SyntheticDataset(uri, uncertainty_filter=None)`; it is already filtered.\n")
    writer.finish(manifest, card)
    return {"rows": kept_total, "source_rows": total, **policy}
