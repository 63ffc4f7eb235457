"""The one job spec that drives every HandsOff stage.

A spec is a YAML file with the sections below; every field has a default that works on a laptop, so
the smallest valid spec names only the labeled data and the generator::

    generator: {checkpoint: ./ffhq-config-f.pt}
    data: {path: ./labeled}

Validate and print the resolved plan without computing anything:

    handsoff validate jobs/specs/toy.yaml
    handsoff run jobs/specs/toy.yaml --dry-run

Unknown keys are rejected with their dotted path ("inversion.stepz: unknown key"), ranges are checked,
and all problems are reported together before any compute starts. The same spec runs on a laptop and on
a cluster: only `resources` (and `storage.output`) change where it runs, never what it computes, so
`resources` is left out of the spec hash that stamps every output.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "JobSpec",
    "SpecError",
    "load_spec",
    "parse_spec",
    "spec_hash",
    "stage_hash",
    "GanSpec",
    "GeneratorSpec",
    "DataSpec",
    "InversionSpec",
    "LabelGeneratorSpec",
    "SynthesisSpec",
    "StorageSpec",
    "EvaluationSpec",
    "ResourcesSpec",
    "parse_seeds",
    "parse_seed_ranges",
    "shared_seeds",
    "seed_text",
    "MAX_SEEDS",
]

SEEDS_HELP = "seed ranges like 0-15 or 1,5,9-12, ends included"
# A spec names toy faces by seed range; more than this is a typo (a stray digit), not a data set: checked on the
# ranges, before any list of seeds is made.
MAX_SEEDS = 1_000_000


def parse_seed_ranges(text: str, *, what: str = "--seeds") -> list[range]:
    """'0-3,7,10-11' -> [range(0, 4), range(7, 8), range(10, 12)]; ValueError naming `what` on anything else,
    including more than MAX_SEEDS seeds in all (counted without materialising them)."""
    what = f"{what} " if what else ""
    ranges: list[range] = []
    for part in str(text).split(","):
        a, sep, b = part.strip().partition("-")
        if not (a or sep):
            continue
        try:
            lo = int(a)
            hi = int(b) if sep else lo
        except ValueError:
            raise ValueError(f"{what}{text!r}: expected {SEEDS_HELP}") from None
        if hi < lo:
            raise ValueError(f"{what}{text!r}: {part.strip()} is reversed; write A-B with A <= B")
        ranges.append(range(lo, hi + 1))
    if not ranges:
        raise ValueError(f"{what}{text!r}: no seeds; expected {SEEDS_HELP}")
    count = sum(len(r) for r in ranges)
    if count > MAX_SEEDS:
        raise ValueError(f"{what}{text!r} names {count:,} seeds; at most {MAX_SEEDS:,}")
    return ranges


def parse_seeds(text: str, *, what: str = "--seeds") -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]; ValueError naming `what` on anything else."""
    return [s for r in parse_seed_ranges(text, what=what) for s in r]


def shared_seeds(a: list[range], b: list[range]) -> range | None:
    """The first run of seeds both lists of ranges name (None when they are disjoint)."""
    for ra in a:
        for rb in b:
            both = range(max(ra.start, rb.start), min(ra.stop, rb.stop))
            if len(both):
                return both
    return None


def seed_text(seeds: range) -> str:
    """range(0, 16) -> '0-15' (the form SEEDS_HELP describes)."""
    return f"{seeds.start}-{seeds.stop - 1}" if len(seeds) != 1 else str(seeds.start)


class SpecError(ValueError):
    """A job spec that cannot run. The message lists every problem, one per line."""


def _kind(annotation: Any) -> str | None:
    """'int', 'bool', 'float' or 'ints' (a tuple of ints) for the field types whose silent coercions we refuse."""
    if annotation in (int, bool, float):
        return annotation.__name__
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind(args[0])
    if typing.get_origin(annotation) is tuple and args and all(a is int for a in args):
        return "ints"
    return None


def _refuse_coercion(kind: str | None, value: Any) -> None:
    """pydantic's lax mode turns `steps: true` into 1 and `steps: 2.0` into 2; a spec must say what it means."""
    if kind == "int" and (isinstance(value, (bool, float, str))):
        raise PydanticCustomError("int_strict", "expected an integer, got {got}", {"got": json.dumps(value)})
    if kind == "bool" and not isinstance(value, bool):
        raise PydanticCustomError("bool_strict", "expected true or false, got {got}", {"got": json.dumps(value)})
    if kind == "float" and isinstance(value, bool):
        raise PydanticCustomError("float_strict", "expected a number, got {got}", {"got": json.dumps(value)})
    if kind == "ints" and isinstance(value, (list, tuple)):
        for v in value:
            _refuse_coercion("int", v)


class _Section(BaseModel):
    # extra="forbid" is what turns a typo into an error instead of a silently ignored key.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_silent_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            _refuse_coercion(_kind(cls.model_fields[info.field_name].annotation), value)
        return value


