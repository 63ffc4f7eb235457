"""Inputs by content: what reruns when labeled files or the checkpoint change, shared artifacts, dataset versions.

    python -m pytest -q tests/pipeline/test_identity.py            # local engine (~1 min)
    python -m pytest -q tests/pipeline/test_identity.py -m ray     # the one Ray-engine case

Each test works on its own labeled folder (4 toy faces, a fifth kept aside to add) and its own run folder.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from handsoff_ray.core.pairs import sample_seed
from handsoff_ray.pipeline.context import RunContext, open_run
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.dataset.layout import VERSION_STRIDE
from handsoff_ray.pipeline.dataset.reader import SyntheticDataset
from handsoff_ray.pipeline.layout import ARTIFACTS, RUN
from handsoff_ray.pipeline.run import run_stage
from tests.pipeline.runs import label_generator_folder, latent_file
from tests.pipeline.runs import make_spec as _make_spec

STAGES = ("invert", "fit", "synthesize")
SHARDS = 3  # 10 pairs in shards of 4


@pytest.fixture(scope="module")
def five_faces(tmp_path_factory):
    from handsoff_ray.datasets.toy import write_toy_labeled_set

    root = tmp_path_factory.mktemp("five") / "faces"
    write_toy_labeled_set(root, seeds=range(5), size=32)
    return root


@pytest.fixture
def labeled(five_faces, tmp_path):
    """A labeled folder of faces 000000-000003; face 000004 waits in `aside` to be added."""
    root = tmp_path / "labeled"
    shutil.copytree(five_faces, root)
    aside = tmp_path / "aside"
    for part in ("images", "masks", "depth"):
        os.makedirs(aside / part)
        shutil.move(root / part / "000004.png", aside / part / "000004.png")
    kp = json.loads((root / "keypoints.json").read_text())
    (aside / "points.json").write_text(json.dumps(kp["points"].pop("000004")))
    (root / "keypoints.json").write_text(json.dumps(kp))
    return root


def add_aside(root) -> None:
    aside = root.parent / "aside"
    for part in ("images", "masks", "depth"):
        shutil.copy(aside / part / "000004.png", root / part / "000004.png")
    kp = json.loads((root / "keypoints.json").read_text())
    kp["points"]["000004"] = json.loads((aside / "points.json").read_text())
    (root / "keypoints.json").write_text(json.dumps(kp))


def edit_png(path, fn) -> None:
    with Image.open(path) as im:
        mode, a = im.mode, np.array(im)
    out = fn(a)
    (Image.fromarray(out, mode=mode) if mode in ("L", "P", "RGB") else Image.fromarray(out)).save(path)


def spec_for(tmp_path, generator, labeled, **sections):
    return _make_spec(tmp_path / "runs", generator, str(labeled), data={"path": str(labeled), "limit": None},
                      **sections)


def run_all(spec) -> dict:
    ctx = RunContext(spec)  # one context per `handsoff run`, as the CLI does
    return {s: run_stage(spec, s, engine="local", ctx=ctx) for s in STAGES}


def shard_bytes(spec, version: int = 0) -> dict[str, bytes]:
    store = open_run(spec)
    prefix = "part-" if not version else f"part-v{version}-"
    return {n: store.read_bytes(f"dataset/data/{n}") for n in store.list("dataset/data")
            if n.startswith(prefix) and (version or not n.startswith("part-v"))}


@pytest.fixture
def generator(tiny_generator_path, tmp_path):
    """A copy of the tiny generator that a test may replace in place."""
    path = tmp_path / "gen.safetensors"
    shutil.copy(tiny_generator_path, path)
    return str(path)


class TestWhatReruns:
    def test_nothing_changed_reruns_nothing(self, tmp_path, generator, labeled):
        spec = spec_for(tmp_path, generator, labeled)
        first = run_all(spec)
        assert first["invert"]["inverted_now"] == 4 and first["synthesize"]["shards_written_now"] == SHARDS
        before = shard_bytes(spec)
        again = run_all(spec)
        assert again["invert"]["inverted_now"] == 0 and again["fit"]["skipped"]
        assert again["synthesize"]["shards_written_now"] == 0 and shard_bytes(spec) == before
        assert again["invert"]["reason"] == "invert: nothing changed since the last inversion (4 images reused)"
        assert again["fit"]["reason"] == "fit: nothing changed since the last fit"
        assert again["synthesize"]["reason"].startswith("synthesize: nothing changed")

    def test_one_image_added_is_inverted_alone_then_fit_and_synthesis_rerun(self, tmp_path, generator, labeled):
        spec = spec_for(tmp_path, generator, labeled)
        run_all(spec)
        store = open_run(spec)
        kept = {i: open(latent_file(store, i), "rb").read() for i in ("000000", "000003")}
        add_aside(labeled)
        out = run_all(spec)
        assert out["invert"]["inverted_now"] == 1 and out["invert"]["images"] == 5
        assert "1 labeled image added since the last inversion" in out["invert"]["reason"]
        assert out["fit"]["reason"] == "fit: 1 labeled image added since the last fit; fitting 2 of 2 members"
        assert out["fit"]["images"] == 5 and not out["fit"]["skipped"]
        assert out["synthesize"]["shards_written_now"] == SHARDS
        assert "label generator was refitted" in out["synthesize"]["reason"]
        assert {i: open(latent_file(store, i), "rb").read() for i in kept} == kept  # the others: not redone

    def test_corrected_mask_refits_without_inverting(self, tmp_path, generator, labeled, capsys):
        spec = spec_for(tmp_path, generator, labeled)
        run_all(spec)
        edit_png(labeled / "masks" / "000002.png", lambda a: np.where(a == 1, 2, a).astype(a.dtype))
        out = run_all(spec)
        assert out["invert"]["inverted_now"] == 0  # the image is the same: its latent stands
        assert out["fit"]["reason"] == "fit: 1 labeled image changed since the last fit; fitting 2 of 2 members"
        assert out["synthesize"]["shards_written_now"] == SHARDS
        assert "handsoff: fit: 1 labeled image changed since the last fit" in capsys.readouterr().err

    def test_corrected_image_is_reinverted_alone(self, tmp_path, generator, labeled):
        spec = spec_for(tmp_path, generator, labeled)
        run_all(spec)
        edit_png(labeled / "images" / "000001.png", lambda a: (255 - a).astype(a.dtype))
        out = run_all(spec)
        assert out["invert"]["inverted_now"] == 1
        assert "1 labeled image changed" in out["invert"]["reason"] and not out["fit"]["skipped"]

    def test_one_image_removed_refits_on_the_rest(self, tmp_path, generator, labeled):
        spec = spec_for(tmp_path, generator, labeled)
        run_all(spec)
        for part in ("images", "masks", "depth"):
            os.remove(labeled / part / "000003.png")
        kp = json.loads((labeled / "keypoints.json").read_text())
        del kp["points"]["000003"]
        (labeled / "keypoints.json").write_text(json.dumps(kp))
        out = run_all(spec)
        assert out["invert"]["inverted_now"] == 0 and out["fit"]["images"] == 3
        assert out["fit"]["reason"].startswith("fit: 1 labeled image removed since the last fit")
        assert sorted(open_run(spec).read_json(RUN.latents_refs)["latents"]) == ["000000", "000001", "000002"]

    def test_replaced_checkpoint_reruns_everything(self, tmp_path, generator, labeled):
        from handsoff_ray.core.checkpoint import save_generator
        from handsoff_ray.core.stylegan2 import Generator
        from tests.conftest import TINY

        spec = spec_for(tmp_path, generator, labeled)
        run_all(spec)
        torch.manual_seed(1)
        save_generator(Generator(TINY), generator, metadata={"note": "another init at the same path"})
        out = run_all(spec)
        assert out["invert"]["inverted_now"] == 4
        assert out["fit"]["reason"].startswith("fit: the generator checkpoint changed since the last fit")
        assert out["synthesize"]["shards_written_now"] == SHARDS
        assert "checkpoint changed" in out["synthesize"]["reason"]

    def test_synthesize_refuses_a_label_generator_fitted_from_other_labels(self, tmp_path, generator, labeled):
        spec = spec_for(tmp_path, generator, labeled)
        run_all(spec)
        add_aside(labeled)
        with pytest.raises(UserError, match="label generator is stale: 1 labeled image added since the last fit"):
            run_stage(spec, "synthesize", engine="local")


# Every file a stage reads, and how to change its bytes (same name, same size where the format allows).
_CHANGES = {
    "image": lambda root, gen: edit_png(root / "images" / "000001.png", lambda a: (255 - a).astype(a.dtype)),
    "mask": lambda root, gen: edit_png(root / "masks" / "000001.png", lambda a: np.where(a == 1, 2, a).astype(a.dtype)),
    "keypoints.json": lambda root, gen: _nudge_keypoints(root),
    "depth": lambda root, gen: edit_png(root / "depth" / "000001.png", lambda a: (a + 7).astype(a.dtype)),
    "checkpoint": lambda root, gen: _replace_checkpoint(gen),
}


def _nudge_keypoints(root) -> None:
    kp = json.loads((root / "keypoints.json").read_text())
    kp["points"]["000001"][0][0] += 1.0
    (root / "keypoints.json").write_text(json.dumps(kp))


def _replace_checkpoint(path: str) -> None:
    from handsoff_ray.core.checkpoint import save_generator
    from handsoff_ray.core.stylegan2 import Generator
    from tests.conftest import TINY

    torch.manual_seed(2)
    save_generator(Generator(TINY), path, metadata={"note": "replaced"})


@pytest.mark.parametrize("changed", list(_CHANGES))
def test_no_output_is_reused_after_an_input_changed(tmp_path, generator, labeled, changed):
    """After one input's bytes change, every stage that reads it (directly or through an earlier stage)
    computes again, and synthesis refuses the label generator of the old bytes."""
    spec = spec_for(tmp_path, generator, labeled)
    run_all(spec)
    before = shard_bytes(spec)
    identities = {s: getattr(RunContext(spec).identities(), s) for s in STAGES}
    _CHANGES[changed](labeled, generator)
    now = RunContext(spec).identities()
    readers = STAGES if changed in ("image", "checkpoint") else ("fit", "synthesize")  # invert reads no label
    assert [s for s in readers if getattr(now, s) == identities[s]] == [], "an identity ignores the changed bytes"
    with pytest.raises(UserError, match="stale"):
        run_stage(spec, "synthesize", engine="local")
    inv = run_stage(spec, "invert", engine="local")
    assert inv["inverted_now"] == {"image": 1, "checkpoint": 4}.get(changed, 0)
    assert run_stage(spec, "fit", engine="local")["skipped"] is False
    assert run_stage(spec, "synthesize", engine="local")["shards_written_now"] == SHARDS
    assert shard_bytes(spec) != before


class TestSharedArtifacts:
    def test_another_run_id_reuses_latents_and_the_label_generator(self, tmp_path, generator, labeled):
        spec = spec_for(tmp_path, generator, labeled)
        run_all(spec)
        other = spec_for(tmp_path, generator, labeled, storage={"run_id": "second"})
        out = run_all(other)
        assert out["invert"]["inverted_now"] == 0 and "4 reused from the shared artifacts" in out["invert"]["reason"]
        assert out["fit"]["skipped"] and "reusing the label generator" in out["fit"]["reason"]
        assert shard_bytes(other) == shard_bytes(spec)  # the same inputs: the same pairs
        assert label_generator_folder(open_run(other)) == label_generator_folder(open_run(spec))
        from handsoff_ray.core.label_generator import load_label_generator
        from handsoff_ray.pipeline.outputs import label_generator_location

        where, rel = label_generator_location(open_run(other))  # what the demo and benchmarks load
        assert rel.startswith("label_generator/") and where.root.endswith("_artifacts")
        assert load_label_generator(where.path(rel)).ensemble_size == 2

    def test_a_spec_with_other_synthesis_settings_reuses_invert_and_fit(self, tmp_path, generator, labeled):
        run_all(spec_for(tmp_path, generator, labeled))
        other = spec_for(tmp_path, generator, labeled, storage={"run_id": "psi"}, synthesis={"truncation_psi": 0.5})
        out = run_all(other)
        assert out["invert"]["inverted_now"] == 0 and out["fit"]["skipped"]
        assert out["synthesize"]["shards_written_now"] == SHARDS


class TestVersions:
    def test_a_scheduled_version_costs_synthesis_only_and_never_repeats_a_sample(self, tmp_path, generator, labeled):
        spec = spec_for(tmp_path, generator, labeled)
        run_all(spec)
        v0 = shard_bytes(spec)
        nightly = spec_for(tmp_path, generator, labeled, synthesis={"version": 7})
        out = run_all(nightly)
        assert out["invert"]["inverted_now"] == 0 and out["fit"]["skipped"]
        assert out["synthesize"]["shards_written_now"] == SHARDS and out["synthesize"]["versions"] == [0, 7]
        assert out["synthesize"]["reason"] == "synthesize: version 7 is new; writing 3 shards"
        assert shard_bytes(spec) == v0  # the first batch is left as it was
        root = open_run(spec).uri("dataset")
        first = SyntheticDataset(root, uncertainty_filter=None, version=0)
        batch = SyntheticDataset(root, uncertainty_filter=None, version=7)
        both = SyntheticDataset(root, uncertainty_filter=None)
        ids0 = [r["sample_id"] for r in first.numpy_rows()]
        ids7 = [r["sample_id"] for r in batch.numpy_rows()]
        assert ids0 == list(range(10)) and ids7 == list(range(7 * VERSION_STRIDE, 7 * VERSION_STRIDE + 10))
        assert len(both) == 20 and both.versions == [0, 7]
        def seeds(ds):
            return {s for f in ds.files for s in ds.read_shard(f, ["seed"]).column("seed").to_pylist()}

        seeds0 = seeds(first)
        assert seeds0 == {sample_seed(spec.seed, i) for i in range(10)}  # the seeds of a run before versions
        assert len(seeds(batch)) == 10 and not seeds0 & seeds(batch)
        manifest = open_run(spec).read_json("dataset/_manifest.json")
        assert manifest["num_samples"] == 20 and sorted(manifest["versions"]) == ["0", "7"]
        card = open_run(spec).read_bytes("dataset/README.md").decode()
        assert "## Versions (batches)" in card and f"| 7 | 10 | {7 * VERSION_STRIDE}.." in card
        with pytest.raises(UserError, match=r"no version 3 in this dataset \(it holds versions \[0, 7\]\)"):
            SyntheticDataset(root, uncertainty_filter=None, version=3)
        again = run_all(nightly)  # a retried tick: verified, nothing written
        assert again["synthesize"]["shards_written_now"] == 0

    def test_verify_counts_every_version(self, tmp_path, generator, labeled):
        from handsoff_ray.pipeline.dataset.manifest import verify_dataset
        from handsoff_ray.pipeline.storage import resolve_filesystem

        run_all(spec_for(tmp_path, generator, labeled))
        spec = spec_for(tmp_path, generator, labeled, synthesis={"version": 2})
        run_all(spec)
        uri = open_run(spec).uri("dataset")
        fs, root = resolve_filesystem(uri)
        report = verify_dataset(fs, root, uri)
        assert report["ok"], report["problems"]
        assert report["rows"] == 20 and report["verified"] == 2 * SHARDS


def test_a_run_folder_from_before_content_identities_opens_and_is_redone(tmp_path, generator, labeled):
    """The layout of earlier versions (latents and the label generator in the run folder, a manifest without
    versions): readers open it; a stage run on it computes again, says why, and writes the same bytes."""
    from handsoff_ray.core.label_generator import load_label_generator
    from handsoff_ray.pipeline.outputs import label_generator_location
    from handsoff_ray.pipeline.outputs import read_latent

    spec = spec_for(tmp_path, generator, labeled)
    run_all(spec)
    store = open_run(spec)
    before = shard_bytes(spec)
    # Rewrite it as earlier versions left it.
    for i in store.read_json(RUN.latents_refs)["latents"]:
        shutil.copy(latent_file(store, i), store.path(RUN.legacy_latent(i)))
    shutil.copy(f"{label_generator_folder(store)}/label_generator.safetensors",
                store.path(RUN.legacy_label_generator_file))
    os.remove(store.path(RUN.latents_refs))
    os.remove(store.path(RUN.label_generator_ref))
    shutil.rmtree(store.sibling(ARTIFACTS.root).root)
    manifest = store.read_json("dataset/_manifest.json")
    del manifest["versions"]
    for e in manifest["shards"].values():
        del e["version"]
    store.write_json("dataset/_manifest.json", manifest)

    assert len(SyntheticDataset(store.uri("dataset"), uncertainty_filter=None, version=0)) == 10
    assert read_latent(store, "000002")[0].shape == (6, 32)
    lg_store, rel = label_generator_location(store)
    assert load_label_generator(lg_store.path(rel)).ensemble_size == 2

    out = run_all(spec)
    assert out["invert"]["inverted_now"] == 4
    assert "written before content identities" in out["invert"]["reason"]
    assert "written before content identities" in out["fit"]["reason"]
    assert "written before content identities" in out["synthesize"]["reason"]
    assert shard_bytes(spec) == before  # recomputed from the same inputs: the same bytes


@pytest.mark.ray
def test_ray_engine_inverts_only_the_added_image_and_refits(tmp_path, generator, labeled):
    import ray

    spec = spec_for(tmp_path, generator, labeled)
    run_all(spec)
    add_aside(labeled)
    ray_spec = spec_for(tmp_path, generator, labeled, resources={"engine": "ray", "num_workers": 1, "torch_threads": 1})
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    try:
        ctx = RunContext(ray_spec)
        inv = run_stage(ray_spec, "invert", ctx=ctx)
        fit = run_stage(ray_spec, "fit", ctx=ctx)
    finally:
        ray.shutdown()
    assert inv["inverted_now"] == 1 and "1 labeled image added" in inv["reason"]
    assert fit["reason"] == "fit: 1 labeled image added since the last fit; fitting 2 of 2 members"
    assert run_stage(spec, "synthesize", engine="local")["shards_written_now"] == SHARDS


class TestDigestCache:
    def test_a_file_is_hashed_once_until_its_size_or_mtime_changes(self, tmp_path, monkeypatch):
        import hashlib

        from handsoff_ray.pipeline import digests

        monkeypatch.setenv("HANDSOFF_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(digests, "_memo", {})
        calls = []
        real = hashlib.file_digest
        monkeypatch.setattr(hashlib, "file_digest", lambda f, name: calls.append(1) or real(f, name))
        path = tmp_path / "f.bin"
        path.write_bytes(b"a" * 100)
        first = digests.file_digest(str(path))
        assert first == hashlib.sha256(b"a" * 100).hexdigest() and len(calls) == 1
        digests._memo.clear()  # a new process: the JSON cache answers
        assert digests.file_digest(str(path)) == first and len(calls) == 1
        path.write_bytes(b"b" * 100)  # same size, new mtime
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        assert digests.file_digest(str(path)) == hashlib.sha256(b"b" * 100).hexdigest() and len(calls) == 2
