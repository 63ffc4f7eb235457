"""Downstream networks that measure a labeled dataset the paper's way: train on it, test on real images.

HandsOff judges a synthetic dataset by the network it trains: a DeepLabV3 is fitted on the generated
pairs and scored on held-out *real* labeled images, against the same network fitted only on the few real
labels (the baseline). This package is that measurement, for any labeled set, on in-memory tensors.
Pure PyTorch like `handsoff_ray.core` (which it builds on); `handsoff_ray.pipeline.evaluate` runs it on a
run's dataset.

    from handsoff_ray.evaluation import DownstreamData, build_downstream, train_downstream, evaluate_downstream
    train = DownstreamData.from_batch(synthetic_batch)     # anything with images/segmentation/keypoints/depth
    test = DownstreamData.from_batch(open_labeled_set(root).load_all())
    model = build_downstream("deeplabv3", num_classes=8, backbone="resnet101",
                             pretrained_backbone="/models/resnet101-63fe2227.pth")
    summary = train_downstream(model, train, epochs=20, batch_size=8, seed=0, device="cuda")
    scores = evaluate_downstream(model, test, device="cuda")   # {"miou": ..., "iou": [...], ...}

Uncertainty filtering (the reference keeps the middle of the score-sorted list) is a subset:
`train.subset(uncertainty.filter_indices(scores, portion=0.1))`; `weights` gives soft per-sample weights.

data.py     DownstreamData (labeled images in memory, validated), images_to_input
models.py   DownstreamNet and build_downstream: a small UNet or DeepLabV3, one head per task
deeplab.py  torchvision's DeepLabV3 as a shared trunk, and ImageNet backbone weights from a local file
train.py    train_downstream: losses, flips, deterministic batches, best-epoch selection
scoring.py  predict_downstream and evaluate_downstream (mIoU, PCK, depth RMSE / AbsRel)

Tests: `python -m pytest -q tests/evaluation/test_downstream.py`.
"""

from handsoff_ray.evaluation.data import TASKS, DownstreamData, images_to_input
from handsoff_ray.evaluation.models import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, KINDS, DownstreamNet, build_downstream
from handsoff_ray.evaluation.scoring import evaluate_downstream, predict_downstream
from handsoff_ray.evaluation.train import TrainSummary, planned_steps, train_downstream

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
    "planned_steps",
    "predict_downstream",
    "evaluate_downstream",
]