class GeneratorSpec(_Section):
    checkpoint: str = Field(
        "toy",
        description="StyleGAN2 checkpoint: rosinality .pt, NVlabs .pkl or handsoff .safetensors; "
        "'toy' is the generator shipped with the package.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Compute device; auto = cuda when available.")
    feature_resolution: int | None = Field(
        None, ge=8, le=2048,
        description="Hypercolumn (label) resolution; default min(generator resolution, 512) like the reference.",
    )
    crop_rows: tuple[int, int] | None = Field(
        None, description="Content rows [start, stop) of the generator canvas, e.g. [64, 448] for LSUN-car 512."
    )

    @model_validator(mode="after")
    def _crop_rows_ordered(self) -> "GeneratorSpec":
        if self.crop_rows is not None and not 0 <= self.crop_rows[0] < self.crop_rows[1]:
            raise ValueError(f"crop_rows must be [start, stop) with 0 <= start < stop, got {list(self.crop_rows)}")
        return self


# Where labeled images come from: a labeled-set folder, a paper dataset in its public layout
# (handsoff_ray/datasets/; 'auto' detects it), or 'toy': faces rendered from seeds by the toy world
# (handsoff_ray/toy/world.py), nothing on disk, so a toy job runs on any machine or cluster as is.
DataFormat = Literal["folder", "auto", "celebamask", "car_parts", "deepfashion", "toy"]


def _valid_seed_ranges(value: str | None) -> str | None:
    """A field validator for seed ranges: the error sits at the field's dotted path (data.seeds)."""
    if value is not None:
        try:
            parse_seed_ranges(value, what="")
        except ValueError as err:
            raise PydanticCustomError("seed_ranges", "{problem}", {"problem": str(err)}) from None
    return value


def _check_toy_seeds(fmt: str, seeds: str | None, where: str) -> None:
    if fmt == "toy":
        if seeds is None:
            raise ValueError(f"{where}seeds is required with format toy: {SEEDS_HELP}")
    elif seeds is not None:
        raise ValueError(f"{where}seeds names toy faces; it needs format toy (got format {fmt!r})")


class DataSpec(_Section):
    path: str = Field("./data/labeled", description="Labeled-set folder (images/, masks/, keypoints.json, depth/); "
                      "unused with format toy.")
    limit: int | None = Field(16, ge=1, le=10_000, description="Use the first N images (sorted ids); None = all.")
    ids: list[str] | None = Field(None, description="Explicit image ids; overrides limit.")
    format: DataFormat = Field("folder", description="Where labeled images come from: a labeled-set folder, a "
                               "paper dataset in its public layout (auto detects it), or toy faces rendered from seeds.")
    seeds: str | None = Field(None, description="format toy: the toy faces' seeds, e.g. '0-15' (the demo's "
                              "labeled set); the toy GAN trained on seeds >= 10,000,000.")
    classes: str | None = Field(
        None, description="Class map of a public format: celebamask 19|8|9-hat|9-glasses|10 (default 19), "
        "car_parts 10|11-back-bumper|19 (default 10), deepfashion 24.")
    split: Literal["trainingset", "testset"] | None = Field(None, description="Car-Parts split (default trainingset).")
    resize: tuple[int, int] | None = Field(
        None, description="(H, W) every sample is brought to before use; car_parts defaults to (384, 512); "
        "toy renders at H (square, default 64).")

    _seeds_parse = field_validator("seeds")(_valid_seed_ranges)

    @model_validator(mode="after")
    def _toy_needs_seeds(self) -> "DataSpec":
        _check_toy_seeds(self.format, self.seeds, "")
        return self


class LPIPSSpec(_Section):
    net: Literal["vgg", "alex"] = Field("vgg", description="LPIPS trunk (the reference uses VGG16, LPIPS v0.1).")
    trunk_path: str | None = Field(None, description="torchvision ImageNet checkpoint for the LPIPS trunk.")


class EncoderSpec(_Section):
    enabled: bool = Field(False, description="Start the optimisation from a ReStyle-style encoder (trained once "
                          "per run) instead of the average latent.")
    steps: int = Field(2000, ge=1, le=1_000_000, description="Encoder training steps.")
    batch_size: int = Field(16, ge=1, le=1024, description="Generated images per encoder training step.")
    n_iters: int = Field(3, ge=1, le=10, description="ReStyle refinement iterations per image.")
    lr: float = Field(1e-3, gt=0, le=1, description="Encoder training learning rate.")


class InversionSpec(_Section):
    steps: int = Field(500, ge=1, le=100_000, description="Optimisation steps per image (reference: 500).")
    lr: float = Field(0.1, gt=0, le=10, description="Peak learning rate (reference: 0.1 with ramps).")
    rampup: float = Field(0.05, ge=0, le=1, description="Fraction of the steps the learning rate warms up over.")
    rampdown: float = Field(0.25, ge=0, le=1, description="Fraction of the steps the learning rate decays to 0 over "
                            "(cosine).")
    lpips_weight: float = Field(10.0, ge=0, description="Weight of the LPIPS term of the objective.")
    mse_weight: float = Field(1.0, ge=0, description="Weight of the pixel MSE term of the objective.")
    reg_weight: float = Field(1.0, ge=0, description="Weight of the ||w - w_init||^2 regulariser.")
    loss_resolution: int | None = Field(None, ge=8, le=2048, description="Reference: 512 for a 1024 generator.")
    batch_size: int = Field(8, ge=1, le=1024, description="Images optimised together on one device.")
    lpips: LPIPSSpec = Field(LPIPSSpec(), description="The perceptual (LPIPS) loss.")
    encoder: EncoderSpec = Field(EncoderSpec(), description="Optional encoder initialisation of the latents.")


