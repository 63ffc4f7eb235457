"""Downstream networks that measure a labeled dataset the paper's way: train on it, test on real images.

HandsOff judges a synthetic dataset by the network it trains: a DeepLabV3 is fitted on the generated
pairs and scored on held-out *real* labeled images, against the same network fitted only on the few real
labels (the baseline). This module is that measurement, for any labeled set, on in-memory tensors:

    from handsoff_ray.evaluation.downstream import DownstreamData, build_downstream, train_downstream, evaluate_downstream
    train = DownstreamData.from_batch(synthetic_batch)     # anything with images/segmentation/keypoints/depth
    test = DownstreamData.from_batch(open_labeled_set(root).load_all())
    model = build_downstream("deeplabv3", num_classes=8, backbone="resnet101",
                             pretrained_backbone="/models/resnet101-63fe2227.pth")
    summary = train_downstream(model, train, epochs=20, batch_size=8, seed=0, device="cuda")
    scores = evaluate_downstream(model, test, device="cuda")   # {"miou": ..., "iou": [...], ...}

Uncertainty filtering (the reference keeps the middle of the score-sorted list) is a subset:
`train.subset(uncertainty.filter_indices(scores, portion=0.1))`; `weights` gives soft per-sample weights.

Models (`build_downstream`). Every model takes images `[N, 3, H, W]` as floats in [0, 1] (torchvision's
ToTensor convention; `images_to_input` converts uint8 `[N, H, W, 3]`) and normalises them *inside* with the
ImageNet mean/std, so callers cannot forget it and ImageNet backbones see what they were trained on. The
output is a dict with only the requested tasks, all at the input size:
  "segmentation": `[N, K, H, W]` logits; "keypoints": `[N, J, H, W]` heatmaps;
  "depth": `[N, 1, H, W]` natural log of depth in the training set's units.
- "deeplabv3": torchvision's deeplabv3_{resnet50, resnet101, mobilenet_v3_large}, built with weights=None
  and weights_backbone=None (nothing is ever downloaded), no auxiliary head (as the reference). The
  ASPP trunk (256 channels at stride 8, 16 for MobileNet) is shared: segmentation keeps torchvision's final 1x1 conv, and
  keypoints / depth get a 3x3 conv + BN + ReLU + 1x1 head each; outputs are bilinearly upsampled.
  `pretrained_backbone` is a local file (torchvision ImageNet `.pth`, or `.safetensors`); the reference
  trains on an ImageNet ResNet-101 (torchvision's then-default `pretrained_backbone=True`).
- "unet": a small UNet (4 resolutions, 2 x (3x3 conv + GroupNorm + ReLU) per block, bilinear
  upsampling + skip concatenation, widths base_width x (1, 2, 4, 8)) with a 1x1 conv per task; for tiny
  images and CPUs. Inputs are edge-padded to a multiple of 8 and the outputs cropped back.
Tasks of one model share its trunk; build one model per task for scores that cannot interact.
Weights are initialised under `torch.manual_seed(seed)` inside a forked RNG (the global RNG is untouched).
`model.config` rebuilds the same architecture: `build_downstream(**model.config)`, then load_state_dict.

Training (`train_downstream`): Adam, summed task losses (weights `task_weights`), the reference's
"skip incomplete batches". Losses, each a weighted mean with per-sample `weights`:
- segmentation: cross-entropy over pixels, `255` = ignore (the reference's plain CE otherwise);
- keypoints: per keypoint, sum over pixels of (heatmap - Gaussian(sigma))^2 divided by the Gaussian's
  own energy, so predicting zeros costs exactly 1 at any image size or sigma; keypoints with visibility
  below `keypoint_min_visibility` (default 2 = visible) are left out of the loss;
- depth: L1 between predicted and true log-depth on valid pixels (finite and > 0; NaN and 0 are the
  formats' "invalid"). L1 on logs is unit-free (metres or millimetres give the same loss); the head
  starts at the training set's mean log-depth (`log_depth_offset`, set when the model's offset is still 0).
The keypoint and depth heads' last convs start at zero (empty heatmaps, the mean depth).
Everything random comes from one `torch.Generator(seed)`: the validation split, each epoch's shuffle,
the flips; so on CPU the same call gives bit-identical weights. `val_fraction` > 0 holds out that share
of the *training* data (never the test set) and keeps the epoch with the best validation mIoU (else PCK,
else -AbsRel), as the reference selects its DeepLab checkpoint.

Evaluation (`evaluate_downstream`), with core.metrics:
- "miou" and "iou" (per class, in class-id order): intersections and unions summed over the whole test
  set, every class including background averaged, a class absent from truth and prediction scores 0;
- "pck": visible keypoints (v >= keypoint_min_visibility) predicted within pck_alpha * max(H, W) pixels;
  prediction = heatmap arg-max with the sub-pixel parabola refinement of label_generator.decode_keypoints;
- "depth_rmse" and "depth_abs_rel": over all valid test pixels together, depth in the dataset's units.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from handsoff_ray.core.label_generator import decode_keypoints, render_heatmaps
from handsoff_ray.core.metrics import SegmentationMeter, pck

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINDS",
    "BACKBONES",
    "TASKS",
    "DownstreamData",
    "DownstreamNet",
    "TrainSummary",
    "build_downstream",
    "images_to_input",
    "train_downstream",
    "predict_downstream",
    "evaluate_downstream",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
KINDS: tuple[str, ...] = ("unet", "deeplabv3")
BACKBONES: tuple[str, ...] = ("resnet50", "resnet101", "mobilenet_v3_large")
TASKS: tuple[str, ...] = ("segmentation", "keypoints", "depth")
IGNORE_INDEX = 255  # segmentation pixels never trained on nor scored
_UNET_LEVELS = 3  # downsamplings: 4 resolutions, inputs padded to a multiple of 2**3
_CHUNK = 256  # images per chunk when scanning a whole dataset


# ---------------------------------------------------------------------------------------------- data
def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()  # torch warns on (and must not alias) read-only numpy memory
    return torch.as_tensor(x)


@dataclass(frozen=True)
class DownstreamData:
    """Labeled images in memory. numpy arrays are accepted and become tensors; a task is present when not None."""

    images: torch.Tensor  # uint8 [N, H, W, 3]
    segmentation: torch.Tensor | None = None  # integer [N, H, W] class ids, 255 = ignore
    keypoints: torch.Tensor | None = None  # float32 [N, J, 3]: x, y (pixel centres at integers), v 0|1|2
    depth: torch.Tensor | None = None  # float32 [N, H, W] in the dataset's units; NaN or <= 0 = invalid
    weights: torch.Tensor | None = None  # float32 [N] per-sample loss weight >= 0; 0 = never trained on

    def __post_init__(self) -> None:
        images = _as_tensor(self.images)
        if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        n, h, w = images.shape[:3]
        if n < 1:
            raise ValueError("images is empty; pass at least one labeled image")
        object.__setattr__(self, "images", images)
        expect = {"segmentation": (n, h, w), "keypoints": None, "depth": (n, h, w), "weights": (n,)}
        for name in ("segmentation", "keypoints", "depth", "weights"):
            value = getattr(self, name)
            if value is None:
                continue
            t = _as_tensor(value)
            if name == "segmentation":
                if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                    raise ValueError(f"segmentation must hold integer class ids, got dtype {t.dtype}")
            elif name == "keypoints":
                if t.dim() != 3 or t.shape[0] != n or t.shape[2] != 3:
                    raise ValueError(f"keypoints must be [N={n}, J, 3] (x, y, v), got {tuple(t.shape)}")
                t = t.float()
            else:
                t = t.float()
            if expect[name] is not None and tuple(t.shape) != expect[name]:
                raise ValueError(f"{name} must have shape {list(expect[name])} to match images, got {list(t.shape)}")
            if name == "weights" and (not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or not bool((t > 0).any())):
                raise ValueError("weights must be finite, >= 0, and not all 0 (0 drops a sample)")
            object.__setattr__(self, name, t)

    @classmethod
    def from_batch(cls, batch: Any, *, weights: Any = None) -> DownstreamData:
        """From anything with `images` and optional `segmentation` / `keypoints` / `depth` (LabeledBatch, ToyBatch)."""
        return cls(images=batch.images, segmentation=getattr(batch, "segmentation", None),
                   keypoints=getattr(batch, "keypoints", None), depth=getattr(batch, "depth", None), weights=weights)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASKS if getattr(self, t) is not None)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> DownstreamData:
        """The samples at `indices` (e.g. `uncertainty.filter_indices(scores)`), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() == 0:
            raise ValueError("subset: no indices given; keep at least one sample")
        if int(idx.min()) < 0 or int(idx.max()) >= len(self):
            raise IndexError(f"subset: indices must be in [0, {len(self)}), got {int(idx.min())}..{int(idx.max())}")

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        return DownstreamData(images=self.images[idx], segmentation=pick(self.segmentation),
                              keypoints=pick(self.keypoints), depth=pick(self.depth), weights=pick(self.weights))


