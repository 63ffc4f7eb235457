"""Downstream networks: `DownstreamNet` (a trunk, one head per task) and `build_downstream`.

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

Tests: `python -m pytest -q tests/evaluation/test_downstream.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from handsoff_ray.evaluation.data import EVAL_CHUNK, IGNORE_INDEX, TASKS, DownstreamData
from handsoff_ray.evaluation.deeplab import build_deeplab, deeplab_head

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
KINDS: tuple[str, ...] = ("unet", "deeplabv3")
BACKBONES: tuple[str, ...] = ("resnet50", "resnet101", "mobilenet_v3_large")
_UNET_LEVELS = 3  # downsamplings: 4 resolutions, inputs padded to a multiple of 2**3


class _FP32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in fp32 under autocast (a no-op in fp32 training; same parameters and state_dict).

    Under CPU bf16 autocast, GroupNorm's backward in bf16 took 3x its fp32 time and a third of the step
    (benchmarks/downstream_step.py --profile); statistics in fp32 are also the numerically safe choice.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)


def _norm(channels: int) -> nn.GroupNorm:
    return _FP32GroupNorm(math.gcd(8, channels), channels)


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
            trunk, seg_head = build_deeplab(backbone, num_classes, pretrained_backbone)
            c = trunk.out_channels
            heads = {"segmentation": seg_head} if num_classes else {}
            pad = 1
        if num_keypoints:
            heads["keypoints"] = nn.Conv2d(c, num_keypoints, 1) if kind == "unet" else deeplab_head(c, num_keypoints)
        if depth:
            heads["depth"] = nn.Conv2d(c, 1, 1) if kind == "unet" else deeplab_head(c, 1)
        for task in ("keypoints", "depth"):
            if task in heads:
                # Regression heads start at zero: empty heatmaps (loss 1) and the mean log-depth, rather than
                # a random field whose first gradients would swamp the shared trunk.
                last = heads[task] if kind == "unet" else heads[task][-1]
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        return DownstreamNet(trunk, heads, pad_multiple=pad, config=config)


def check_pair(model: DownstreamNet, data: DownstreamData, what: str, tasks: Sequence[str]) -> None:
    """The data carries what the model's tasks need, in the model's label space."""
    for task in tasks:
        if getattr(data, task) is None:
            raise ValueError(f"the model predicts {task} but the {what} data has none; pass {task} "
                             f"or build the model without it")
    if "segmentation" in tasks:
        for labels in data.segmentation.split(EVAL_CHUNK):  # chunks: no full-size temporaries for big sets
            bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= model.num_classes))]
            if bad.numel():
                raise ValueError(f"{what} segmentation has class id {int(bad[0])} but the model has num_classes="
                                 f"{model.num_classes}; ids must be < num_classes or {IGNORE_INDEX} (ignore)")
    if "keypoints" in tasks and data.keypoints.shape[1] != model.num_keypoints:
        raise ValueError(f"{what} data has {data.keypoints.shape[1]} keypoints but the model predicts "
                         f"{model.num_keypoints}")
