"""The HandsOff label generator: per task, an ensemble of per-pixel MLPs over generator hypercolumns.

tasks.py    TaskSpec (one output head) and each task's targets: heatmaps, keypoint decoding, cleanup
model.py    LabelGenerator: the member MLPs, factorized inference (`predict`), `decode`; predict_naive
pools.py    per task, the training / validation pixel pools and the loss on sampled pixels
fit.py      fit_label_generator (every (task, member) pair on its own seed), merge_label_generators
persist.py  save_label_generator / load_label_generator (safetensors with a JSON header)

    >>> tasks = {"seg": TaskSpec("segmentation", num_outputs=8)}
    >>> lg, history = fit_label_generator(features_per_image, {"seg": masks}, tasks, out_size=(512, 512))
    >>> outputs = lg.predict(features)                 # {"seg": [E, N, K, H, W]}
    >>> labels = lg.decode("seg", outputs["seg"])      # [N, H, W]
    >>> save_label_generator(lg, "label_generator.safetensors")

Tests: `python -m pytest -q tests/core/test_label_generator.py`.
"""

from handsoff_ray.core.label_generator.fit import fit_label_generator, merge_label_generators
from handsoff_ray.core.label_generator.model import LabelGenerator, predict_naive
from handsoff_ray.core.label_generator.persist import load_label_generator, save_label_generator
from handsoff_ray.core.label_generator.tasks import TaskSpec, clean_small_classes, decode_keypoints, render_heatmaps

__all__ = [
    "TaskSpec",
    "LabelGenerator",
    "fit_label_generator",
    "merge_label_generators",
    "predict_naive",
    "save_label_generator",
    "load_label_generator",
    "clean_small_classes",
    "render_heatmaps",
    "decode_keypoints",
]
