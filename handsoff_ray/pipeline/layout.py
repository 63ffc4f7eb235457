"""Every path of a run and of the artifacts runs share, in one place; a dataset's own are dataset/layout.py's.

    <output>/<run_id>/                      RunStore root (storage.py)
      latents/_refs.json                    invert: image id -> latent key (in _artifacts), what was read
      latents/_index.json                   invert: summary (mean PSNR / LPIPS, per image)
      label_generator/_ref.json             fit: the label generator's identity (in _artifacts), what was read
      label_generator/fit.json              fit: a copy of the artifact's fit.json (summary, data facts)
      dataset/                              synthesize: a dataset (dataset/layout.py), one or more versions
      eval/report.json                      evaluate
      <stage folder>/_stage.json            which spec owns the stage's folder (its stage hash)
      <stage folder>/_progress/             Ray Train workers' progress counters

    <output>/_artifacts/                    shared by every run under <output>, stored by identity (identity.py)
      latents/<latent key>.safetensors      W+ latent + inversion metrics of one image
      encoders/<key>.safetensors            the ReStyle-style encoder, when enabled
      label_generator/<fit identity>/members/member-NNN.safetensors, fit.json,
                                  label_generator.safetensors (written last)
      pool_features/<pool key>/part-NNNNNN.parquet, _manifest.json, _SUCCESS
                                            suggest: descriptors of an unlabeled pool (pool listing + feature)

    Runs written before content identities keep latents/<id>.safetensors and
    label_generator/label_generator.safetensors in the run folder; readers still open them (`legacy_*`).

Paths are relative (to the run root, or to <output>/_artifacts) and use "/" on every file system.
"""

from __future__ import annotations

__all__ = ["RUN", "ARTIFACTS", "RunLayout", "ArtifactLayout", "run_roots", "source_of"]


class RunLayout:
    """Paths inside one run (<output>/<run_id>)."""

    latents = "latents"
    latents_refs = "latents/_refs.json"
    latents_index = "latents/_index.json"
    label_generator = "label_generator"
    label_generator_ref = "label_generator/_ref.json"
    fit_summary = "label_generator/fit.json"
    legacy_encoder = "latents/_encoder.safetensors"
    legacy_label_generator_file = "label_generator/label_generator.safetensors"
    dataset = "dataset"
    eval = "eval"
    eval_report = "eval/report.json"

    def legacy_latent(self, image_id: str) -> str:
        return f"{self.latents}/{image_id}.safetensors"

    def in_dataset(self, rel: str) -> str:
        """A DATASET_FILES path (dataset/layout.py) of the run's dataset, relative to the run root."""
        return f"{self.dataset}/{rel}"

    # A stage's folder is the stage's own fact (Stage.folder); these are the files every stage folder has.
    @staticmethod
    def stage_marker(folder: str) -> str:
        return f"{folder}/_stage.json"

    @staticmethod
    def progress_folder(folder: str) -> str:
        return f"{folder}/_progress"


class ArtifactLayout:
    """Paths inside <output>/_artifacts, the outputs every run under <output> shares by identity."""

    root = "_artifacts"  # a run id never starts with "_" (config's pattern), so no run collides with it
    latents = "latents"
    label_generators = "label_generator"

    def latent(self, key: str) -> str:
        return f"{self.latents}/{key}.safetensors"

    def encoder(self, key: str) -> str:
        return f"encoders/{key}.safetensors"

    def label_generator(self, identity: str) -> str:
        return f"{self.label_generators}/{identity}"

    def member(self, identity: str, m: int) -> str:
        return f"{self.label_generator(identity)}/members/member-{m:03d}.safetensors"

    def fit_summary(self, identity: str) -> str:
        return f"{self.label_generator(identity)}/fit.json"

    def label_generator_file(self, identity: str) -> str:
        return f"{self.label_generator(identity)}/label_generator.safetensors"

    @staticmethod
    def pool_features(key: str) -> str:
        return f"pool_features/{key}"

    def pool_part(self, key: str, k: int) -> str:
        return f"{self.pool_features(key)}/part-{k:06d}.parquet"


RUN = RunLayout()
ARTIFACTS = ArtifactLayout()


def run_roots(spec) -> tuple[str, str]:
    """(<output>/<run_id>, <output>/_artifacts) of a job spec, as the resolved plan names them."""
    output = spec.storage.output.rstrip("/")
    return f"{output}/{spec.run_id}", f"{output}/{ARTIFACTS.root}"


def source_of(fmt: str, path: str | None, seeds: str | None) -> str | None:
    """What a stage reads, in the resolved plan's words: a path, or the toy seeds it renders."""
    return f"toy faces, seeds {seeds}" if fmt == "toy" else path
