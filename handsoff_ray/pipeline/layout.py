"""Every path of a run and of a dataset, in one place.

    <output>/<run_id>/                      RunStore root (storage.py)
      latents/<image id>.safetensors        invert: W+ latent + inversion metrics, one file per image
      latents/_encoder.safetensors          invert: the ReStyle-style encoder, when enabled
      latents/_index.json                   invert: summary (mean PSNR / LPIPS, per image)
      label_generator/members/member-NNN.safetensors   fit: one file per ensemble member
      label_generator/fit.json              fit: summary and what fit learnt about the data (classes, ...)
      label_generator/label_generator.safetensors      fit: the merged ensemble (written last)
      dataset/                              synthesize: a dataset (DATASET_FILES below)
      eval/report.json                      evaluate
      <stage folder>/_stage.json            which spec owns the stage's folder (its stage hash)
      <stage folder>/_progress/             Ray Train workers' progress counters

    <dataset>/data/part-NNNNNN.parquet       shards (the Hugging Face layout: readers open data/ directly)
    <dataset>/_manifest.json                what the dataset holds: the truth readers check (manifest.py)
    <dataset>/README.md                     the dataset card
    <dataset>/_SUCCESS                      written last: the dataset is complete

Paths are relative (to the run root, or to the dataset root) and use "/" on every file system.
"""

from __future__ import annotations

__all__ = ["RUN", "DATASET_FILES", "RunLayout", "DatasetLayout"]


class DatasetLayout:
    """Paths inside one dataset folder (a run's dataset/, or the output of `handsoff filter`)."""

    data = "data"
    manifest = "_manifest.json"
    success = "_SUCCESS"
    card = "README.md"

    def shard(self, k: int) -> str:
        return f"{self.data}/part-{k:06d}.parquet"


class RunLayout:
    """Paths inside one run (<output>/<run_id>)."""

    latents = "latents"
    encoder = "latents/_encoder.safetensors"
    latents_index = "latents/_index.json"
    label_generator = "label_generator"
    fit_summary = "label_generator/fit.json"
    label_generator_file = "label_generator/label_generator.safetensors"
    dataset = "dataset"
    eval_report = "eval/report.json"
    _stage_folders = {"invert": latents, "fit": label_generator, "synthesize": dataset, "evaluate": "eval"}

    def latent(self, image_id: str) -> str:
        return f"{self.latents}/{image_id}.safetensors"

    def member(self, m: int) -> str:
        return f"{self.label_generator}/members/member-{m:03d}.safetensors"

    def in_dataset(self, rel: str) -> str:
        """A DatasetLayout path of the run's dataset, relative to the run root."""
        return f"{self.dataset}/{rel}"

    def stage_folder(self, stage: str) -> str:
        return self._stage_folders[stage]

    def stage_marker(self, stage: str) -> str:
        return f"{self._stage_folders[stage]}/_stage.json"

    def progress_folder(self, stage: str) -> str:
        return f"{self._stage_folders[stage]}/_progress"


RUN = RunLayout()
DATASET_FILES = DatasetLayout()