class SegmentationTask(_Section):
    enabled: bool = Field(True, description="Fit and synthesize segmentation labels.")
    hidden: tuple[int, int] = Field((256, 32), description="Hidden widths of each ensemble member's MLP "
                                    "(reference faces; cars use (512, 256)).")
    class_weights: list[float] | None = Field(None, description="Cross-entropy weights, one per class; None = equal.")
    min_pixels: int = Field(30, ge=0, description="Per image, classes with fewer pixels become background.")


class KeypointTask(_Section):
    enabled: bool = Field(True, description="Fit and synthesize keypoint heatmaps (needs keypoints.json).")
    hidden: tuple[int, int] = Field((256, 32), description="Hidden widths of each ensemble member's MLP.")
    sigma: float = Field(2.0, gt=0, le=64, description="Heatmap Gaussian sigma in output pixels.")


class DepthTask(_Section):
    enabled: bool = Field(True, description="Fit and synthesize depth maps (needs depth/).")
    hidden: tuple[int, int] = Field((256, 32), description="Hidden widths of each ensemble member's MLP.")


class TasksSpec(_Section):
    segmentation: SegmentationTask = Field(SegmentationTask(), description="Per-pixel class labels.")
    keypoints: KeypointTask = Field(KeypointTask(), description="Keypoint heatmaps.")
    depth: DepthTask = Field(DepthTask(), description="Per-pixel depth.")

    def enabled(self) -> list[str]:
        return [name for name in ("segmentation", "keypoints", "depth") if getattr(self, name).enabled]


class LabelGeneratorSpec(_Section):
    ensemble_size: int = Field(10, ge=1, le=64, description="Members per task; their disagreement is the "
                               "uncertainty (reference: 10).")
    tasks: TasksSpec = Field(TasksSpec(), description="Which labels the label generator learns.")
    batch_pixels: int = Field(2048, ge=8, le=1_000_000, description="Pixels per step (reference: 64).")
    max_steps: int = Field(3000, ge=1, le=10_000_000, description="Optimiser steps per ensemble member (early "
                           "stopping may end it sooner).")
    lr: float = Field(1e-3, gt=0, le=1, description="Learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine decays the rate to 0 at max_steps (benchmarks/labelgen_fit.py measures "
        "what it buys).")
    class_balanced: bool = Field(
        False, description="true: every present segmentation class is drawn equally often (rare small parts are "
        "learnt in fewer steps; the reference samples uniformly).")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Held-out pixel split for early stopping.")
    patience: int = Field(10, ge=1, description="Validation checks without improvement before stopping.")


class UncertaintySpec(_Section):
    top_fraction: float = Field(0.1, gt=0, le=1, description="Image score = mean of the top fraction of pixels.")


class ReaderSpec(_Section):
    """Read-time policy: recorded in the dataset's manifest as the readers' defaults, never in a stage hash,
    so a new policy needs no regeneration (SyntheticDataset(uncertainty_filter="reference") applies it)."""

    filter_portion: float = Field(0.1, ge=0, lt=1, description="Fraction of pairs readers drop (reference 0.1).")
    drop_most_certain: int = Field(30, ge=0, description="Of those, how many are the most certain (reference 30).")


class SynthesisSpec(_Section):
    num_samples: int = Field(2000, ge=1, le=10_000_000_000, description="Image+label pairs to synthesize.")
    shard_size: int = Field(
        10_000, ge=1, le=10_000_000,
        description="Pairs per Parquet shard (one file each); aim for 128-512 MB files. Measured: 13.7 KB per pair "
        "at 64 px (10,000 pairs -> 137 MB); bytes grow with the pixel count, so lower it for large images.")
    batch_size: int = Field(16, ge=1, le=4096, description="Samples generated and labeled together on one device.")
    truncation_psi: float = Field(0.7, ge=0, le=2, description="Truncation of the sampled latents (reference: 0.7, "
                                  "W broadcast to all layers); 1 = none.")
    store_latent: bool = Field(False, description="Also store each sample's w (float16) in the shards.")
    uncertainty: UncertaintySpec = Field(UncertaintySpec(), description="How each pair's uncertainty score is made.")
    prior_tau: float = Field(
        0.0, ge=0, le=2,
        description="Logit adjustment of the segmentation towards the labeled images' class prior (a class-balanced "
        "fit over-paints rare parts on samples): 0 = none, 1 = the full Bayes correction (benchmarks/README.md).")
    # A scheduled run sets it (the chart: the launch's Unix minute) to add a batch to the same dataset.
    version: int = Field(0, ge=0, le=2**29, description="Dataset version (batch) this run writes: sample ids "
                         "start at version * 2^34, so versions never share a sample or seed; 0 = the first.")


