"""An unlabeled pool of images for `handsoff suggest`: list it once, load any slice of it, never a label.

    pool = open_pool(spec.suggest.pool, storage=spec.storage)   # UserError (one line) on a bad path
    pool.items[:3]            # [PoolItem(id, ref), ...] in a fixed order (sorted paths / files, then rows)
    images = load_images(pool.format, pool.root, items, storage=spec.storage, size=64)   # uint8 [N, 64, 64, 3]

Sources, local or s3:// (pyarrow.fs):
- a folder of images (.png, .jpg, .jpeg, .webp, .bmp), searched recursively; when it holds `images/`
  (the labeled-set layout) only that folder is read, so `masks/`, `depth/` and `keypoints.json` are never
  opened. Image id = path under the folder without its extension.
- Parquet: one file or a folder of `*.parquet` (searched recursively); only `image_column` (binary, or
  struct<bytes, path>) and `id_column` are read, never a label column. Id = the id column, or
  <file stem>:<row>.
- toy: faces rendered from seed ranges (ids as the toy labeled set's, so labeled faces are recognised).

`listing_digest` names the pool's content as listed (paths, sizes, modification times; seeds for toy):
pool features are stored under it, so a changed pool is described again and an unchanged one is not.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from handsoff_ray.pipeline.errors import UserError

__all__ = ["IMAGE_SUFFIXES", "Pool", "PoolItem", "open_pool", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class PoolItem:
    id: str
    ref: str  # folder: path under the root; parquet: "<file under the root>#<row>"; toy: the seed


@dataclass(frozen=True)
class Pool:
    format: str  # folder, parquet or toy
    root: str  # the path or URI the user named (toy: "toy:<seeds>")
    items: tuple[PoolItem, ...]
    listing_digest: str
    image_column: str = "image"


def _fs(uri: str, storage, field: str = "suggest.pool"):
    from handsoff_ray.pipeline.storage import StorageError, resolve_filesystem

    s3 = storage.s3 if storage is not None else None
    try:
        return resolve_filesystem(uri, endpoint_url=getattr(s3, "endpoint_url", None), region=getattr(s3, "region", None))
    except StorageError as err:
        raise UserError(f"{field}.path: {err}") from None


def open_pool(spec, *, storage=None, field: str = "suggest.pool") -> Pool:
    """List the pool `spec` (config.PoolSpec) names; UserError with one line when it cannot be used.

    `field` is the spec field named in errors (gan.data for `handsoff train-gan`)."""
    if spec.format == "toy":
        return _toy_pool(spec.seeds, field)
    if not spec.path:
        raise UserError("no pool to choose from: pass --pool PATH (a folder, Parquet or s3:// URI) or "
                        "--pool-seeds A-B for toy faces, or set suggest.pool in the spec")
    fs, base = _fs(spec.path, storage, field)
    try:
        info = fs.get_file_info(base)
    except OSError as err:
        raise UserError(f"pool {spec.path}: cannot be read ({str(err).splitlines()[0]})") from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"pool {spec.path}: no such file or folder")
    fmt = spec.format
    if fmt == "auto":
        fmt = "parquet" if (info.type == pafs.FileType.File and base.endswith(".parquet")) or \
            (info.type == pafs.FileType.Directory and _files(fs, base, (".parquet",))) else "folder"
    if fmt == "parquet":
        return _parquet_pool(fs, base, spec, field)
    if info.type != pafs.FileType.Directory:
        raise UserError(f"pool {spec.path}: a folder of images is expected (or a .parquet file)")
    images_dir = posixpath.join(base, "images")
    if fs.get_file_info(images_dir).type == pafs.FileType.Directory:
        base = images_dir  # the labeled-set layout: its labels live beside images/, never read
    infos = _files(fs, base, IMAGE_SUFFIXES)
    if not infos:
        raise UserError(f"pool {spec.path}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    items, h = [], hashlib.sha256(b"folder\0")
    for i in infos:
        rel = posixpath.relpath(i.path, base)
        items.append(PoolItem(id=posixpath.splitext(rel)[0], ref=rel))
        h.update(f"{rel}\0{i.size}\0{i.mtime_ns}\n".encode())
    return Pool("folder", _uri(spec.path, base), tuple(items), h.hexdigest())


def _files(fs, base: str, suffixes: tuple[str, ...]) -> list:
    """Files under base with one of the suffixes (case-insensitive), sorted by path; dot-files skipped."""
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return sorted((i for i in infos if i.type == pafs.FileType.File and i.path.lower().endswith(suffixes)
                   and not posixpath.basename(i.path).startswith(".")), key=lambda i: i.path)


def _parquet_pool(fs, base: str, spec, field: str) -> Pool:
    import pyarrow.parquet as pq

    info = fs.get_file_info(base)
    infos = [info] if info.type == pafs.FileType.File else _files(fs, base, (".parquet",))
    if not infos:
        raise UserError(f"pool {spec.path}: no .parquet files in it")
    root = posixpath.dirname(base) if info.type == pafs.FileType.File else base
    items, h = [], hashlib.sha256(f"parquet\0{spec.image_column}\0{spec.id_column}\0".encode())
    for i in infos:
        rel = posixpath.relpath(i.path, root)
        try:
            f = pq.ParquetFile(i.path, filesystem=fs)
        except Exception as err:  # noqa: BLE001 - any unreadable footer is the user's file to fix
            raise UserError(f"pool {spec.path}: {rel} is not a readable Parquet file ({str(err).splitlines()[0]})") from None
        names = f.schema_arrow.names
        for col in (spec.image_column, spec.id_column):
            if col is not None and col not in names:
                raise UserError(f"pool {spec.path}: {rel} has no column {col!r} (columns: {', '.join(names)}); "
                                f"set {field}.image_column / id_column")
        n = f.metadata.num_rows
        ids = f.read(columns=[spec.id_column]).column(0).to_pylist() if spec.id_column else \
            [f"{posixpath.splitext(rel)[0]}:{r}" for r in range(n)]
        items += [PoolItem(id=str(x), ref=f"{rel}#{r}") for r, x in enumerate(ids)]
        h.update(f"{rel}\0{i.size}\0{i.mtime_ns}\n".encode())
    if not items:
        raise UserError(f"pool {spec.path}: its Parquet files hold no rows")
    if len({it.id for it in items}) != len(items):
        raise UserError(f"pool {spec.path}: ids in {spec.id_column!r} repeat; name a unique id column or none")
    return Pool("parquet", _uri(spec.path, root), tuple(items), h.hexdigest(), spec.image_column)


def _uri(named: str, base: str) -> str:
    """The pool root as a URI the workers can open: s3:// paths keep their scheme, local ones are absolute."""
    return f"s3://{base}" if named.lower().startswith("s3://") else base


