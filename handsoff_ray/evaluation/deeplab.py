"""torchvision's DeepLabV3 as a downstream trunk, and ImageNet backbone weights read from a local file.

Built with weights=None and weights_backbone=None (nothing is ever downloaded), no auxiliary head (as
the reference). The ASPP trunk is shared by the tasks; segmentation keeps torchvision's final 1x1 conv.

Tests: `python -m pytest -q tests/evaluation/test_downstream.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


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


def deeplab_head(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
                         nn.Conv2d(128, cout, 1))


def build_deeplab(backbone: str, num_classes: int, pretrained_backbone: str | Path | None) -> tuple[nn.Module, nn.Module]:
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
