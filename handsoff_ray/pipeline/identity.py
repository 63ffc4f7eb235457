"""Each stage's identity: the spec sections that change its result plus the content of everything it reads.

    ids = Identities.of(spec, checkpoint_sha256, labeled_digests)   # RunContext.identities() builds it once
    ids.latent_key("000003")    # one image's latent: invert settings + checkpoint + that image's bytes
    ids.invert                  # every selected image's latent key
    ids.fit                     # invert's output + the labels' bytes + label_generator settings + checkpoint
    ids.synthesize              # fit's output + synthesis settings + checkpoint

Outputs are stored under their identity (`<output>/_artifacts/`, layout.py ARTIFACTS) and reused by any run
whose inputs have the same identity; a run folder records the identities it used (its refs), so a rerun can
say what changed. `stage_hash` (config.py) stays the spec part alone: it names which spec owns a run folder
and is the `spec_hash` column of every row, so the shards of an unchanged spec keep their bytes.

`explain_changes` turns two input records into the one line a stage prints ("2 labeled images changed").
"""

from __future__ import annotations

from dataclasses import dataclass

from handsoff_ray.config import JobSpec, stage_hash
from handsoff_ray.pipeline.digests import LabeledDigests, digest_of

__all__ = ["Identities", "explain_changes", "IDENTITY_VERSION"]

# Part of every identity: bump when what a stage computes from the same inputs changes.
IDENTITY_VERSION = 1


@dataclass(frozen=True)
class Identities:
    checkpoint: str  # sha256 of the generator checkpoint
    data: LabeledDigests
    invert_settings: str  # invert's spec sections + checkpoint (and so the encoder)
    latents: dict[str, str]  # image id -> latent key
    invert: str
    fit: str
    synthesize: str

    @classmethod
    def of(cls, spec: JobSpec, checkpoint: str, data: LabeledDigests) -> "Identities":
        settings = digest_of("invert", IDENTITY_VERSION, stage_hash(spec, "invert"), checkpoint)
        latents = {i: digest_of(settings, i, d) for i, d in data.images.items()}
        invert = digest_of(settings, latents)
        fit = digest_of("fit", IDENTITY_VERSION, stage_hash(spec, "fit"), checkpoint, invert, data.labels, data.shared)
        synthesize = digest_of("synthesize", IDENTITY_VERSION, stage_hash(spec, "synthesize"), checkpoint, fit)
        return cls(checkpoint, data, settings, latents, invert, fit, synthesize)

    def latent_key(self, image_id: str) -> str:
        return self.latents[image_id]

    @property
    def encoder_key(self) -> str:
        return digest_of("encoder", self.invert_settings)

    def fit_inputs(self) -> dict:
        """What fit read, recorded next to its output so that the next fit can say what changed."""
        return {"checkpoint": self.checkpoint, "latents": self.latents, "labels": self.data.labels,
                "shared": self.data.shared, "identity": self.fit}


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def explain_changes(before: dict | None, after: dict, since: str) -> str:
    """What differs between two input records (`fit_inputs()`-shaped: checkpoint, latents and labels by image
    id, shared label metadata), as one phrase: "2 labeled images changed since the last fit"."""
    if before is None:
        return f"no record of the last {since}"
    parts = []
    if before.get("checkpoint") != after["checkpoint"]:
        parts.append("the generator checkpoint changed")
    old_l, new_l = before.get("latents") or {}, after["latents"]
    old_y, new_y = before.get("labels") or {}, after.get("labels") or {}
    added = [i for i in new_l if i not in old_l]
    removed = [i for i in old_l if i not in new_l]
    if not parts:  # a new checkpoint changes every latent: say it once
        changed = [i for i in new_l if i in old_l and (old_l[i] != new_l[i] or old_y.get(i) != new_y.get(i))]
        for n, what in ((len(added), "added"), (len(removed), "removed"), (len(changed), "changed")):
            if n:
                parts.append(f"{_count(n, 'labeled image')} {what}")
    if before.get("shared") is not None and before.get("shared") != after.get("shared"):
        parts.append("the label metadata (classes, keypoint names, depth scale) changed")
    if not parts:
        parts.append("the settings changed")
    return f"{', '.join(parts)} since the last {since}"