class S3Spec(_Section):
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint; None = AWS_ENDPOINT_URL, else AWS.")
    region: str | None = Field(None, description="None = AWS_REGION / AWS_DEFAULT_REGION.")
    max_attempts: int = Field(3, ge=1, le=100, description="Attempts of one HTTP request inside pyarrow (about a "
                              "second in all); retry_seconds rides out longer outages.")
    retry_seconds: float = Field(
        60, ge=0, le=86_400,
        description="How long one storage operation is retried through an outage before the run stops "
        "(finished work is kept; rerun to resume). Raise it for flaky links; 0 = fail at the first error.")


class StorageSpec(_Section):
    output: str = Field("./handsoff-runs", description="Local path, file:// or s3:// URI.")
    run_id: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$",
                               description="Folder of this run under output; None = the spec's name.")
    s3: S3Spec = Field(S3Spec(), description="Object-store connection, for s3:// outputs.")

    @field_validator("output")
    @classmethod
    def _s3_names_a_bucket(cls, value: str) -> str:
        # 's3:///runs' and 's3://' parse with an empty bucket; the run id would silently become the bucket name
        if value.lower().startswith("s3:") and not urlparse(value).netloc:
            raise PydanticCustomError("s3_bucket", "{uri} names no bucket; write s3://BUCKET/PREFIX",
                                      {"uri": repr(value)})
        return value


class EvaluationSpec(_Section):
    enabled: bool = Field(False, description="Train a downstream network on the synthetic pairs and score it on "
                          "real test images (the evaluate stage).")
    test_path: str | None = Field(None, description="Labeled-set folder of real test images.")
    model: Literal["unet", "deeplabv3"] = Field("unet", description="Downstream network: unet for tiny images; "
                                                "deeplabv3 as in the reference.")
    backbone: Literal["resnet50", "resnet101", "mobilenet_v3_large"] = Field(
        "resnet101", description="deeplabv3's backbone.")
    pretrained_backbone: str | None = Field(None, description="A local torchvision checkpoint for the backbone; "
                                            "nothing is downloaded.")
    unet_width: int = Field(32, ge=4, le=256, description="Base width of the small UNet (16 is enough at 64 px).")
    max_steps: int | None = Field(None, ge=1, description="Cap on optimiser steps (same for every compared network).")
    epochs: int = Field(20, ge=1, le=100_000, description="Passes over the training set (the reference: 20); "
                        "with max_steps, set it high enough that max_steps decides for the smallest set.")
    batch_size: int = Field(8, ge=1, le=1024, description="Training batch size.")
    lr: float = Field(1e-3, gt=0, le=1, description="Training learning rate.")
    pck_alpha: float = Field(0.05, gt=0, le=1, description="A keypoint counts as correct within pck_alpha * "
                             "max(H, W) pixels.")
    use_uncertainty_filter: bool = Field(True, description="Train on the pairs the reader policy keeps (reader.*), "
                                         "not on all of them.")
    seg_loss: Literal["ce", "ce_dice"] = Field(
        "ce", description="Segmentation loss: ce (the reference) or ce_dice (+ soft Dice over the classes in a "
        "batch, so parts of a few pixels count like large ones; the demo's UNet learns toy brows and ears only so).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant (the reference) or cosine (3 % warm-up, decays to 0 at max_steps).")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="Downstream training arithmetic: auto = bf16 autocast where the device has native "
        "bf16 (CUDA, or a CPU with AVX512-BF16/AMX), else fp32.")
    augment: bool = Field(False, description="Random horizontal flips (left/right keypoints swap by name).")
    train_seeds: int = Field(
        1, ge=1, le=16, description="Downstream networks trained per evaluation (seeds seed, seed+1, ...); the "
        "report gives each one's scores, their mean and their spread (max - min).")
    test_format: DataFormat = Field("folder", description="Layout of the real test set, as data.format; the paper "
                                    "scores merged classes.")
    test_seeds: str | None = Field(None, description="test_format toy: the test faces' seeds, e.g. "
                                   "'1000000-1000499' (the demo's 500 held-out faces).")
    test_split: Literal["trainingset", "testset"] | None = Field(None, description="Car-Parts: testset.")
    test_ids: list[str] | None = Field(None, description="Test image ids (public formats); None = all.")
    classes: str | None = Field(
        None, description="Class map both the synthetic and the test labels are merged to before training "
        "and scoring, e.g. '8' for CelebAMask-HQ (the synthetic labels must use data.format's full label set).")

    _seeds_parse = field_validator("test_seeds")(_valid_seed_ranges)

    @model_validator(mode="after")
    def _needs_test_path(self) -> "EvaluationSpec":
        _check_toy_seeds(self.test_format, self.test_seeds, "test_")
        if self.enabled and not self.test_path and self.test_format != "toy":
            raise ValueError("test_path is required when evaluation is enabled (or test_format: toy with test_seeds)")
        return self


