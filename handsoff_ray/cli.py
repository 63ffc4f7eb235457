"""The `handsoff` command. Thin: parse, validate, call the pipeline.

    handsoff validate jobs/specs/toy.yaml          # check a spec, print the resolved plan
    handsoff run jobs/specs/toy.yaml --dry-run     # what would run, where, with which hashes
    handsoff invert jobs/specs/toy.yaml            # W+ inversion of the labeled images
    handsoff fit jobs/specs/toy.yaml               # the label generator ensemble
    handsoff checkpoint info ffhq.pt               # architecture, resolution, feature spec
    handsoff checkpoint convert ffhq.pkl ffhq.safetensors
    handsoff checkpoint sample ffhq.pt --seeds 0-7 --out grid.png
    handsoff data check ./labeled                  # validate a labeled set, print a summary
    handsoff suggest jobs/specs/toy.yaml --pool DIR --budget 16 --out to-label/   # which images to label

Every command validates its inputs before computing anything. Exit codes, the same for every command:

    0   done
    2   bad input: a spec, labeled set, checkpoint, storage location or dataset the user must fix, or a bad
        option; stderr says which file (and line) and what to do, one line per problem, no traceback
    1   an internal failure (a bug): the traceback is printed
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import yaml

from handsoff_ray.config import JobSpec, SpecError, load_spec
from handsoff_ray.pipeline.layout import RUN

__all__ = ["main"]


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. inversion.steps=100", param_hint="--set")
        key, raw = item.split("=", 1)
        out[key] = yaml.safe_load(raw)  # so numbers and booleans keep their types
    return out


class BadInput(click.ClickException):
    """Input the user must fix: printed as `Error: ...`, exit code 2 (see the module docstring)."""

    exit_code = 2


def _load(spec_path: str, sets: tuple[str, ...]) -> JobSpec:
    return _load_with(spec_path, _parse_set(sets))


def _load_with(spec_path: str, overrides: dict[str, Any]) -> JobSpec:
    try:
        return load_spec(spec_path, overrides)
    except SpecError as err:
        raise BadInput(str(err)) from None


def _preflight(job: JobSpec, stages: tuple[str, ...] | None = None, ctx=None, plan: dict | None = None) -> None:
    """Every input check the stages (default: all of a run's) make before computing; BadInput listing the problems."""
    from handsoff_ray.pipeline.preflight import preflight

    problems = preflight(job, stages, ctx=ctx, plan=plan)
    if problems:
        raise BadInput(f"{len(problems)} problem(s): " + "; ".join(problems))


def _print_out(text: str, what: str) -> None:
    """Print text on stdout; a stdout that cannot take it (`> /dev/full`, a closed pipe) is one Error line."""
    import os

    try:
        click.echo(text)
        sys.stdout.flush()
    except OSError as err:
        # What is still buffered would fail again at exit ("Exception ignored ..."): send it to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise BadInput(f"cannot write the {what} to stdout: {err.strerror or err}") from None


def _checkpoint_path(ctx, param, value: str) -> str:
    """'toy' names the generator shipped with the package; anything else must be an existing file."""
    import os

    from handsoff_ray.pipeline.context import resolve_checkpoint

    path = resolve_checkpoint(value)
    if os.path.isdir(path):
        raise click.BadParameter(f"{path} is a folder; pass the checkpoint file (.pt, .pkl or .safetensors)")
    if not os.path.isfile(path):
        raise click.BadParameter(f"no such file: {path}")
    return path


def _fail_on_user_error(fn):
    """Turn the errors users cause (bad files, bad specs) into a clean message and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from handsoff_ray.pipeline.errors import user_errors

        try:
            return fn(*args, **kwargs)
        except user_errors() as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(2)

    return wrapper


def _quiet_ray(ctx, param, verbose: bool) -> bool:
    """Before any command body imports Ray: keep its own bars and log lines out unless --verbose."""
    from handsoff_ray.pipeline.progress import quiet_ray

    quiet_ray(verbose=verbose)
    return verbose


verbose_option = click.option("--verbose", is_flag=True, is_eager=True, expose_value=False, callback=_quiet_ray,
                              help="Show Ray's own progress bars, info and warning lines.")
spec_argument = click.argument("spec", type=click.Path(dir_okay=False))
set_option = click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a spec field, e.g. --set inversion.steps=50."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="handsoff-ray")
def main() -> None:
    """HandsOff: turn a few labeled images into an unlimited labeled dataset."""


@main.command()
@spec_argument
@set_option
def validate(spec: str, sets: tuple[str, ...]) -> None:
    """Validate SPEC and print the resolved plan (no compute, nothing written).

    Runs every input check `handsoff run` makes before it computes (labeled set, checkpoint, device,
    LPIPS trunk, storage, evaluation set); exits 2 listing the problems when there are any.
    """
    from handsoff_ray.pipeline.resolved import resolved_plan

    job = _load(spec, sets)
    plan = resolved_plan(job)
    click.echo(yaml.safe_dump(plan, sort_keys=False))
    _preflight(job, plan=plan)


@main.command()
@spec_argument
@set_option
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and exit.")
@click.option("--stages", default="invert,fit,synthesize,evaluate", show_default=True, metavar="LIST", help="Stages to run, in order.")
@verbose_option
@_fail_on_user_error
def run(spec: str, sets: tuple[str, ...], dry_run: bool, stages: str) -> None:
    """Run the stages of SPEC in order (each skips work it already finished).

    Metrics go to Ray's metrics port inside Ray workers and, at the end, to the Pushgateway named by
    HANDSOFF_PUSHGATEWAY (host:port) when it is set.
    """
    from handsoff_ray.pipeline.resolved import resolved_plan
    from handsoff_ray.pipeline.run import run_stages, select_stages

    job = _load(spec, sets)
    plan = resolved_plan(job)
    if dry_run:
        click.echo(yaml.safe_dump(plan, sort_keys=False))
        return
    try:
        wanted = select_stages(job, [s.strip() for s in stages.split(",") if s.strip()])
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--stages") from None
    from handsoff_ray.pipeline.context import RunContext

    ctx = RunContext(job)  # what preflight opens (the labeled set, the generator), the stages reuse
    _preflight(job, tuple(wanted), ctx=ctx, plan=plan)  # the plan once per run, not once more here
    # Progress on stderr (pipeline/progress.py); stdout stays one JSON line per finished stage.
    results = run_stages(
        job, wanted, spec_hash=plan["spec_hash"], ctx=ctx,
        on_start=lambda i, n, name: click.echo(f"[{i}/{n}] {name} (run {job.run_id})", err=True))
    for result in results:
        click.echo(json.dumps(result, default=str))


def _stage_command(name: str, doc: str) -> None:
    """`handsoff <stage> SPEC`: one stage of the pipeline, as `handsoff run --stages <stage>` runs it."""

    @spec_argument
    @set_option
    @verbose_option
    @_fail_on_user_error
    def command(spec: str, sets: tuple[str, ...]) -> None:
        from handsoff_ray.pipeline.run import run_stage, stage_summary

        click.echo(json.dumps(stage_summary(run_stage(_load(spec, sets), name)), default=str))  # as `run` prints

    command.__doc__ = doc
    main.command(name)(command)


# The folders come from layout.RUN (torch-free), so `handsoff --help` stays fast and names what the stages write.
_stage_command("invert", f"Invert the labeled images of SPEC into W+ latents (writes <run>/{RUN.latents}/).")
_stage_command("fit", "Fit the label-generator ensemble on the inverted images "
                      f"(writes <run>/{RUN.label_generator}/).")
_stage_command("synthesize", f"Write the synthetic image+label pairs as Parquet shards (writes <run>/{RUN.dataset}/).")
_stage_command("evaluate", "Train a downstream network on the run's synthetic pairs and test it on "
                           f"evaluation.test_path (writes <run>/{RUN.eval_report}).")


@main.command()
@spec_argument
@set_option
@click.option("--pool", default=None, metavar="PATH",
              help="The unlabeled images: a folder, a labeled-set folder (images/ only), Parquet, or s3://...")
@click.option("--pool-seeds", default=None, metavar="RANGES", help="Toy faces as the pool instead, e.g. 4000000-4001999.")
@click.option("--pool-format", type=click.Choice(["auto", "folder", "parquet"]), default=None,
              help="How to read --pool (default: suggest.pool.format, auto).")
@click.option("--budget", type=click.IntRange(1, 10_000), default=None, help="Images to suggest (default: suggest.budget).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for suggestions.parquet, contact_sheet.png, labeled/ (default: suggest.out).")
@click.option("--after", default=None, metavar="RUN",
              help="A later round: the fitted run folder <storage.output>/<run_id> of SPEC.")
@click.option("--method", type=click.Choice(["typical", "kcenter"]), default=None, help="Default: suggest.method.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default=None, help="Default: resources.engine.")
@click.option("--force", is_flag=True, help="Replace the suggestions of another request in --out.")
@click.option("--dry-run", is_flag=True, help="Say what would be computed, compute nothing.")
@verbose_option
@_fail_on_user_error
def suggest(spec: str, sets: tuple[str, ...], pool: str | None, pool_seeds: str | None, pool_format: str | None,
            budget: int | None, out: str | None, after: str | None, method: str | None, engine: str | None,
            force: bool, dry_run: bool) -> None:
    """Choose the pool images worth labeling (pipeline/suggest.py): writes suggestions.parquet, a contact
    sheet and a labeled-folder skeleton with the chosen images copied in. Pool labels are never read."""
    from handsoff_ray.pipeline.suggest import suggest as run_suggest

    if pool and pool_seeds:
        raise click.BadParameter("give --pool or --pool-seeds, not both", param_hint="--pool")
    named = {"path": pool, **({"format": pool_format} if pool_format else {})} if pool else \
        {"format": "toy", "seeds": pool_seeds} if pool_seeds else None
    result = run_suggest(_load(spec, sets), pool=named, budget=budget, out=out, after=after, method=method,
                         engine=engine, force=force, dry_run=dry_run)
    if dry_run:
        click.echo(yaml.safe_dump(result, sort_keys=False))
        return
    click.echo(json.dumps({"out": result.out, "picked": len(result.ids), "ids": result.ids,
                           "seconds": result.summary["seconds"]}))


@main.command()
@click.option("--quick", is_flag=True, help="A smaller run of the same pipeline (about 3 minutes on 2 cores).")
@click.option("--out", default="handsoff-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the toy data, the run and the preview go.")
@click.option("--report", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@click.option("--generator", default="toy", show_default=True, metavar="PATH",
              help="Generator checkpoint; 'toy' is the one shipped with the package.")
@click.option("--labeled-seeds", default="0-15", show_default=True, metavar="A-B",
              help="Toy faces that play the labeled images (HandsOff's and the baseline's training set).")
@click.option("--test-seeds", default=None, metavar="A-B",
              help="Held-out test faces [default: 1000000 on, 500 (--quick: 100)].")
@click.option("--oracle-seeds", default=None, metavar="A-B",
              help="The oracle's real training faces [default: 2000000 on, 2000 (--quick: 300)].")
@verbose_option
@_fail_on_user_error
def demo(quick: bool, out: str, report: str | None, generator: str, labeled_seeds: str, test_seeds: str | None,
         oracle_seeds: str | None) -> None:
    """16 labeled toy faces -> invert -> fit -> synthesise -> HandsOff vs baseline vs oracle.

    The three seed ranges must be disjoint and below 10,000,000 (the toy GAN's training faces).
    """
    from handsoff_ray.demo import FULL, QUICK, DemoSeeds, parse_seed_range, run_demo

    try:
        seeds = DemoSeeds(parse_seed_range(labeled_seeds),
                          parse_seed_range(test_seeds) if test_seeds else None,
                          parse_seed_range(oracle_seeds) if oracle_seeds else None)
        seeds.resolve(QUICK if quick else FULL)  # bad ranges fail here, before any compute
    except ValueError as err:
        raise BadInput(str(err)) from None
    try:
        run_demo(out, quick=quick, report=report, generator=generator, seeds=seeds,
                 log=lambda m: click.echo(m, err=True))
    except FileNotFoundError as err:
        raise BadInput(str(err)) from None


def _gan_fields_help() -> str:
    """The gan.* fields, their defaults and descriptions, read from config.GanSpec: the one source."""
    from pydantic import BaseModel

    from handsoff_ray.config import GanSpec

    lines = ["\b", "The recipe is the spec's gan: section; set any field with --set gan.FIELD=VALUE:"]
    for name, f in GanSpec.model_fields.items():
        default = "section" if isinstance(f.default, BaseModel) else repr(f.default)
        lines.append(f"  gan.{name} [{default}]: {f.description}")
    return "\n".join(lines)


# The toy world's faces as an endless stream: the shipped toy generator's training data.
TOY_STREAM = {"format": "toy", "seeds": "10000000-10000000", "stream": True, "holdout": 0}


@main.command("train-gan", epilog=_gan_fields_help())
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@set_option
@click.option("--toy", is_flag=True, help="Train on fresh toy faces (gan.data: the toy stream from seed 10,000,000): "
              "with the default gan.* this is the shipped toy generator's recipe. SPEC is optional then.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default=None, help="Default: resources.engine.")
@click.option("--workers", type=click.IntRange(1, 4096), default=None,
              help="Ray Train workers splitting the global batch (default: resources.num_workers).")
@click.option("--max-minutes", type=click.FloatRange(0, min_open=True), default=None,
              help="Checkpoint and stop after this long; rerun the same command to resume.")
@click.option("--dry-run", is_flag=True, help="Print the recipe, the data and where checkpoints go; train nothing.")
@verbose_option
@_fail_on_user_error
def train_gan(spec: str | None, sets: tuple[str, ...], toy: bool, engine: str | None, workers: int | None,
              max_minutes: float | None, dry_run: bool) -> None:
    """Train (or resume) a StyleGAN2 on the unlabeled images gan.data names, locally or on Ray Train.

    \b
    handsoff train-gan jobs/specs/gan-toy-finite.yaml              # checkpoints + generator under <run>/gan/
    handsoff train-gan jobs/specs/my.yaml --engine ray --workers 2  # DDP over 2 Ray Train workers
    handsoff train-gan --toy --set gan.kimg=300 --max-minutes 60    # the shipped toy recipe, resumable
    When gan.kimg is reached, <storage.output>/<run_id>/gan/generator.safetensors is written with its
    model card; name it in generator.checkpoint to run HandsOff on it.
    """
    from handsoff_ray.config import parse_spec

    overrides = _parse_set(sets)
    if workers:
        overrides["resources.num_workers"] = workers
    if toy:
        overrides.update({f"gan.data.{k}": v for k, v in TOY_STREAM.items()} | {"gan.data.path": None})
    if spec is not None:
        job = _load_with(spec, overrides)
    elif toy:
        data: dict[str, Any] = {"name": "toy-gan"}
        for key, value in overrides.items():
            node = data
            *parents, leaf = key.split(".")
            for k in parents:
                node = node.setdefault(k, {})
            node[leaf] = value
        try:
            job = parse_spec(data, source="--toy")
        except SpecError as err:
            raise BadInput(str(err)) from None
    else:
        raise click.UsageError("name a SPEC (its gan: section is the recipe), or pass --toy")
    from handsoff_ray.pipeline.gan import TrainImages, latest_state
    from handsoff_ray.pipeline.context import open_run

    data_set = TrainImages.open(job.gan, storage=job.storage)  # a bad source is one line, before anything else
    if dry_run:
        store = open_run(job)
        state = latest_state(store)
        click.echo(yaml.safe_dump({"gan": job.gan.model_dump(mode="json"), "data": data_set.describe(),
                                   "checkpoints": store.uri("gan"), "engine": engine or job.resources.engine,
                                   "workers": job.resources.num_workers,
                                   "resumes_at_kimg": state["progress"]["images_seen"] / 1000 if state else 0},
                                  sort_keys=False))
        return
    from handsoff_ray.pipeline.gan import train_gan as run_train

    result = run_train(job, engine=engine, max_minutes=max_minutes, log=lambda m: click.echo(m, err=True))
    click.echo(json.dumps({k: result[k] for k in ("images_seen", "finished", "generator")}))


@main.group()
def checkpoint() -> None:
    """Inspect, convert and sample StyleGAN2 checkpoints (rosinality .pt, NVlabs .pkl, own .safetensors)."""


checkpoint_argument = click.argument("path", callback=_checkpoint_path, metavar="PATH|toy")


@checkpoint.command("info")
@checkpoint_argument
@_fail_on_user_error
def checkpoint_info(path: str) -> None:
    """Print the architecture, resolution and hypercolumn feature spec of PATH."""
    from handsoff_ray.core.checkpoint_tools import checkpoint_summary

    click.echo(yaml.safe_dump(checkpoint_summary(path), sort_keys=False))


@checkpoint.command("convert")
@click.argument("src", callback=_checkpoint_path, metavar="SRC|toy")
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite DST when it exists.")
@_fail_on_user_error
def checkpoint_convert(src: str, dst: str, force: bool) -> None:
    """Convert SRC (any supported format) to the project's own .safetensors format at DST."""
    from handsoff_ray.core.checkpoint_tools import convert_checkpoint

    click.echo(json.dumps(convert_checkpoint(src, dst, force=force), indent=2))


@checkpoint.command("sample")
@checkpoint_argument
@click.option("--seeds", default="0-7", show_default=True, metavar="RANGES", help="e.g. 0-7 or 1,5,9-12.")
@click.option("--trunc", "truncation_psi", type=click.FloatRange(0, 2), default=0.7, show_default=True)
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="grid.png", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_fail_on_user_error
def checkpoint_sample(path: str, seeds: str, truncation_psi: float, noise_mode: str, out: str, device: str) -> None:
    """Render a grid of samples of PATH, one per seed (a seed always gives the same image)."""
    from handsoff_ray.config import parse_seeds
    from handsoff_ray.core.checkpoint_tools import sample_grid

    try:
        seed_list = parse_seeds(seeds)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--seeds") from None
    click.echo(json.dumps(sample_grid(path, seed_list, out, truncation_psi, noise_mode, device)))


endpoint_option = click.option("--endpoint-url", default=None, metavar="URL",
                               help="S3 endpoint (else AWS_ENDPOINT_URL).")
allow_incomplete_option = click.option(
    "--allow-incomplete", is_flag=True,
    help="Read the shards that match the manifest even without _SUCCESS or with damaged shards (warns).")


def _warn_incomplete(fn):
    """Show the warnings a dataset reader raises (--allow-incomplete) as one stderr line each."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import warnings

        from handsoff_ray.pipeline.dataset.manifest import IncompleteDatasetWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IncompleteDatasetWarning)
            try:
                return fn(*args, **kwargs)
            finally:
                for w in caught:
                    if issubclass(w.category, IncompleteDatasetWarning):
                        click.echo(f"Warning: {w.message}", err=True)
                    else:  # anyone else's warning, shown as Python would have
                        warnings.showwarning(w.message, w.category, w.filename, w.lineno)

    return wrapper


@main.command()
@click.argument("uri", metavar="DATASET")
@endpoint_option
@allow_incomplete_option
@_fail_on_user_error
@_warn_incomplete
def inspect(uri: str, endpoint_url: str | None, allow_incomplete: bool) -> None:
    """Counts, schema and histograms of a synthetic DATASET folder (local or s3://)."""
    from handsoff_ray.pipeline.dataset.inspection import inspect_dataset

    click.echo(yaml.safe_dump(inspect_dataset(uri, endpoint_url=endpoint_url, allow_incomplete=allow_incomplete),
                              sort_keys=False))


@main.command()
@click.argument("uri", metavar="DATASET")
@endpoint_option
@_fail_on_user_error
def verify(uri: str, endpoint_url: str | None) -> None:
    """Check DATASET against its manifest: _SUCCESS, every shard's size, sha256 and row count.

    Prints a report listing every problem; exits 2 when there is any (rerun `handsoff synthesize SPEC` to repair).
    """
    from handsoff_ray.pipeline.dataset.inspection import verify_dataset_uri

    report = verify_dataset_uri(uri, endpoint_url=endpoint_url)
    click.echo(yaml.safe_dump(report, sort_keys=False, width=10_000))  # one problem per line
    if not report["ok"]:
        click.echo(f"Error: {len(report['problems'])} problem(s) in {uri}: {report['problems'][0]}", err=True)
        sys.exit(2)


@main.command()
@click.argument("uri", metavar="DATASET")
@click.option("--out", type=click.Path(dir_okay=False), default="preview.png", show_default=True)
@click.option("-n", "count", type=click.IntRange(1, 256), default=8, show_default=True, help="Pairs to show.")
@click.option("--columns", type=click.IntRange(1, 64), default=2, show_default=True, help="Pairs per grid row.")
@endpoint_option
@allow_incomplete_option
@_fail_on_user_error
@_warn_incomplete
def preview(uri: str, out: str, count: int, columns: int, endpoint_url: str | None, allow_incomplete: bool) -> None:
    """A grid of the first pairs of DATASET: image | class overlay | keypoints | uncertainty, and a legend."""
    from handsoff_ray.pipeline.dataset.inspection import preview_dataset

    click.echo(json.dumps(preview_dataset(uri, out, count, columns=columns, endpoint_url=endpoint_url,
                                          allow_incomplete=allow_incomplete)))


def _policy(policy: str, keep: float | None):
    """--policy reference|none and --keep Q -> SyntheticDataset's uncertainty_filter."""
    if keep is not None:
        return keep
    return None if policy == "none" else "reference"


_POLICY_OPTIONS = [
    click.option("--policy", type=click.Choice(["reference", "none"]), default="reference", show_default=True,
                 help="reference: drop what the dataset's spec names (as the HandsOff code does); none: keep all."),
    click.option("--keep", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None, metavar="Q",
                 help="Instead: keep the quantile Q of the least uncertain pairs."),
    click.option("--task", type=click.Choice(["segmentation", "keypoints", "depth"]), default=None,
                 help="Whose uncertainty filters (default: segmentation when present)."),
    endpoint_option,
    allow_incomplete_option,
]


def _policy_options(fn):
    for opt in reversed(_POLICY_OPTIONS):
        fn = opt(fn)
    return fn


@main.command()
@click.argument("uri", metavar="DATASET")
@click.option("--format", "fmt", type=click.Choice(["png-folder", "coco"]), required=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="A new (or empty) local folder.")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N", help="Export the first N kept pairs.")
@_policy_options
@_fail_on_user_error
@_warn_incomplete
def export(uri: str, fmt: str, out: str, limit: int | None, policy: str, keep: float | None, task: str | None,
           endpoint_url: str | None, allow_incomplete: bool) -> None:
    """Write DATASET as a labeled-set PNG folder or as COCO (RLE masks, keypoints).

    The files go to a hidden folder beside OUT that becomes OUT only when the export is complete.
    """
    from handsoff_ray.pipeline.dataset.export import export_dataset

    click.echo(json.dumps(export_dataset(uri, out, fmt, uncertainty_filter=_policy(policy, keep), filter_task=task,
                                         limit=limit, endpoint_url=endpoint_url, allow_incomplete=allow_incomplete)))


@main.command("filter")
@click.argument("uri", metavar="DATASET")
@click.option("--out", required=True, metavar="URI", help="Where the filtered dataset goes (path or s3://).")
@_policy_options
@_fail_on_user_error
@_warn_incomplete
def filter_cmd(uri: str, out: str, policy: str, keep: float | None, task: str | None, endpoint_url: str | None,
               allow_incomplete: bool) -> None:
    """Write the pairs of DATASET that an uncertainty policy keeps as a new dataset."""
    from handsoff_ray.pipeline.dataset.export import filter_dataset

    click.echo(json.dumps(filter_dataset(uri, out, uncertainty_filter=_policy(policy, keep), filter_task=task,
                                         endpoint_url=endpoint_url, allow_incomplete=allow_incomplete)))


@main.group()
def spec() -> None:
    """Job spec discovery: every key, its default and meaning, and a JSON Schema for editors."""


@spec.command("schema")
def spec_schema() -> None:
    """Print the JSON Schema of a job spec (save it and point the yaml-language-server modeline at it)."""
    from handsoff_ray.config import spec_json_schema

    _print_out(json.dumps(spec_json_schema(), indent=2), "schema")


@spec.command("defaults")
def spec_defaults() -> None:
    """Print every spec field at its default, each with a comment: a starting point for a new spec."""
    from handsoff_ray.config import spec_defaults_yaml

    _print_out(spec_defaults_yaml(), "defaults")


@main.group()
def data() -> None:
    """Labeled-set tools."""


@data.command("check")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["auto", "folder", "celebamask", "car_parts", "deepfashion"]),
              default="auto", show_default=True, help="Layout of PATH; auto recognises all of them.")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N",
              help="Check only the first N images (a quick look at a big public set).")
@click.option("--split", type=click.Choice(["trainingset", "testset"]), default=None,
              help="Car-Parts-Segmentation split (default trainingset).")
@_fail_on_user_error
def data_check(path: str, fmt: str, limit: int | None, split: str | None) -> None:
    """Validate the labeled set at PATH (sizes, ids, missing pairs, corrupt files); print a summary.

    PATH is a labeled-set folder or a public dataset in its own layout (CelebAMask-HQ,
    Car-Parts-Segmentation, DeepFashion-MultiModal); every problem names its file.
    """
    from handsoff_ray.datasets.public import check_labeled_set

    click.echo(yaml.safe_dump(check_labeled_set(path, format=fmt, limit=limit, split=split), sort_keys=False))


from handsoff_ray.k8s import k8s  # noqa: E402 - its own module: the Kubernetes client code

main.add_command(k8s)

if __name__ == "__main__":
    main()
