"""The paper's measure of a synthetic dataset: a downstream network trained on it, tested on real labels.

Pure PyTorch like `handsoff_ray.core` (which it builds on); `handsoff_ray.pipeline.evaluate` runs it on a
run's dataset.
"""
