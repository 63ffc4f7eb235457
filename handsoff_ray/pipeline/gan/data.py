"""The training images of `handsoff train-gan`: a finite set cycled in seeded epochs, or the toy stream.

    data = TrainImages.open(spec.gan, storage=spec.storage)   # lists the set, holds some out; UserError if unusable
    pos = data.positions(images_seen, batch)                   # which training images the next global batch shows
    real = data.load(pos[rank::world])                          # [n, 3, R, R] in [-1, 1]

Any source `handsoff suggest` reads (a folder of images, a labeled-set folder's images/, Parquet, s3://,
toy seed ranges) is listed once (`pool.open_pool`). A seeded draw holds `gan.data.holdout` images out for the
proxy KID; the rest are shown in epochs, each a permutation seeded by (gan.seed, epoch). Position p of the
run's image stream is image perm[p // n][p % n], so what a step shows depends only on the images seen, never
on the worker count or on where a run was resumed. Each worker decodes only its own images, centre-crops
them to a square and resizes them (antialiased) to the training resolution, and keeps up to `cache_mb`
of them decoded: a 2,000-image set is read once.

`stream: true` (toy only) is the shipped toy generator's recipe: position p is the toy face of seed
first_seed + p, rendered when needed, so D never sees a repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from handsoff_ray.core.images import from_uint8
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.pool import Pool, PoolItem, load_images, open_pool

__all__ = ["TrainImages", "to_training_size"]


def to_training_size(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [R, R, 3]: centre square crop, then an antialiased resize (PIL's bicubic)."""
    h, w = image.shape[:2]
    if h == w == resolution:
        return image
    from PIL import Image

    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    im = Image.fromarray(np.ascontiguousarray(image[top:top + s, left:left + s]))
    return np.asarray(im.resize((resolution, resolution), Image.BICUBIC, reducing_gap=None))


def _as_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return from_uint8(np.stack(images))


@dataclass
class TrainImages:
    resolution: int
    seed: int
    pool: Pool | None  # None: the toy stream
    train: tuple[PoolItem, ...] = ()
    holdout: tuple[PoolItem, ...] = ()
    first_seed: int = 0  # the toy stream's
    storage: object = None
    cache_bytes: int = 0
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _perms: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, gan, *, storage=None) -> "TrainImages":
        """The set gan.data names, split into training and held-out images; UserError (one line) if unusable."""
        d = gan.data
        if d.stream:
            from handsoff_ray.config import parse_seeds

            return cls(gan.resolution, gan.seed, None, first_seed=min(parse_seeds(d.seeds, what="gan.data.seeds")))
        if d.format != "toy" and not d.path:
            raise UserError("gan.data: name the training images: gan.data.path (a folder, Parquet or s3:// URI) or "
                            "gan.data.format toy with gan.data.seeds")
        pool = open_pool(d, storage=storage, field="gan.data")
        n = len(pool.items)
        held = min(d.holdout, n // 2)  # never more than half the set: training needs the images most
        order = np.random.default_rng([gan.seed, 0]).permutation(n)
        out = set(order[:held].tolist())
        train = tuple(it for k, it in enumerate(pool.items) if k not in out)
        holdout = tuple(pool.items[k] for k in sorted(out))
        if len(train) < gan.batch_size:
            raise UserError(f"gan.data: {len(train)} training images (of {n}, {held} held out) are fewer than one "
                            f"batch (gan.batch_size {gan.batch_size}); add images or lower gan.data.holdout")
        return cls(gan.resolution, gan.seed, pool, train, holdout, storage=storage,
                   cache_bytes=d.cache_mb * 2**20)

    @property
    def finite(self) -> bool:
        return self.pool is not None

    def describe(self) -> dict:
        """What the model card says about the data."""
        if not self.finite:
            return {"format": "toy", "stream": True, "first_seed": self.first_seed}
        return {"format": self.pool.format, "source": self.pool.root, "images": len(self.train),
                "held_out": len(self.holdout), "listing_sha256": self.pool.listing_digest}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.train))
        return self._perms[epoch]

    def positions(self, images_seen: int, count: int) -> np.ndarray:
        """Training-image indices (toy stream: seeds) of stream positions images_seen .. images_seen + count."""
        p = np.arange(images_seen, images_seen + count)
        if not self.finite:
            return self.first_seed + p
        n = len(self.train)
        return np.array([self._epoch(int(e))[int(r)] for e, r in zip(p // n, p % n)])

    def epochs(self, images_seen: int) -> float:
        return images_seen / len(self.train) if self.finite else 0.0

    def load(self, indices: np.ndarray) -> torch.Tensor:
        """[n, 3, R, R] floats in [-1, 1] of these training images (toy stream: seeds)."""
        if not self.finite:
            from handsoff_ray.toy.reals import real_images

            return real_images(indices, self.resolution)
        missing = sorted({int(i) for i in indices if int(i) not in self._cache})
        if missing:
            decoded = self._read([self.train[i] for i in missing])
            for i, img in zip(missing, decoded):
                if (len(self._cache) + 1) * img.nbytes <= self.cache_bytes:
                    self._cache[i] = img
            fresh = dict(zip(missing, decoded))
        else:
            fresh = {}
        return _as_tensor([self._cache.get(int(i), fresh.get(int(i))) for i in indices])

    def load_holdout(self, limit: int | None = None) -> torch.Tensor:
        """The held-out images (the first `limit` of them), [n, 3, R, R] in [-1, 1]; empty when none."""
        items = list(self.holdout[:limit] if limit else self.holdout)
        if not items:
            return torch.empty(0, 3, self.resolution, self.resolution)
        return _as_tensor(self._read(items))

    def _read(self, items: list[PoolItem]) -> list[np.ndarray]:
        imgs = load_images(self.pool.format, self.pool.root, items, storage=self.storage, size=self.resolution,
                           image_column=self.pool.image_column)
        return [to_training_size(im, self.resolution) for im in imgs]
