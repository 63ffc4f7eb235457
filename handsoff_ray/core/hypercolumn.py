"""Pixel hypercolumns: the generator's per-layer features, resized bilinearly to one output size.

HandsOff represents output pixel (y, x) by the concatenation, over the generator's feature maps in
HandsOff order (const, conv1, b8.conv0, ... coarse to fine), of each map bilinearly resized to the
output size (`F.interpolate(mode="bilinear", align_corners=False, antialias=False)`, so a map larger
than the output is *down*-sampled without antialiasing, like the reference's 1024 -> 512 maps).

Materialising that hypercolumn costs C*H*W floats (6016 x 512 x 512 fp32 = 6.3 GB per image), so this
module gives the pieces that avoid it:

- `bilinear_taps(in_size, out_size)`: the exact per-axis index/weight rule of `F.interpolate`
  (source = (dst + 0.5) * in/out - 0.5, clamped at 0; taps i0 = floor(source), i1 = min(i0 + 1, in - 1);
  weights 1 - frac, frac; equal sizes copy). Bilinear = this rule on rows, then on columns.
- `gather_hypercolumn(features, image_index, ys, xs, out_size) -> [P, C]`: the hypercolumn rows of
  P output pixels, read from the native-resolution maps with those taps (training samples pixels).
- `iter_projected_rows(features, weight, bias, out_size)`: `hypercolumn @ weight.T + bias` (the first
  Linear of every label-generator MLP, all members stacked in `weight`), streamed in blocks of output
  rows. Resizing is linear, so each layer's slice of the weight is applied as a 1x1 projection at the
  layer's native resolution and only the O projected channels are resized ("project first"); maps
  larger than the output are resized first instead, which is cheaper there ("resize first"). Layers
  of one resolution share one resize. Projected native rows are cached while the row blocks slide
  down, so no native row is projected twice.

`naive_hypercolumn` materialises the whole thing; it is the reference the fast paths are tested
against and the baseline of benchmarks/labelgen.py.

    >>> hc = gather_hypercolumn(features, n, ys, xs, out_size=(512, 512))   # [P, sum C_l]
    >>> for r0, r1, pre in iter_projected_rows(features, w1, b1, (512, 512)): ...  # [N, r1-r0, W, O]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "AxisTaps",
    "bilinear_taps",
    "feature_channels",
    "gather_hypercolumn",
    "iter_projected_rows",
    "PixelGatherer",
    "naive_hypercolumn",
    "upsample_bilinear",
]


class AxisTaps(NamedTuple):
    """Two source taps and their weights for every destination index along one axis."""

    index0: torch.Tensor  # [out] int64
    index1: torch.Tensor  # [out] int64
    weight0: torch.Tensor  # [out] float32
    weight1: torch.Tensor  # [out] float32


def bilinear_taps(in_size: int, out_size: int, device: torch.device | str | None = None) -> AxisTaps:
    """The 1-D taps `F.interpolate(size=..., mode="bilinear"/"linear", align_corners=False)` uses.

    Mirrors ATen's `compute_source_index_and_lambda`; with `size=` the scale is in/out, which is also
    what `nn.Upsample(scale_factor=s)` uses when 1/s is exact (powers of two, as in HandsOff).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in_size={in_size}, out_size={out_size}")
    # float32 like ATen's opmath for float inputs, so non-integer ratios round the same way.
    dst = torch.arange(out_size, dtype=torch.float32, device=device)
    if in_size == out_size:
        # ATen copies instead of computing (dst + 0.5) * 1 - 0.5, so the second tap has weight 0.
        index0 = dst.long()
        return AxisTaps(index0, index0, torch.ones_like(dst, dtype=torch.float32),
                        torch.zeros_like(dst, dtype=torch.float32))
    scale = torch.tensor(in_size / out_size, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * scale - 0.5).clamp_min(0.0)
    index0 = src.floor().long().clamp_max(in_size - 1)
    weight1 = (src - index0).clamp(0.0, 1.0)
    index1 = (index0 + 1).clamp_max(in_size - 1)
    return AxisTaps(index0, index1, 1.0 - weight1, weight1)


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference resize: bilinear, align_corners=False, no antialias (also when shrinking)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def feature_channels(features: Sequence[torch.Tensor]) -> list[int]:
    """Channel count of each feature map `[N, C_l, h_l, w_l]` (the hypercolumn is their concatenation)."""
    return [int(f.shape[1]) for f in features]