class PoolSpec(_Section):
    path: str | None = Field(None, description="The unlabeled images: a folder of images (or a labeled-set folder, "
                             "whose images/ alone is read), a Parquet file or folder with an image column, local or "
                             "s3://. Labels found there are never opened.")
    format: Literal["auto", "folder", "parquet", "toy"] = Field(
        "auto", description="auto: Parquet when path is a .parquet file or a folder of them, else a folder of "
        "images; toy: faces rendered from `seeds`.")
    seeds: str | None = Field(None, description="format toy: the pool's seeds, e.g. '4000000-4001999'.")
    image_column: str = Field("image", description="Parquet pools: the column holding encoded images (binary, or "
                              "the struct<bytes, path> of Hugging Face datasets and of our own shards).")
    id_column: str | None = Field(None, description="Parquet pools: a column of image ids; None = <file stem>:<row>.")

    _seeds_parse = field_validator("seeds")(_valid_seed_ranges)

    @model_validator(mode="after")
    def _toy_needs_seeds(self) -> "PoolSpec":
        _check_toy_seeds(self.format, self.seeds, "")
        if self.format != "toy" and self.path is None and self.seeds is None:
            return self  # no pool named yet: `handsoff suggest --pool` names it
        if self.format != "toy" and self.seeds is not None:
            raise ValueError("seeds names toy faces; it needs format toy")
        return self


class SuggestSpec(_Section):
    pool: PoolSpec = Field(PoolSpec(), description="The unlabeled pool to choose from (`handsoff suggest --pool`).")
    budget: int = Field(16, ge=1, le=10_000, description="How many images to suggest for labeling.")
    method: Literal["typical", "kcenter"] = Field(
        "typical", description="Round one (no fit yet): typical = one most-typical image per pool cluster "
        "(TypiClust); kcenter = k-center greedy coverage (core-set). benchmarks/suggest.py measures both.")
    feature: Literal["vgg", "alex"] = Field("vgg", description="The ImageNet trunk (LPIPS', read offline) whose "
                                            "pooled activations describe each pool image.")
    dims: int = Field(32, ge=2, le=1024, description="Whitened principal directions of the descriptors that "
                      "distances are measured in.")
    images_per_unit: int = Field(256, ge=1, le=100_000, description="Pool images per unit of work (one Parquet part "
                                 "of features each; a killed run redoes at most one unit per worker).")
    shortlist: int = Field(3, ge=1, le=100, description="After a fit (`--after`): shortlist this many times the "
                           "budget in feature space, invert only those and score the label generator's "
                           "disagreement on them.")
    out: str = Field("to-label", description="Local folder for suggestions.parquet, contact_sheet.png and the "
                     "labeled-folder skeleton.")


class GanDataSpec(PoolSpec):
    stream: bool = Field(False, description="format toy: render fresh faces forever from the first seed on (the "
                         "shipped toy generator's recipe) instead of cycling through a finite set.")
    holdout: int = Field(500, ge=0, le=1_000_000, description="Images of the set never trained on: the KID proxy "
                         "compares generated images with them (fixed by a seeded draw; 0 = no proxy KID).")
    cache_mb: int = Field(2048, ge=0, le=1_000_000, description="Decoded training images kept in memory per worker "
                          "(a 2,000-image 64 px set is 25 MB); the rest are read again each epoch.")

    @model_validator(mode="after")
    def _stream_is_toy(self) -> "GanDataSpec":
        if self.stream and self.format != "toy":
            raise ValueError("stream renders toy faces; it needs format toy")
        return self


class GanKidSpec(_Section):
    every_kimg: float = Field(0, ge=0, le=1_000_000, description="Measure the proxy KID at every checkpoint that "
                              "lands this many kimg after the last measurement (0 = only when the run finishes); "
                              "the values form the model card's KID curve.")
    images: int = Field(500, ge=2, le=100_000, description="Generated images per KID measurement (compared with up "
                        "to as many held-out images).")
    feature: Literal["auto", "vgg", "alex"] = Field(
        "auto", description="ImageNet trunk of the proxy KID; auto = the one the discriminator does not use "
        "(VGG16, or AlexNet when a projected D looks through VGG16).")