def images_to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` -> float `[N, 3, H, W]` in [0, 1], the models' input (normalised inside)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


# ---------------------------------------------------------------------------------------------- models
def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True),
    )


class _UNetTrunk(nn.Module):
    """Full-resolution features `[N, base_width, H, W]`; GroupNorm so tiny batches train like big ones."""

    def __init__(self, base_width: int):
        super().__init__()
        widths = [base_width * 2**i for i in range(_UNET_LEVELS + 1)]
        self.down = nn.ModuleList([_conv_block(3, widths[0])] +
                                  [_conv_block(widths[i - 1], widths[i]) for i in range(1, len(widths))])
        self.up = nn.ModuleList([_conv_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(_UNET_LEVELS))])
        self.out_channels = widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x


class _DeepLabTrunk(nn.Module):
    """torchvision DeepLabV3 up to the last 1x1 conv: backbone + ASPP + 3x3 conv -> `[N, 256, H/s, W/s]`,
    s = 8 for ResNets (dilated), 16 for MobileNetV3."""

    def __init__(self, backbone: nn.Module, aspp: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.aspp = aspp
        self.out_channels = 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aspp(self.backbone(x)["out"])


class DownstreamNet(nn.Module):
    """A trunk, one head per task, ImageNet normalisation inside; see the module docstring for outputs."""

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module], *, pad_multiple: int, config: dict[str, Any]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict({t: heads[t] for t in TASKS if t in heads})
        self.pad_multiple = pad_multiple
        self.config = dict(config)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Mean log-depth of the training set, added to the depth head (train_downstream sets it once).
        self.register_buffer("log_depth_offset", torch.zeros(()))

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def num_keypoints(self) -> int:
        return int(self.config["num_keypoints"])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W] in [0, 1], got shape {tuple(x.shape)}; "
                             f"use images_to_input() on uint8 [N, H, W, 3]")
        height, width = x.shape[-2:]
        x = (x - self.mean) / self.std
        pad_h, pad_w = (-height) % self.pad_multiple, (-width) % self.pad_multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        features = self.trunk(x)
        out = {}
        for task, head in self.heads.items():
            y = head(features)
            if y.shape[-2:] != x.shape[-2:]:
                y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            out[task] = y[..., :height, :width]
        if "depth" in out:
            out["depth"] = out["depth"] + self.log_depth_offset
        return out


def _deeplab_head(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
                         nn.Conv2d(128, cout, 1))


def _build_deeplab(backbone: str, num_classes: int, pretrained_backbone: str | Path | None) -> tuple[nn.Module, nn.Module]:
    from torchvision.models import segmentation as seg

    constructor = {"resnet50": seg.deeplabv3_resnet50, "resnet101": seg.deeplabv3_resnet101,
                   "mobilenet_v3_large": seg.deeplabv3_mobilenet_v3_large}[backbone]
    # weights=None and weights_backbone=None: torchvision would otherwise download ImageNet weights.
    model = constructor(weights=None, weights_backbone=None, num_classes=max(num_classes, 1), aux_loss=False)
    if pretrained_backbone is not None:
        _load_backbone(model.backbone, pretrained_backbone, backbone)
    # DeepLabHead = [ASPP, conv3x3, BN, ReLU, conv1x1(256 -> K)]: share the first four, keep the last for masks.
    layers = list(model.classifier.children())
    return _DeepLabTrunk(model.backbone, nn.Sequential(*layers[:4])), layers[4]


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained_backbone {str(p)!r} is not a file; pass a local torchvision ImageNet "
                                f"checkpoint (e.g. resnet101-63fe2227.pth) or pretrained_backbone=None")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"{p} holds a {type(state).__name__}, not a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _load_backbone(backbone: nn.Module, path: str | Path, name: str) -> None:
    """Copy ImageNet weights into the DeepLab backbone, whatever prefix the file uses; refuse partial matches."""
    own = backbone.state_dict()
    # Old torchvision files predate BatchNorm's num_batches_tracked; it carries no learned value.
    need = {k for k in own if not k.endswith("num_batches_tracked")}
    state = _read_state_dict(path)
    # torchvision classifiers: resnet "conv1.weight" (no prefix), mobilenet "features.0.0.weight".
    best: dict[str, torch.Tensor] = {}
    for prefix in ("", "features.", "backbone.", "module.", "module.features.", "module.backbone."):
        cand = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if len(need & cand.keys()) > len(need & best.keys()):
            best = cand
    missing = sorted(need - best.keys())
    if missing:
        raise ValueError(f"{path} is not a {name} checkpoint: {len(missing)} of the backbone's {len(need)} tensors "
                         f"are missing (e.g. {missing[:3]}); pass torchvision's ImageNet {name} state dict")
    wrong = [k for k in need if best[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(f"{path} does not fit the {name} backbone: {len(wrong)} tensors have other shapes "
                         f"(e.g. {k}: {tuple(best[k].shape)} vs {tuple(own[k].shape)})")
    backbone.load_state_dict({k: best[k] for k in need if k in best}, strict=False)


def build_downstream(
    kind: Literal["unet", "deeplabv3"] = "unet",
    *,
    num_classes: int,
    num_keypoints: int = 0,
    depth: bool = False,
    backbone: str = "resnet101",
    pretrained_backbone: str | Path | None = None,
    base_width: int = 32,
    seed: int = 0,
) -> DownstreamNet:
    """A downstream network for the requested tasks (num_classes=0 / num_keypoints=0 / depth=False drop a task).

    backbone and pretrained_backbone apply to "deeplabv3" (reference: resnet101 with an ImageNet backbone);
    base_width to "unet" (16 is enough for 32x32 toys, 32 for 64x64).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown downstream kind {kind!r}; pass one of {KINDS}")
    if num_classes < 0 or num_keypoints < 0:
        raise ValueError(f"num_classes and num_keypoints must be >= 0, got {num_classes} and {num_keypoints}")
    if num_classes == 1:
        raise ValueError("num_classes=1 is a single class (nothing to segment); pass >= 2 with background, or 0 for no masks")
    if num_classes == 0 and num_keypoints == 0 and not depth:
        raise ValueError("no task requested; pass num_classes >= 2, num_keypoints >= 1 or depth=True")
    config = {"kind": kind, "num_classes": int(num_classes), "num_keypoints": int(num_keypoints), "depth": bool(depth),
              "backbone": backbone, "base_width": int(base_width), "seed": int(seed)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "unet":
            if pretrained_backbone is not None:
                raise ValueError("the UNet has no pretrained backbone; pass kind='deeplabv3' or pretrained_backbone=None")
            if base_width < 4:
                raise ValueError(f"base_width must be >= 4, got {base_width}")
            trunk: nn.Module = _UNetTrunk(base_width)
            c = trunk.out_channels
            heads: dict[str, nn.Module] = {"segmentation": nn.Conv2d(c, num_classes, 1)} if num_classes else {}
            pad = 2**_UNET_LEVELS
        else:
            if backbone not in BACKBONES:
                raise ValueError(f"unknown backbone {backbone!r}; pass one of {BACKBONES}")
            trunk, seg_head = _build_deeplab(backbone, num_classes, pretrained_backbone)
            c = trunk.out_channels
            heads = {"segmentation": seg_head} if num_classes else {}
            pad = 1
        if num_keypoints:
            heads["keypoints"] = nn.Conv2d(c, num_keypoints, 1) if kind == "unet" else _deeplab_head(c, num_keypoints)
        if depth:
            heads["depth"] = nn.Conv2d(c, 1, 1) if kind == "unet" else _deeplab_head(c, 1)
        for task in ("keypoints", "depth"):
            if task in heads:
                # Regression heads start at zero: empty heatmaps (loss 1) and the mean log-depth, rather than
                # a random field whose first gradients would swamp the shared trunk.
                last = heads[task] if kind == "unet" else heads[task][-1]
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        return DownstreamNet(trunk, heads, pad_multiple=pad, config=config)


# ---------------------------------------------------------------------------------------------- checks
def _check_pair(model: DownstreamNet, data: DownstreamData, what: str, tasks: Sequence[str]) -> None:
    """The data carries what the model's tasks need, in the model's label space."""
    for task in tasks:
        if getattr(data, task) is None:
            raise ValueError(f"the model predicts {task} but the {what} data has none; pass {task} "
                             f"or build the model without it")
    if "segmentation" in tasks:
        for labels in data.segmentation.split(_CHUNK):  # chunks: no full-size temporaries for big sets
            bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= model.num_classes))]
            if bad.numel():
                raise ValueError(f"{what} segmentation has class id {int(bad[0])} but the model has num_classes="
                                 f"{model.num_classes}; ids must be < num_classes or {IGNORE_INDEX} (ignore)")
    if "keypoints" in tasks and data.keypoints.shape[1] != model.num_keypoints:
        raise ValueError(f"{what} data has {data.keypoints.shape[1]} keypoints but the model predicts "
                         f"{model.num_keypoints}")


def _valid_depth(depth: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(depth) & (depth > 0)


def _mean_log_depth(depth: torch.Tensor, indices: torch.Tensor) -> float | None:
    """Mean log-depth over the valid pixels of `depth[indices]`; None when no pixel is valid."""
    total, count = 0.0, 0
    for idx in indices.split(_CHUNK):
        d = depth[idx]
        valid = _valid_depth(d)
        total += float(torch.log(d[valid].double()).sum())
        count += int(valid.sum())
    return total / count if count else None


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainSummary:
    """What `train_downstream` did. history: one record per epoch (mean losses, validation scores)."""

    steps: int
    epochs: int
    history: list[dict[str, float]]
    selected_on: str | None = None  # "val_miou" | "val_pck" | "val_neg_abs_rel"; None without validation
    best_epoch: int | None = None
    best_score: float | None = None
    val_indices: tuple[int, ...] = ()


def _losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], *, sigma: float,
            min_visibility: int) -> dict[str, torch.Tensor]:
    w = batch["weights"]  # [B]
    losses = {}
    if "segmentation" in out:
        target = batch["segmentation"].long()
        ce = F.cross_entropy(out["segmentation"], target, ignore_index=IGNORE_INDEX, reduction="none")  # [B, H, W]
        valid = (target != IGNORE_INDEX).float()
        # Weighted pixel mean; with unit weights exactly the reference's batch-mean cross-entropy.
        losses["segmentation"] = (w * ce.sum((1, 2))).sum() / (w * valid.sum((1, 2))).sum().clamp_min(1.0)
    if "keypoints" in out:
        kps = batch["keypoints"]
        pred = out["keypoints"]
        target = render_heatmaps(kps[..., :2], tuple(pred.shape[-2:]), sigma)  # [B, J, H, W]
        energy = target.pow(2).sum((2, 3)).clamp_min(1e-6)  # [B, J]: the loss of an all-zero prediction
        err = (pred - target).pow(2).sum((2, 3)) / energy
        keep = (kps[..., 2] >= min_visibility).float() * w[:, None]
        losses["keypoints"] = (keep * err).sum() / keep.sum().clamp_min(1e-6)
    if "depth" in out:
        depth = batch["depth"]
        valid = _valid_depth(depth)
        log_true = torch.log(torch.where(valid, depth, torch.ones_like(depth)))
        l1 = torch.where(valid, (out["depth"][:, 0] - log_true).abs(), torch.zeros_like(depth))
        losses["depth"] = (w * l1.sum((1, 2))).sum() / (w * valid.float().sum((1, 2))).sum().clamp_min(1.0)
    return losses


def _flip(batch: dict[str, torch.Tensor], flip: torch.Tensor, keypoint_perm: torch.Tensor | None,
          class_lut: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Mirror the samples where `flip` [B] is True; left/right keypoints and classes swap places."""
    if not bool(flip.any()):
        return batch
    out = dict(batch)
    width = batch["images"].shape[2]
    out["images"] = torch.where(flip[:, None, None, None], batch["images"].flip(2), batch["images"])
    if "segmentation" in batch:
        mirrored = batch["segmentation"].flip(2)
        if class_lut is not None:
            mirrored = class_lut[mirrored.long()].to(mirrored.dtype)
        out["segmentation"] = torch.where(flip[:, None, None], mirrored, batch["segmentation"])
    if "depth" in batch:
        out["depth"] = torch.where(flip[:, None, None], batch["depth"].flip(2), batch["depth"])
    if "keypoints" in batch:
        kps = batch["keypoints"]
        mirrored = kps[:, keypoint_perm] if keypoint_perm is not None else kps.clone()
        mirrored[..., 0] = (width - 1) - mirrored[..., 0]  # pixel centres at integers
        out["keypoints"] = torch.where(flip[:, None, None], mirrored, kps)
    return out


def _pair_permutation(pairs: Sequence[tuple[int, int]], size: int, what: str) -> torch.Tensor:
    perm = torch.arange(size)
    for a, b in pairs:
        if not (0 <= a < size and 0 <= b < size):
            raise ValueError(f"{what} pair ({a}, {b}) is out of range [0, {size})")
        perm[a], perm[b] = b, a
    return perm


def _selection(tasks: Sequence[str]) -> tuple[str, Callable[[dict[str, Any]], float]]:
    if "segmentation" in tasks:
        return "val_miou", lambda s: s["miou"]
    if "keypoints" in tasks:
        return "val_pck", lambda s: s["pck"]
    return "val_neg_abs_rel", lambda s: -s["depth_abs_rel"]


def train_downstream(
    model: DownstreamNet,
    data: DownstreamData,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    lr: float = 1e-3,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
    augment: bool = False,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
    flip_class_pairs: Sequence[tuple[int, int]] = (),
    sigma: float = 2.0,
    keypoint_min_visibility: int = 2,
    task_weights: Mapping[str, float] | None = None,
    val_fraction: float = 0.0,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainSummary:
    """Fit `model` (in place, moved to `device`) on `data`; see the module docstring for losses and determinism.

    epochs: passes over the training samples (reference: 20); max_steps caps the optimiser steps.
    augment: random horizontal flips; flip_pairs lists keypoint indices that swap under a mirror (required
    with keypoints, () when none), flip_class_pairs the class ids that do (e.g. left/right eye).
    sigma: heatmap Gaussian std in pixels. task_weights: loss weight per task (default 1 each).
    val_fraction: share of `data` held out (chosen by seed) to select the best epoch; 0 keeps the last.
    callback(step, logs): after every step with "loss" and "loss_<task>"; after each epoch with "epoch"
    and, when validating, the validation scores as "val_<metric>".
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma}")
    tasks = model.tasks
    _check_pair(model, data, "training", tasks)
    weights = dict.fromkeys(tasks, 1.0) | dict(task_weights or {})
    unknown = sorted(set(weights) - set(tasks))
    if unknown:
        raise ValueError(f"task_weights names {unknown}, which the model does not predict (it has {list(tasks)})")
    keypoint_perm = class_lut = None
    if augment:
        if "keypoints" in tasks:
            if flip_pairs is None:
                raise ValueError("augment=True with keypoints needs flip_pairs: the keypoint indices that swap "
                                 "under a horizontal flip, e.g. [(0, 1), (3, 4)], or () if none")
            keypoint_perm = _pair_permutation(flip_pairs, model.num_keypoints, "flip_pairs")
        if "segmentation" in tasks and flip_class_pairs:
            class_lut = _pair_permutation(flip_class_pairs, 256, "flip_class_pairs")

    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    order = torch.randperm(n, generator=gen) if val_fraction > 0 else torch.arange(n)
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise ValueError(f"val_fraction={val_fraction} leaves no training sample out of {n}; lower it")
    val_idx = order[:n_val].sort().values
    train_idx = order[n_val:].sort().values
    sample_w = data.weights if data.weights is not None else torch.ones(n)
    pool = train_idx[sample_w[train_idx] > 0]
    if pool.numel() == 0:
        raise ValueError("every training sample has weight 0; give some samples a positive weight")
    if model.config["kind"] == "deeplabv3" and min(batch_size, pool.numel()) < 2:
        raise ValueError("DeepLabV3 trains BatchNorm and needs batches of >= 2 images; raise batch_size or add data")

    device = torch.device(device)
    model.to(device)
    if "depth" in tasks and float(model.log_depth_offset) == 0.0:
        offset = _mean_log_depth(data.depth, pool)
        if offset is not None:
            model.log_depth_offset.fill_(offset)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    selected_on, score_of = _selection(tasks) if n_val else (None, None)
    val_data = data.subset(val_idx) if n_val else None
    best_score, best_epoch, best_state = None, None, None
    history: list[dict[str, float]] = []
    step = 0
    # The reference skips incomplete batches; a set smaller than one batch trains as one batch.
    per_epoch = max(1, pool.numel() // batch_size)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = pool[torch.randperm(pool.numel(), generator=gen)]
        sums: dict[str, torch.Tensor] = {}  # summed on the device: no host sync per step without a callback
        done = 0
        for b in range(per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            batch = {"images": data.images[idx], "weights": sample_w[idx]}
            batch |= {t: getattr(data, t)[idx] for t in tasks}
            if augment:
                batch = _flip(batch, torch.rand(idx.numel(), generator=gen) < 0.5, keypoint_perm, class_lut)
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(images_to_input(batch["images"]))
            losses = _losses(out, batch, sigma=sigma, min_visibility=keypoint_min_visibility)
            total = sum(weights[t] * losses[t] for t in tasks)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            step += 1
            done += 1
            logs = {"loss": total.detach(), **{f"loss_{t}": v.detach() for t, v in losses.items()}}
            sums = {k: sums.get(k, 0.0) + v for k, v in logs.items()}
            if callback is not None:
                callback(step, {k: float(v) for k, v in logs.items()})
            if max_steps is not None and step >= max_steps:
                break
        record = {"epoch": float(epoch), "step": float(step), **{k: float(v) / done for k, v in sums.items()}}
        if val_data is not None:
            scores = evaluate_downstream(model, val_data, batch_size=batch_size, device=device,
                                         keypoint_min_visibility=keypoint_min_visibility)
            record |= {f"val_{k}": v for k, v in scores.items() if isinstance(v, float)}
            score = score_of(scores)
            if best_score is None or score > best_score:
                best_score, best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
        history.append(record)
        if callback is not None:
            callback(step, record)
        if max_steps is not None and step >= max_steps:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainSummary(steps=step, epochs=len(history), history=history, selected_on=selected_on,
                        best_epoch=best_epoch, best_score=best_score,
                        val_indices=tuple(int(i) for i in val_idx))


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_downstream(model: DownstreamNet, images: torch.Tensor | np.ndarray, *, batch_size: int = 16,
                       device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Decoded labels for uint8 `[N, H, W, 3]` images, on the CPU: "segmentation" int64 `[N, H, W]`,
    "keypoints" `[N, J, 3]` (x, y, v from decode_keypoints), "depth" `[N, H, W]` in the training set's units."""
    images = _as_tensor(images)
    if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval().to(device)
    parts: dict[str, list[torch.Tensor]] = {t: [] for t in model.tasks}
    for start in range(0, images.shape[0], batch_size):
        out = model(images_to_input(images[start:start + batch_size].to(device)))
        if "segmentation" in out:
            parts["segmentation"].append(out["segmentation"].argmax(1).cpu())
        if "keypoints" in out:
            parts["keypoints"].append(decode_keypoints(out["keypoints"]).cpu())
        if "depth" in out:
            parts["depth"].append(out["depth"][:, 0].exp().cpu())
    model.train(was_training)
    return {t: torch.cat(v) for t, v in parts.items()}


def evaluate_downstream(
    model: DownstreamNet,
    test: DownstreamData,
    *,
    num_classes: int | None = None,
    pck_alpha: float = 0.05,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    keypoint_min_visibility: int = 2,
) -> dict[str, Any]:
    """Scores on every task the model predicts (the test set must have its labels). Keys:

    "num_images"; segmentation: "miou" (dataset-level, background included), "iou" (list, per class id);
    keypoints: "pck" (NaN without visible keypoints), "num_keypoints" (how many were scored);
    depth: "depth_rmse", "depth_abs_rel" (over all valid pixels, the dataset's units), "num_depth_pixels".
    num_classes, when given, must equal the model's (a guard on the label space).
    """
    if num_classes is not None and num_classes != model.num_classes:
        raise ValueError(f"num_classes={num_classes} but the model was built with {model.num_classes} classes")
    if not 0.0 < pck_alpha <= 1.0:
        raise ValueError(f"pck_alpha must be in (0, 1], got {pck_alpha}")
    tasks = model.tasks
    _check_pair(model, test, "test", tasks)
    result: dict[str, Any] = {"num_images": len(test)}
    meter = SegmentationMeter(model.num_classes, ignore_index=IGNORE_INDEX) if "segmentation" in tasks else None
    kp_pred: list[torch.Tensor] = []
    sq_err = abs_rel = 0.0
    count = 0
    for start in range(0, len(test), batch_size):
        sl = slice(start, start + batch_size)
        pred = predict_downstream(model, test.images[sl], batch_size=batch_size, device=device)
        if meter is not None:
            meter.update(pred["segmentation"], test.segmentation[sl])
        if "keypoints" in pred:
            kp_pred.append(pred["keypoints"])
        if "depth" in pred:
            # Summed over the whole set, so RMSE is over all valid pixels (as depth_errors on the concatenation).
            true = test.depth[sl]
            valid = _valid_depth(true)
            p, t = pred["depth"][valid].double(), true[valid].double()
            sq_err += float(((p - t) ** 2).sum())
            abs_rel += float(((p - t).abs() / t).sum())
            count += int(valid.sum())
    if meter is not None:
        iou = meter.iou()
        result |= {"miou": float(iou.mean()), "iou": [float(v) for v in iou]}
    if "keypoints" in tasks:
        target = test.keypoints.clone()
        target[..., 2] = torch.where(target[..., 2] >= keypoint_min_visibility, target[..., 2], 0.0)
        result["pck"] = pck(torch.cat(kp_pred)[..., :2], target, image_size=test.image_size, alpha=pck_alpha)
        result["num_keypoints"] = int((target[..., 2] > 0).sum())
    if "depth" in tasks:
        result |= {"depth_rmse": math.sqrt(sq_err / count) if count else math.nan,
                   "depth_abs_rel": abs_rel / count if count else math.nan, "num_depth_pixels": count}
    return result