def naive_hypercolumn(features: Sequence[torch.Tensor], out_size: tuple[int, int],
                      *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Materialise the full hypercolumn `[N, sum C_l, H, W]` (memory heavy; reference path only).

    Written layer by layer into one preallocated tensor, as the reference does, so the peak is one
    hypercolumn plus one resized layer rather than twice the hypercolumn (resize list + torch.cat).
    """
    _check_features(features)
    n = features[0].shape[0]
    out = torch.empty(n, sum(feature_channels(features)), *out_size, dtype=dtype,
                      device=features[0].device)
    c0 = 0
    for f in features:
        c1 = c0 + f.shape[1]
        out[:, c0:c1] = upsample_bilinear(f.to(dtype), out_size)
        c0 = c1
    return out


def gather_hypercolumn(features: Sequence[torch.Tensor], image_index: torch.Tensor, ys: torch.Tensor,
                       xs: torch.Tensor, out_size: tuple[int, int],
                       *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Hypercolumn rows `[P, sum C_l]` at integer output pixels (image_index[p], ys[p], xs[p]).

    Equals `naive_hypercolumn(features, out_size)[image_index, :, ys, xs]` (up to float rounding)
    without building it: each layer is read at the four bilinear taps of each pixel. For repeated
    calls on the same features use `PixelGatherer`, which computes the taps once.
    """
    return PixelGatherer(features, out_size)(image_index, ys, xs, dtype=dtype)


class PixelGatherer:
    """`gather_hypercolumn` with the per-resolution taps precomputed (the training loop calls it every step).

    Store features with `memory_format=torch.channels_last` to make each gathered pixel one contiguous
    read of C_l values; any layout gives the same numbers.
    """

    def __init__(self, features: Sequence[torch.Tensor], out_size: tuple[int, int]):
        _check_features(features)
        self.features = list(features)
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.channels = sum(feature_channels(features))
        device = features[0].device
        self._taps = {size: (bilinear_taps(size[0], self.out_size[0], device),
                             bilinear_taps(size[1], self.out_size[1], device))
                      for size in {(int(f.shape[2]), int(f.shape[3])) for f in features}}

    def __call__(self, image_index: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                 *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not (image_index.shape == ys.shape == xs.shape) or ys.dim() != 1:
            raise ValueError("image_index, ys and xs must be 1-D tensors of the same length")
        device = self.features[0].device
        image_index, ys, xs = image_index.to(device), ys.to(device), xs.to(device)
        # Per resolution: the four taps (y0,x0), (y0,x1), (y1,x0), (y1,x1) of every pixel, stacked [4P].
        reads = {}
        for size, (ty, tx) in self._taps.items():
            y0, y1, wy0, wy1 = (t[ys] for t in ty)
            x0, x1, wx0, wx1 = (t[xs] for t in tx)
            weights = torch.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1]).to(dtype)[..., None]  # [4, P, 1]
            reads[size] = (image_index.repeat(4), torch.cat([y0, y0, y1, y1]), torch.cat([x0, x1, x0, x1]), weights)
        out = torch.empty(ys.numel(), self.channels, dtype=dtype, device=device)
        c0 = 0
        for f in self.features:
            n4, y4, x4, weights = reads[(int(f.shape[2]), int(f.shape[3]))]
            # Advanced indices split by a slice put the pixel axis first: f[n, :, y, x] -> [4P, C_l].
            taps = f[n4, :, y4, x4].to(dtype).view(4, ys.numel(), -1)
            c1 = c0 + f.shape[1]
            torch.sum(taps * weights, dim=0, out=out[:, c0:c1])
            c0 = c1
        return out