class GanSpec(_Section):
    data: GanDataSpec = Field(GanDataSpec(), description="The unlabeled images of the user's domain (any source "
                              "`handsoff suggest` reads), resized and centre-cropped to `resolution`.")
    resolution: int = Field(64, ge=8, le=1024, description="Image size (a power of two).")
    channel_base: int = Field(2048, ge=16, le=65536, description="Channels per layer = min(channel_max, "
                              "channel_base // resolution of the layer).")
    channel_max: int = Field(128, ge=8, le=1024, description="Most channels of any layer.")
    style_dim: int = Field(128, ge=8, le=1024, description="Width of z and w.")
    n_mlp: int = Field(4, ge=1, le=8, description="Mapping layers (StyleGAN2-ADA's small-data configs use 2).")
    batch_size: int = Field(16, ge=2, le=4096, description="Global batch: split evenly over the Ray Train workers "
                            "(so it must divide by resources.num_workers).")
    kimg: float = Field(1000, gt=0, le=1_000_000, description="Length of the whole run in thousands of real images "
                        "shown to D.")
    lr: float = Field(0.002, gt=0, le=1, description="Adam learning rate of G and D.")
    r1_gamma: float | None = Field(None, ge=0, description="R1 weight; None = StyleGAN2-ADA's auto rule "
                                   "0.0002 * resolution^2 / batch_size.")
    r1_interval: int = Field(16, ge=1, le=1000, description="Lazy R1: every this many steps.")
    mixing_prob: float = Field(0.9, ge=0, le=1, description="Style-mixing probability per sample.")
    ema_kimg: float = Field(5.0, gt=0, description="Half-life of the EMA generator in thousands of images.")
    ema_rampup: float | None = Field(0.05, ge=0, description="Early on the EMA half-life is at most this fraction "
                                     "of the images seen; None = no ramp.")
    discriminator: Literal["stylegan2", "projected"] = Field(
        "stylegan2", description="stylegan2: the residual D trained from scratch (logistic loss, lazy R1); "
        "projected: small discriminators over frozen ImageNet features (Projected GANs; hinge loss).")
    projected_trunk: Literal["alex", "vgg"] = Field("alex", description="The projected D's ImageNet trunk (AlexNet "
                                                    "is 3x cheaper on CPU).")
    augment: Literal["none", "diffaugment"] = Field(
        "none", description="diffaugment: every image D sees goes through the same random differentiable "
        "transforms (Zhao et al. 2020), so D cannot memorise a finite set.")
    augment_policy: str = Field("color,translation,cutout", description="DiffAugment's transforms, comma-separated.")
    init: str | None = Field(None, description="Start G from this generator checkpoint (same architecture; 'toy' = "
                             "the shipped one) instead of random weights.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast where the hardware "
                                                       "has it (CUDA, Zen 4, Sapphire Rapids), else fp32.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the initial weights and of every sample's draws "
                      "(data order, z, noise, augmentation).")
    checkpoint_kimg: float = Field(4.0, gt=0, description="Checkpoint (G, G_ema, D, optimisers, images seen) every "
                                   "this many kimg: a killed run loses at most this much.")
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="Checkpoints kept in storage (the newest).")
    log_kimg: float = Field(1.0, gt=0, description="One progress line every this many kimg.")
    kid: GanKidSpec = Field(GanKidSpec(), description="The proxy KID against held-out images of the set.")

    @field_validator("augment_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        known = ("color", "translation", "cutout")
        if not parts or any(p not in known for p in parts):
            raise ValueError(f"use a comma-separated subset of {', '.join(known)}, got {value!r}")
        return value

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two, got {value}")
        return value

    @model_validator(mode="after")
    def _projected_size(self) -> "GanSpec":
        if self.discriminator == "projected" and self.resolution < 16:
            raise ValueError("discriminator projected needs resolution >= 16")
        return self


class ResourcesSpec(_Section):
    engine: Literal["ray", "local"] = Field(
        "ray", description="ray: synthesis fans out to Ray Data actors (a local Ray when no address); "
        "local: everything in this process (same outputs, byte for byte).")
    ray_address: str | None = Field(
        None, description="None = the Ray job's cluster inside `ray job submit`, else a private local Ray; "
        "'auto' or host:port = that cluster.")
    num_workers: int = Field(1, ge=1, le=4096, description="Ray Train workers for invert and fit.")
    use_gpu: bool = Field(False, description="Ray Train workers each take a GPU.")
    cpus_per_worker: float = Field(1, gt=0, le=256, description="CPUs each Ray Train worker and synthesis actor "
                                   "reserves.")
    synthesis_actors: int = Field(1, ge=1, le=4096, description="Ray Data actors that synthesize shards.")
    gpus_per_actor: float = Field(0, ge=0, le=8, description="GPUs each synthesis actor reserves (fractions share "
                                  "one).")
    torch_threads: int | None = Field(None, ge=1, le=256, description="torch threads per process; None = torch's "
                                      "default.")


class JobSpec(_Section):
    name: str = Field("handsoff", pattern=r"^[a-z0-9]([-a-z0-9]{0,45}[a-z0-9])?$",
                      description="The job's name; also the run id unless storage.run_id is set.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of every random choice (latents, ensemble inits, "
                      "pixel draws).")
    generator: GeneratorSpec = Field(GeneratorSpec(), description="The pretrained StyleGAN2.")
    data: DataSpec = Field(DataSpec(), description="The labeled images.")
    inversion: InversionSpec = Field(InversionSpec(), description="GAN inversion of the labeled images into W+.")
    label_generator: LabelGeneratorSpec = Field(LabelGeneratorSpec(), description="The ensemble of per-pixel MLPs "
                                                "fitted on the inverted images' hypercolumns.")
    synthesis: SynthesisSpec = Field(SynthesisSpec(), description="Sampling and labeling the synthetic dataset.")
    reader: ReaderSpec = Field(ReaderSpec(), description="Read-time policy recorded as the readers' defaults.")
    storage: StorageSpec = Field(StorageSpec(), description="Where outputs go.")
    evaluation: EvaluationSpec = Field(EvaluationSpec(), description="The optional downstream evaluation.")
    suggest: SuggestSpec = Field(SuggestSpec(), description="`handsoff suggest`: which pool images to label next "
                                 "(outside every stage's hash).")
    gan: GanSpec = Field(GanSpec(), description="`handsoff train-gan`: a StyleGAN2 for the user's own domain "
                         "(outside every stage's hash: a run sees the trained generator through its checkpoint).")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="Where the job runs (never what it computes; "
                                     "outside the spec hash).")

    @model_validator(mode="after")
    def _at_least_one_task(self) -> "JobSpec":
        if not self.label_generator.tasks.enabled():
            raise ValueError("label_generator.tasks: enable at least one of segmentation, keypoints, depth")
        return self

    @property
    def run_id(self) -> str:
        return self.storage.run_id or self.name