def _toy_pool(seeds: str, field: str = "suggest.pool") -> Pool:
    from handsoff_ray.config import parse_seeds
    from handsoff_ray.toy.world import toy_ids

    seed_list = sorted(set(parse_seeds(seeds, what=f"{field}.seeds")))
    items = tuple(PoolItem(id=i, ref=str(s)) for i, s in zip(toy_ids(seed_list), seed_list))
    return Pool("toy", f"toy:{seeds}", items, hashlib.sha256(json.dumps(["toy", seed_list]).encode()).hexdigest())


def load_images(fmt: str, root: str, items: list[PoolItem], *, storage=None, size: int = 64,
                image_column: str = "image") -> list[np.ndarray]:
    """The images of `items` as uint8 [h, w, 3] arrays (toy faces rendered at size x size)."""
    if fmt == "toy":
        from handsoff_ray.toy.world import render_face

        return [render_face(int(it.ref), size).image for it in items]
    fs, base = _fs(root, storage)
    if fmt == "folder":
        return [_decode(_read(fs, posixpath.join(base, it.ref)), f"{root}/{it.ref}") for it in items]
    import pyarrow.parquet as pq

    out: list[np.ndarray | None] = [None] * len(items)
    by_file: dict[str, list[tuple[int, int]]] = {}
    for k, it in enumerate(items):
        rel, _, row = it.ref.rpartition("#")
        by_file.setdefault(rel, []).append((k, int(row)))
    for rel, rows in by_file.items():
        col = pq.read_table(posixpath.join(base, rel), columns=[image_column], filesystem=fs).column(0)
        for k, r in rows:
            v = col[r].as_py()
            out[k] = _decode(v["bytes"] if isinstance(v, dict) else v, f"{root}/{rel} row {r}")
    return out  # type: ignore[return-value]


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _decode(data: bytes | None, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UserError(f"pool image {where} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"pool image {where} cannot be decoded ({err})") from None