def iter_projected_rows(features: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
                        out_size: tuple[int, int], *, chunk_rows: int = 1, cache_bytes: int = 2 * 2**20
                        ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield `(r0, r1, block)`, block `[N, r1-r0, W, O]` = rows r0:r1 of `hypercolumn @ weight.T + bias`.

    `weight` is `[O, sum C_l]` with columns in hypercolumn (feature list) order; `bias` is `[O]` or None.
    Blocks are pixel-major (O contiguous): projections come out of the matmul that way, and resizing
    whole O-vectors per pixel is the vectorised (channels-last) path of `F.interpolate`, ~10x faster
    on CPU than resizing channel planes. Small blocks (default one row) keep the per-resolution
    resize-and-add passes in cache; each resolution projects native rows ahead in batches of up to
    `cache_bytes` so the projection stays a large matmul. Peak memory: a few blocks plus one row
    cache per resolution.
    """
    _check_features(features)
    channels = feature_channels(features)
    if weight.dim() != 2 or weight.shape[1] != sum(channels):
        raise ValueError(f"weight must be [O, {sum(channels)}] (the hypercolumn width of these features), "
                         f"got {tuple(weight.shape)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    height = out_size[0]
    groups = _group_by_resolution(features, weight, bias, out_size, cache_bytes)
    for r0 in range(0, height, chunk_rows):
        r1 = min(height, r0 + chunk_rows)
        # Every group returns a fresh tensor (a matmul or resize result), never a view of its cache,
        # so the first one can be added into.
        block = groups[0].rows(r0, r1)
        for group in groups[1:]:
            block.add_(group.rows(r0, r1))
        yield r0, r1, block


@dataclass
class _ResolutionGroup:
    """The feature maps of one native size, their weight rows, and a cache of projected native rows."""

    maps: list[torch.Tensor]  # each [N, C_l, h, w]
    weight_t: torch.Tensor  # [sum C_l of the group, O]: the group's weight columns, transposed
    bias: torch.Tensor | None  # [O]; given to one group only
    row_taps: AxisTaps
    out_size: tuple[int, int]
    lookahead: int  # native rows projected per batch
    cache_lo: int = 0
    cache: torch.Tensor | None = None  # [N, R, w, O]: projected native rows cache_lo .. cache_lo+R-1

    def __post_init__(self) -> None:
        # Python lists: the per-row loop below reads them thousands of times.
        taps = self.row_taps
        self._index0, self._index1, self._weight1 = taps.index0.tolist(), taps.index1.tolist(), taps.weight1.tolist()

    @property
    def native_size(self) -> tuple[int, int]:
        return int(self.maps[0].shape[2]), int(self.maps[0].shape[3])

    @property
    def resize_first(self) -> bool:
        # Shrinking maps: resizing C_g feature channels and projecting at the output size is cheaper
        # than projecting h*w > H*W native pixels into O channels. Otherwise project first.
        h, w = self.native_size
        return h * w > self.out_size[0] * self.out_size[1]

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """Rows r0:r1 of this group's contribution to the projection, `[N, r1-r0, W, O]` (a fresh tensor)."""
        lo, hi = self._native_span(r0, r1)
        if self.native_size == self.out_size:
            return self._project(self._features(lo, hi))
        if self.resize_first:
            resized = self._resize(self._features(lo, hi).permute(0, 2, 3, 1), r0, r1, lo)  # [N, c, W, C_g]
            return self._project(resized.permute(0, 3, 1, 2))
        return self._resize(self._projected_native_rows(lo, hi), r0, r1, lo)

    def _native_span(self, r0: int, r1: int) -> tuple[int, int]:
        """Native rows [lo, hi) that output rows [r0, r1) read."""
        if self.native_size[0] == self.out_size[0]:
            return r0, r1
        return self._index0[r0], self._index1[r1 - 1] + 1

    def _features(self, lo: int, hi: int) -> torch.Tensor:
        """Native rows [lo, hi) of the group's maps, `[N, C_g, hi-lo, w]` (a copy only for several maps)."""
        rows = [m[:, :, lo:hi] for m in self.maps]
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)

    def _project(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """1x1 projection of `[N, C_g, R, w]` into `out` (or a new tensor) `[N, R, w, O]`.

        One matmul per image; channels-first rows are read as a transposed matrix (no copy). The
        bias rides along (addmm): resizing keeps constants, since the bilinear weights sum to one.
        """
        n, _, rows, cols = x.shape
        if out is None:
            out = torch.empty(n, rows, cols, self.weight_t.shape[1], dtype=self.weight_t.dtype, device=x.device)
        for i in range(n):
            a = x[i].flatten(1).T.to(self.weight_t.dtype)  # [C_g, R, w] -> [R*w, C_g]
            target = out[i].view(rows * cols, -1)
            if self.bias is None:
                torch.mm(a, self.weight_t, out=target)
            else:
                torch.addmm(self.bias, a, self.weight_t, out=target)
        return out

    def _projected_native_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Projected native rows [lo, hi) `[N, hi-lo, w, O]`, computed in batches as blocks slide down."""
        cached_hi = self.cache_lo + (0 if self.cache is None else self.cache.shape[1])
        if self.cache is None or not self.cache_lo <= lo < cached_hi:
            self.cache, self.cache_lo, cached_hi = None, lo, lo
        if hi > cached_hi:
            new_hi = min(self.native_size[0], max(hi, lo + self.lookahead))
            kept = cached_hi - lo
            buffer = torch.empty(self.maps[0].shape[0], new_hi - lo, self.native_size[1], self.weight_t.shape[1],
                                 dtype=self.weight_t.dtype, device=self.weight_t.device)
            if kept:
                buffer[:, :kept] = self.cache[:, lo - self.cache_lo:]
            self._project(self._features(cached_hi, new_hi), out=buffer[:, kept:])
            self.cache = buffer
        else:
            self.cache = self.cache[:, lo - self.cache_lo:]
        self.cache_lo = lo
        return self.cache[:, : hi - lo]

    def _resize(self, x: torch.Tensor, r0: int, r1: int, lo: int) -> torch.Tensor:
        """Resize pixel-major native rows `[N, R, w, C]` (first one is native row lo) to `[N, r1-r0, W, C]`."""
        (h, w), (height, width) = self.native_size, self.out_size
        if h != height and r1 - r0 <= 4:
            rows = torch.empty(x.shape[0], r1 - r0, w, x.shape[3], dtype=x.dtype, device=x.device)
            for j, r in enumerate(range(r0, r1)):
                # One lerp per output row into the preallocated block: no gathered copies of x.
                torch.lerp(x[:, self._index0[r] - lo], x[:, self._index1[r] - lo], self._weight1[r], out=rows[:, j])
            x = rows
        elif h != height:
            # Tall blocks (GPU defaults): gather both taps of every row at once, few kernel launches.
            taps = self.row_taps
            x = torch.lerp(x[:, taps.index0[r0:r1] - lo], x[:, taps.index1[r0:r1] - lo],
                           taps.weight1[r0:r1].to(x.dtype)[:, None, None])
        if w != width:
            # Rows already match (ATen copies equal sizes), so this is the column half of the bilinear
            # rule; the [N, C, rows, w] view of pixel-major data takes the channels-last kernel.
            x = F.interpolate(x.permute(0, 3, 1, 2), size=(x.shape[1], width), mode="bilinear",
                              align_corners=False, antialias=False).permute(0, 2, 3, 1)
        return x


def _group_by_resolution(features: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
                         out_size: tuple[int, int], cache_bytes: int) -> list[_ResolutionGroup]:
    by_size: dict[tuple[int, int], list[tuple[torch.Tensor, int, int]]] = {}
    c0 = 0
    for f in features:
        by_size.setdefault((int(f.shape[2]), int(f.shape[3])), []).append((f, c0, c0 + f.shape[1]))
        c0 += f.shape[1]
    n, device = features[0].shape[0], features[0].device
    pixel_bytes = n * weight.shape[0] * weight.element_size()  # one projected native pixel, all N images
    groups = []
    for (h, w), members in by_size.items():
        spans = [(a, b) for _, a, b in members]
        if all(b == a2 for (_, b), (a2, _) in zip(spans, spans[1:])):
            # Adjacent channels (HandsOff order puts a resolution's maps together): a transposed view,
            # which matmul reads in place.
            weight_t = weight[:, spans[0][0]:spans[-1][1]].T
        else:
            weight_t = torch.cat([weight[:, a:b] for a, b in spans], dim=1).T
        groups.append(_ResolutionGroup(
            maps=[f for f, _, _ in members], weight_t=weight_t, bias=bias if not groups else None,
            row_taps=bilinear_taps(h, out_size[0], device), out_size=out_size,
            lookahead=max(1, cache_bytes // (pixel_bytes * w))))
    return groups


def _check_features(features: Sequence[torch.Tensor]) -> None:
    if len(features) == 0:
        raise ValueError("features is empty: pass the list returned by G.synthesis(ws, return_features=True)")
    n = features[0].shape[0]
    for i, f in enumerate(features):
        if f.dim() != 4 or f.shape[0] != n:
            raise ValueError(f"feature map {i} has shape {tuple(f.shape)}; every map must be [N, C, h, w] "
                             f"with the same N={n}")