def _format_errors(err: ValidationError, source: str, lines: dict[tuple, int] | None = None) -> str:
    out = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        path = ".".join(loc) or "(top level)"
        where = f"{source}:{_line_of(loc, lines or {})}" if lines else source
        if e["type"] == "extra_forbidden":
            out.append(f"{where}: {path}: unknown key{_nearest_key(loc)} (`handsoff spec defaults` lists every key)")
        elif e["type"].endswith("_strict") or e["type"] in ("seed_ranges", "s3_bucket"):  # the message quotes the input
            out.append(f"{where}: {path}: {e['msg']}")
        else:
            out.append(f"{where}: {path}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(out)


# Keys that moved, so a spec written for an earlier version gets told where they went.
_MOVED = {("synthesis", "uncertainty", k): f"reader.{k}" for k in ("filter_portion", "drop_most_certain")}


def _nearest_key(loc: tuple) -> str:
    """'; did you mean `steps`?' for an unknown key at `loc`, from the keys its section allows (difflib)."""
    import difflib

    if tuple(map(str, loc)) in _MOVED:
        return f"; it moved to `{_MOVED[tuple(map(str, loc))]}`"
    model: Any = JobSpec
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        model = field.annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean `{'.'.join(map(str, (*loc[:-1], close[0])))}`?" if close else ""


def _line_of(loc: tuple, lines: dict[tuple, int]) -> int:
    """The line of the deepest key of loc the YAML file holds (1 for a problem of the whole document)."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def parse_spec(data: dict[str, Any] | None, *, source: str = "<spec>", lines: dict[tuple, int] | None = None
               ) -> JobSpec:
    """Validate a spec dict; raise SpecError naming every bad field by its dotted path (and line, given lines)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec must be a YAML mapping, got {type(data).__name__}")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source, lines)) from None
    problems = [f"{source}:{_line_of(loc, lines)}: {msg}" if lines else f"{source}: {msg}"
                for loc, msg in _cross_section_problems(spec)]
    if problems:
        raise SpecError("\n".join(problems))
    return spec


def _cross_section_problems(spec: JobSpec) -> list[tuple[tuple, str]]:
    """(location, problem) of what no one section can see: toy test faces that are also labeled faces (the model
    would be scored on its own training images). Test sets on disk are compared in pipeline/preflight.py."""
    d, ev = spec.data, spec.evaluation
    if d.format == ev.test_format == "toy" and d.seeds and ev.test_seeds:
        both = shared_seeds(parse_seed_ranges(ev.test_seeds), parse_seed_ranges(d.seeds))
        if both is not None:
            return [(("evaluation", "test_seeds"),
                     f"evaluation.test_seeds {ev.test_seeds} and data.seeds {d.seeds} share seeds {seed_text(both)}: "
                     "test faces must never be trained on; pick disjoint ranges")]
    return []


def _key_lines(node: yaml.Node, source: str, prefix: tuple = ()) -> dict[tuple, int]:
    """{key path: 1-based line} of every mapping key under node; SpecError on a key given twice."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            line = key_node.start_mark.line + 1
            if key in lines:
                raise SpecError(f"{source}:{line}: {'.'.join(key)}: duplicate key (first on line {lines[key]}); "
                                "keep one")
            lines[key] = line
            lines.update(_key_lines(value_node, source, key))
    return lines


# Bounds on what a spec file may hold: a spec is a few KB and a few hundred values. Anchors and aliases may
# repeat a block, but a "billion laughs" (aliases of aliases) would expand to more values than memory holds.
MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_VALUES = 100_000


def _expanded_size(node: yaml.Node, source: str, sizes: dict[int, int], open_: set[int]) -> int:
    """How many YAML nodes `node` stands for once every alias is expanded; counted on the composed graph (an
    alias is the same node object as its anchor), each node once, so a bomb is measured without expanding it."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise SpecError(f"{source}:{node.start_mark.line + 1}: an alias refers to the block that holds it; "
                        "a job spec cannot be recursive")
    open_.add(key)
    children: list = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, source, sizes, open_)
        if total > MAX_SPEC_VALUES:
            break  # no need to count further (and keep the sums small)
    open_.discard(key)
    sizes[key] = total
    return total


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read a YAML spec from disk; `overrides` maps dotted keys to values (CLI `--set a.b=c`).

    Errors name the file and line: bytes that are not UTF-8, YAML syntax (line and column), a key given
    twice, and every field that does not validate. An empty (or comments-only) file, a file over
    MAX_SPEC_BYTES and YAML whose aliases expand past MAX_SPEC_VALUES values are refused before anything
    is built from them.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file" if not path.exists() else f"{path}: not a file")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {size:,} bytes; a job spec is a few KB (at most {MAX_SPEC_BYTES:,} bytes)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecError(f"{path}:{line}:{column}: not UTF-8 text (byte 0x{raw[err.start]:02x}); "
                        "save the spec as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            raise SpecError(f"spec {path} is empty; start from `handsoff spec defaults`")
        if _expanded_size(node, str(path), {}, set()) > MAX_SPEC_VALUES:
            raise SpecError(f"{path}: the YAML expands to more than {MAX_SPEC_VALUES:,} values (aliases repeat "
                            "what their anchor names); a job spec holds a few hundred")
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(f"{where}: not valid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:  # PyYAML composes nested blocks recursively
        raise SpecError(f"{path}: not valid YAML: nested too deeply for a job spec") from None
    lines = _key_lines(node, str(path))
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
        lines.pop(tuple(dotted.split(".")), None)  # the value comes from --set, not from that line
    return parse_spec(data, source=str(path), lines=lines)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {dotted}: {key} is not a section")
    node[leaf] = value


_LEGACY_HASHED_READER = {"filter_portion": 0.1, "drop_most_certain": 30}
# (section, field): default. Fields added since hashes were first pinned count only when set.
_HASHED_WHEN_SET = {("synthesis", "prior_tau"): 0.0, ("synthesis", "version"): 0,
                    ("evaluation", "seg_loss"): "ce",
                    ("evaluation", "lr_schedule"): "constant", ("evaluation", "precision"): "fp32",
                    ("evaluation", "augment"): False, ("evaluation", "train_seeds"): 1}


# Which spec sections each stage's output depends on: a stage reruns only when these change.
_STAGE_SECTIONS = {
    "invert": ("seed", "generator", "data", "inversion"),
    "fit": ("seed", "generator", "data", "inversion", "label_generator"),
    "synthesize": ("seed", "generator", "data", "inversion", "label_generator", "synthesis"),
    "evaluate": ("seed", "generator", "data", "inversion", "label_generator", "synthesis", "reader", "evaluation"),
}


def stage_hash(spec: JobSpec, stage: str) -> str:
    """The spec part of a stage's identity (pipeline/identity.py adds what it reads): it names which spec owns a run's
    stage folder and is every row's `spec_hash`. synthesis.version picks a batch of the same dataset, so it
    is left out: every version of one dataset belongs to one spec."""
    if spec.synthesis.version:
        spec = spec.model_copy(update={"synthesis": spec.synthesis.model_copy(update={"version": 0})})
    return spec_hash(spec, sections=_STAGE_SECTIONS[stage])


def spec_hash(spec: JobSpec, *, sections: tuple[str, ...] | None = None) -> str:
    """A short stable hash of what the spec computes (resources and storage location excluded).

    Pass `sections` to hash only what one stage depends on, so that e.g. changing the synthesis sample
    count does not invalidate finished inversions.
    """
    # suggest chooses images to label: it changes nothing a run computes from the labeled set it has.
    dumped = spec.model_dump(mode="json", exclude={"resources", "storage", "suggest", "gan"})
    # reader.* used to sit in synthesis.uncertainty; hashing the reference values there keeps the hash, and so
    # the bytes, of every dataset synthesized before the move (reader policy itself is in no dataset hash).
    dumped["synthesis"]["uncertainty"].update(_LEGACY_HASHED_READER)
    # Fields added since hashes were first pinned count only when set, so existing runs keep their hashes.
    for (section, key), default in _HASHED_WHEN_SET.items():
        if dumped[section].get(key) == default:
            del dumped[section][key]
    # evaluation and the reader policy change no dataset: only the evaluate stage's own hash (sections
    # naming them) covers them
    dumped = {k: v for k, v in dumped.items() if k in sections} if sections is not None else \
        {k: v for k, v in dumped.items() if k not in ("evaluation", "reader")}
    blob = json.dumps(dumped, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Spec discovery: `handsoff spec schema` (editors complete and check keys from it) and
# `handsoff spec defaults` (every field with its default and what it means).


def spec_json_schema() -> dict:
    """The JSON Schema of a job spec, from the pydantic models (unknown keys are `additionalProperties: false`)."""
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "handsoff_ray job spec"
    return schema


def _field_note(field) -> str:
    """What a field means: its description, else its choices and range."""
    import typing

    parts = [field.description.rstrip(".")] if field.description else []
    args = typing.get_args(field.annotation)
    literal = next((a for a in (field.annotation, *args) if typing.get_origin(a) is Literal), None)
    if literal is not None:
        parts.append("one of " + ", ".join(map(str, typing.get_args(literal))))
    ranges = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}  # annotated_types.Ge(ge=0) etc.
    parts += [f"{sign} {getattr(m, k)}" for m in field.metadata for k, sign in ranges.items() if hasattr(m, k)]
    return "; ".join(parts)


def spec_defaults_yaml(model: type[BaseModel] = JobSpec, indent: int = 0) -> str:
    """Every field of the spec at its default, one per line, each with a comment saying what it is."""
    lines = []
    pad = " " * indent
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            doc = field.description or (annotation.__doc__.strip().splitlines()[0] if annotation.__doc__ else "")
            note = f"  # {doc.rstrip('.')}" if doc else ""
            lines.append(f"{pad}{name}:{note}")
            lines.append(spec_defaults_yaml(annotation, indent + 2))
            continue
        value = yaml.safe_dump(field.get_default(call_default_factory=True), default_flow_style=True,
                               width=10**6).strip().removesuffix("\n...").removesuffix("...").strip()
        note = _field_note(field)
        lines.append(f"{pad}{name}: {value}" + (f"  # {note}" if note else ""))
    return "\n".join(lines)
