"""evaluate: train a downstream network on the synthetic pairs, test it on real labeled images.

    handsoff evaluate jobs/specs/toy.yaml            # -> <output>/<run_id>/eval/report.json

This is the paper's measure of a generated dataset. Readers apply the uncertainty filter here (the
reference drops `reader.filter_portion` of the pairs: the `drop_most_certain` most certain and the rest from
the most uncertain end), so one dataset serves any filtering policy. Real test images of another size
are brought to the synthetic resolution with the inversion's geometry (centre crop, then resize).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from handsoff_ray.config import JobSpec, stage_hash
from handsoff_ray.pipeline.context import RunContext
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.layout import RUN, run_roots, source_of
from handsoff_ray.pipeline.stages.base import Plan, Stage

__all__ = ["EvaluateStage", "load_synthetic", "load_real", "score_arms", "train_and_score"]


def load_synthetic(store, spec: JobSpec, *, apply_filter: bool) -> tuple[object, dict]:
    """All synthetic pairs of the run as DownstreamData (optionally uncertainty-filtered), and the schema meta."""
    from handsoff_ray.evaluation import DownstreamData
    from handsoff_ray.pipeline.dataset.layout import DATASET_FILES
    from handsoff_ray.pipeline.dataset.reader import SyntheticDataset

    if not store.exists(RUN.in_dataset(DATASET_FILES.success)):
        raise UserError("no finished synthetic dataset in this run; run `handsoff run SPEC` (synthesize) first")
    # The training readers' own policy ("reference": the reader defaults the dataset's manifest records).
    ds = SyntheticDataset(store.uri(RUN.dataset), uncertainty_filter="reference" if apply_filter else None,
                          endpoint_url=spec.storage.s3.endpoint_url, version=spec.synthesis.version)
    meta, tasks = ds.meta, ds.meta["tasks"]
    pick = list(ds.numpy_rows())
    data = DownstreamData(
        images=np.stack([r["image"] for r in pick]),
        segmentation=np.stack([r["segmentation"] for r in pick]) if "segmentation" in tasks else None,
        keypoints=np.stack([r["keypoints"] for r in pick]) if "keypoints" in tasks else None,
        depth=np.stack([r["depth"] for r in pick]) if "depth" in tasks else None,
    )
    return data, meta


def load_real(path: str | None, size: tuple[int, int], tasks: list[str], *, ids: list[str] | None = None,
              format: str = "folder", classes: str | None = None, split: str | None = None,
              seeds: str | None = None):
    """A labeled set as DownstreamData at `size` (same geometry as inversion: centre crop + resize).

    format/classes/split read a public layout (handsoff_ray/datasets/) in one of its class maps;
    format toy renders the toy faces of `seeds` at `size` (path unused).
    """
    from handsoff_ray.evaluation import DownstreamData
    from handsoff_ray.core.images import to_uint8
    from handsoff_ray.core.inversion import prepare_images
    from handsoff_ray.datasets.labeled_folder import open_labeled_set
    from handsoff_ray.core.label_alignment import align_labels

    if format == "folder":
        labeled = open_labeled_set(path, require=tuple(tasks))
    else:
        from handsoff_ray.datasets.public import open_public_set

        labeled = open_public_set(path, format, classes=classes, ids=ids, split=split, require=tuple(tasks),
                                  seeds=seeds, resize=tuple(size) if format == "toy" else None)
    samples = [labeled.load(i) for i in (ids or labeled.ids)]
    images = np.stack([s.image for s in samples])
    if tuple(images.shape[1:3]) != tuple(size):
        images = to_uint8(prepare_images(images, size))
    aligned = [align_labels(s, labeled.classes, size) for s in samples]
    return DownstreamData(
        images=images,
        segmentation=np.stack([a.segmentation for a in aligned]) if "segmentation" in tasks else None,
        keypoints=np.stack([a.keypoints for a in aligned]) if "keypoints" in tasks else None,
        depth=np.stack([a.depth for a in aligned]) if "depth" in tasks else None,
    )


def resolve_precision(name: str, device: str) -> str:
    """evaluation.precision -> "fp32" | "bf16"; auto is bf16 only where it is native (else it is emulated, slower)."""
    if name != "auto":
        return name
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def flip_pairs_by_name(names: list[str]) -> list[tuple[int, int]]:
    """Keypoints that swap under a horizontal flip, by name: left_eye <-> right_eye, mouth_left <-> mouth_right."""
    pairs = []
    for i, name in enumerate(names):
        if "left" in name and name.replace("left", "right") in names:
            pairs.append((i, names.index(name.replace("left", "right"))))
    return pairs


def _fit_one(job: dict) -> dict:
    """One downstream network: build, train, score (a process-pool job; only plain data crosses)."""
    from handsoff_ray.evaluation import build_downstream, evaluate_downstream, train_downstream

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    ev, progress = job["evaluation"], job.get("progress")
    model = build_downstream(ev["model"], num_classes=job["num_classes"], num_keypoints=job["num_keypoints"],
                             depth=job["depth"], backbone=ev["backbone"], pretrained_backbone=ev["pretrained_backbone"],
                             base_width=ev["unet_width"], seed=job["seed"])
    t0 = time.time()

    def callback(step: int, logs: dict) -> None:
        if progress is not None and "epoch" not in logs and step % 20 == 0:
            progress.put((job["key"], step))

    summary = train_downstream(model, job["train"], epochs=ev["epochs"], batch_size=ev["batch_size"], lr=ev["lr"],
                               seed=job["seed"], max_steps=ev["max_steps"], device=job["device"], sigma=job["sigma"],
                               seg_loss=ev["seg_loss"], lr_schedule=ev["lr_schedule"],
                               precision=resolve_precision(ev["precision"], job["device"]), augment=ev["augment"],
                               flip_pairs=job["flip_pairs"], callback=callback)
    scores = evaluate_downstream(model, job["test"], pck_alpha=ev["pck_alpha"], device=job["device"])
    return {**scores, "seed": job["seed"], "train_seconds": round(time.time() - t0, 1), "steps": summary.steps}


_AVERAGED = ("miou", "pck", "depth_rmse", "depth_abs_rel")


def _aggregate(runs: list[dict], n_train: int) -> dict:
    """Mean of each score over the seeds (per-class IoU too), its spread (max - min) and every run."""
    out: dict = {"train_images": n_train, "train_seeds": [r["seed"] for r in runs], "steps": runs[0]["steps"],
                 "train_seconds": round(sum(r["train_seconds"] for r in runs), 1)}
    for key in _AVERAGED:
        if key in runs[0]:
            vals = [float(r[key]) for r in runs]
            out[key] = sum(vals) / len(vals)
            out.setdefault("spread", {})[key] = max(vals) - min(vals)
    if "iou" in runs[0]:
        out["iou"] = [sum(r["iou"][c] for r in runs) / len(runs) for c in range(len(runs[0]["iou"]))]
    for key in ("num_images", "num_keypoints", "num_depth_pixels"):
        if key in runs[0]:
            out[key] = runs[0][key]
    out["runs"] = [{k: v for k, v in r.items() if k not in ("num_images", "num_keypoints", "num_depth_pixels")}
                   for r in runs]
    return out


def score_arms(arms: dict, test, spec: JobSpec, *, num_classes: int, num_keypoints: int, depth: bool,
               keypoint_names: list[str] | None = None, device: str = "cpu", workers: int = 1,
               label: str = "evaluate") -> dict[str, dict]:
    """Train `evaluation.train_seeds` downstream networks on each training set of `arms` ({name: data}) and
    score them on `test`: {name: mean scores, "spread", "runs"}.

    Every network gets the same architecture, steps, schedule and augmentation; only its training data and
    seed differ. workers > 1 trains that many networks at once in child processes of one torch thread each
    (two single-threaded trainings on 2 cores finish ~1.7x sooner than one after the other at 2 threads);
    results are the same as in-process on CPU (each network's randomness is its own seeded generator).
    """
    from handsoff_ray.evaluation import planned_steps
    from handsoff_ray.pipeline.progress import stage_progress

    ev = spec.evaluation
    jobs = []
    for name, train in arms.items():
        for k in range(ev.train_seeds):
            jobs.append({"key": (name, k), "train": train, "test": test, "seed": spec.seed + k,
                         "evaluation": ev.model_dump(), "num_classes": num_classes, "num_keypoints": num_keypoints,
                         "depth": depth, "device": device, "sigma": spec.label_generator.tasks.keypoints.sigma,
                         "flip_pairs": flip_pairs_by_name(list(keypoint_names or []))})
    # Steps per network: exact when max_steps decides (the toy spec), an upper bound otherwise.
    per_job = {job["key"]: planned_steps(len(job["train"]), epochs=ev.epochs, batch_size=ev.batch_size,
                                         max_steps=ev.max_steps) for job in jobs}
    if len(set(per_job.values())) > 1:
        # Unequal training lengths make the comparison unfair (a small set runs out of epochs first).
        fewest = min(per_job, key=per_job.get)
        print(f"handsoff: {label}: the {fewest[0]} network gets {per_job[fewest]} steps, others up to "
              f"{max(per_job.values())}; raise evaluation.epochs so that evaluation.max_steps decides for every "
              f"training set", file=sys.stderr, flush=True)
    results: dict = {}
    with stage_progress(label, total=sum(per_job.values()), unit="step", log_every_s=10) as bar:
        if workers <= 1 or len(jobs) == 1:
            done = 0
            for job in jobs:
                job["progress"] = _Inline(lambda key, step, base=done: bar.update_to(base + step))
                results[job["key"]] = _fit_one(job)
                done += per_job[job["key"]]
                bar.update_to(done)
        else:
            results = _fit_in_processes(jobs, per_job, bar, workers)
        bar.update_to(bar.total)
    return {name: _aggregate([results[(name, k)] for k in range(ev.train_seeds)], len(train))
            for name, train in arms.items()}


class _Inline:
    """The progress queue's put() for in-process jobs."""

    def __init__(self, fn):
        self.fn = fn

    def put(self, item) -> None:
        self.fn(*item)


def _fit_in_processes(jobs: list[dict], per_job: dict, bar, workers: int) -> dict:
    import multiprocessing as mp
    import queue
    import threading
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # fork after torch and Ray threads exist is unsafe
    with ctx.Manager() as manager, ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
        progress = manager.Queue()
        steps: dict = dict.fromkeys(per_job, 0)
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                try:
                    key, step = progress.get(timeout=0.5)
                except queue.Empty:
                    continue
                except (EOFError, OSError):
                    return
                steps[tuple(key)] = step
                bar.update_to(sum(steps.values()))

        thread = threading.Thread(target=drain, name="downstream-progress", daemon=True)
        thread.start()
        futures = {pool.submit(_fit_one, job | {"progress": progress, "threads": 1}): job["key"] for job in jobs}
        try:
            results = {key: f.result() for f, key in futures.items()}
        finally:
            stop.set()
            thread.join()
    return results


def train_and_score(train, test, spec: JobSpec, *, num_classes: int, num_keypoints: int, depth: bool,
                    keypoint_names: list[str] | None = None, device: str = "cpu", label: str = "evaluate") -> dict:
    """`score_arms` for one training set, in this process."""
    return score_arms({"train": train}, test, spec, num_classes=num_classes, num_keypoints=num_keypoints,
                      depth=depth, keypoint_names=keypoint_names, device=device, label=label)["train"]


class EvaluateStage(Stage):
    """One unit, always in this process: train the downstream network and score it (its own progress bar)."""

    name, progress_unit, ray = "evaluate", "step", None
    folder, output = RUN.eval, RUN.eval_report
    counts = ("test_images", "synthetic")

    def describe(self, spec) -> dict:
        root, _ = run_roots(spec)
        ev = spec.evaluation
        return {"enabled": ev.enabled, "hash": stage_hash(spec, self.name),
                "reads": source_of(ev.test_format, ev.test_path, ev.test_seeds),
                "writes": f"{root}/{RUN.eval_report}"}

    def prepare(self, ctx: RunContext) -> Plan:
        spec, store = ctx.spec, ctx.store
        if not spec.evaluation.test_path and spec.evaluation.test_format != "toy":
            raise UserError("evaluation.test_path is not set; point it at a labeled folder of real test images")
        done = store.read_json(RUN.eval_report)
        identity = evaluate_identity(ctx)
        if done is not None and done.get("identity") == identity:  # nothing to redo
            reason = "evaluate: nothing changed since the last evaluation"
            print(f"handsoff: {reason}", file=sys.stderr, flush=True)
            return Plan(done={**done, "reason": reason})
        reason = ("evaluate: first evaluation in this run" if done is None else
                  "evaluate: the synthetic dataset, the test set or the evaluation settings changed since the last "
                  "evaluation")
        return Plan(units=["train-and-score"], state={"reason": reason})

    def worker(self, ctx: RunContext):
        return lambda unit, report: _evaluate(ctx)

    def record(self, ctx: RunContext, plan: Plan, result: dict) -> None:
        plan.state["report"] = result

    def finish(self, ctx: RunContext, plan: Plan) -> dict:
        report = plan.state["report"]
        ctx.store.write_json(RUN.eval_report, report)  # written last: it marks the stage done for this spec
        print(f"handsoff: {plan.state['reason']}", file=sys.stderr, flush=True)
        return {"reason": plan.state["reason"], **report}


def evaluate_identity(ctx: RunContext) -> str:
    """What the report depends on: the evaluation settings, the version of the dataset it trains on (by its
    identity) and the test set's content."""
    from handsoff_ray.pipeline.digests import digest_of, test_set_digest

    return digest_of("evaluate", ctx.stage_hash("evaluate"), ctx.identities().synthesize, ctx.spec.synthesis.version,
                     test_set_digest(ctx.spec))


def _evaluate(ctx: RunContext) -> dict:
    """Train on the run's synthetic pairs, test on the evaluation set: the report."""
    spec, ev = ctx.spec, ctx.spec.evaluation
    train, meta = load_synthetic(ctx.store, spec, apply_filter=ev.use_uncertainty_filter)
    tasks = meta["tasks"]
    classes = meta["classes"]
    if ev.classes is not None and "segmentation" in tasks:
        # The paper trains and scores merged classes (faces: 19 -> 8); merge the synthetic labels here.
        import dataclasses

        from handsoff_ray.datasets.public import detect_format, merge_table

        fmt = spec.data.format if spec.data.format != "auto" else detect_format(spec.data.path)
        try:
            classes, table = merge_table(fmt, classes, ev.classes)
        except ValueError as err:
            raise UserError(f"evaluation.classes: {err}") from None
        seg = train.segmentation.numpy()
        train = dataclasses.replace(train, segmentation=np.where(seg == 255, 255, table[np.minimum(seg, len(table) - 1)]))
    test = load_real(ev.test_path, train.image_size, tasks, format=ev.test_format, classes=ev.classes,
                     split=ev.test_split, ids=ev.test_ids, seeds=ev.test_seeds)
    scores = train_and_score(
        train, test, spec, num_classes=len(classes) if "segmentation" in tasks else 0,
        num_keypoints=len(meta["keypoint_names"]) if "keypoints" in tasks else 0, depth="depth" in tasks,
        keypoint_names=meta.get("keypoint_names"), device=str(ctx.device),
    )
    return {"run_id": spec.run_id, "stage_hash": ctx.stage_hash("evaluate"), "identity": evaluate_identity(ctx),
            "test_images": len(test),
            "synthetic": scores, "classes": list(classes)}
