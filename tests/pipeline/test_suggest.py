"""`handsoff suggest`: selection, pools that are never read for labels, resumable features, bad pools, a later round.

    python -m pytest -q tests/pipeline/test_suggest.py
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from handsoff_ray.core.selection import select_after_fit, select_kcenter, select_typical
from tests.pipeline.runs import copy_run, make_spec
from tests.support import private_ray_args

POOL_SEEDS = "4000000-4000039"


def _duplicate_heavy(seed: int = 0) -> tuple[torch.Tensor, int]:
    """200 near-copies of one image, then 20 distinct images spread far apart: (features, n_dup)."""
    g = torch.Generator().manual_seed(seed)
    dup = torch.zeros(200, 8) + 0.01 * torch.randn(200, 8, generator=g)
    distinct = 5.0 * torch.randn(20, 8, generator=g)
    return torch.cat([dup, distinct]), 200


class TestSelection:
    @pytest.mark.parametrize("method", ["typical", "kcenter"])
    def test_coverage_beats_a_duplicate_heavy_pool(self, method):
        x, n_dup = _duplicate_heavy()
        sel = select_typical(x, 5, seed=0) if method == "typical" else select_kcenter(x, 5)
        from_dups = sum(i < n_dup for i in sel.indices)
        # A uniform draw takes 5 * 200/220 ~ 4.5 near-copies; a selection that covers takes at most one.
        assert from_dups <= 1, sel.indices
        assert len(set(sel.indices)) == 5 and len(sel.why) == 5

    def test_deterministic_and_seeded(self):
        x, _ = _duplicate_heavy(1)
        assert select_typical(x, 6, seed=3).indices == select_typical(x, 6, seed=3).indices
        assert select_kcenter(x, 6).indices == select_kcenter(x, 6).indices

    def test_already_labeled_clusters_are_not_chosen_again(self):
        x, n_dup = _duplicate_heavy(2)
        sel = select_typical(x, 4, seed=0, already=x[:1])  # the duplicates' cluster is labeled already
        assert all(i >= n_dup for i in sel.indices), sel.indices

    def test_after_fit_prefers_unsure_and_far_and_spreads(self):
        # 2 and 3: a near-duplicate pair, far from the labeled image, the most unsure; 4: far elsewhere, a
        # little less unsure; 0, 1, 5: next to the labeled image, sure.
        x = torch.tensor([[0.0, 0], [0.1, 0], [5, 5], [5.02, 5], [-5, 5], [0, 0.2]])
        labeled = torch.tensor([[0.0, 0.05]])
        unc = torch.tensor([0.1, 0.2, 0.9, 0.89, 0.85, 0.3])
        sel = select_after_fit(x, labeled, unc, 2)
        assert len({2, 3} & set(sel.indices)) == 1 and 4 in sel.indices, sel.indices

    def test_budget_checked(self):
        with pytest.raises(ValueError, match="budget 5 must be between 1 and the pool size 3"):
            select_kcenter(torch.zeros(3, 2), 5)


def _toy_spec(tmp_path, **suggest):
    """A spec on the shipped 64 px toy generator (the pool is rendered at its resolution), local engine."""
    from handsoff_ray.config import parse_spec

    return parse_spec({"name": "sg", "generator": {"checkpoint": "toy"}, "data": {"format": "toy", "seeds": "0-3", "limit": 4},
                       "storage": {"output": str(tmp_path / "runs")},
                       "suggest": {"images_per_unit": 8, "out": str(tmp_path / "out"), **suggest},
                       "resources": {"engine": "local", "torch_threads": 1}}, source="test")


class TestToyPool:
    def test_outputs(self, tmp_path):
        from handsoff_ray.pipeline.suggest import suggest

        got = suggest(_toy_spec(tmp_path), pool={"format": "toy", "seeds": POOL_SEEDS}, budget=4)
        out = tmp_path / "out"
        table = pq.read_table(out / "suggestions.parquet").to_pylist()
        assert [r["rank"] for r in table] == [1, 2, 3, 4] and [r["id"] for r in table] == got.ids
        assert all(r["why"] and r["ref"] for r in table)
        assert sorted(p.name for p in (out / "labeled" / "images").iterdir()) == sorted(f"{i}.png" for i in got.ids)
        face = np.asarray(Image.open(out / "labeled" / "images" / f"{got.ids[0]}.png"))
        from handsoff_ray.toy.world import render_face

        assert np.array_equal(face, render_face(int(got.refs[0]), 64).image)  # the pool image itself, unchanged
        sheet = Image.open(out / "contact_sheet.png")
        assert sheet.width >= 4 * 64 and sheet.height > 64
        # The same request again: the same picks, from the stored features.
        assert suggest(_toy_spec(tmp_path), pool={"format": "toy", "seeds": POOL_SEEDS}, budget=4).ids == got.ids

    def test_another_request_does_not_replace_suggestions(self, tmp_path):
        from handsoff_ray.pipeline.errors import UserError
        from handsoff_ray.pipeline.suggest import suggest

        suggest(_toy_spec(tmp_path), pool={"format": "toy", "seeds": POOL_SEEDS}, budget=3)
        before = (tmp_path / "out" / "suggestions.parquet").read_bytes()
        with pytest.raises(UserError, match="holds suggestions of another request"):
            suggest(_toy_spec(tmp_path), pool={"format": "toy", "seeds": POOL_SEEDS}, budget=5)
        assert (tmp_path / "out" / "suggestions.parquet").read_bytes() == before

    def test_resume_after_a_killed_unit(self, tmp_path, monkeypatch):
        """A unit that dies leaves the parts written before it; the rerun computes only the rest, and the
        parts are the bytes of an uninterrupted run."""
        from handsoff_ray.core import selection
        from handsoff_ray.pipeline.suggest import suggest

        pool = {"format": "toy", "seeds": POOL_SEEDS}
        clean = suggest(_toy_spec(tmp_path / "clean"), pool=pool, budget=3)
        calls = []
        real = selection.image_descriptors

        def dying(lp, images):
            calls.append(len(images))
            if len(calls) == 3:
                raise KeyboardInterrupt("killed")
            return real(lp, images)

        monkeypatch.setattr(selection, "image_descriptors", dying)
        with pytest.raises(KeyboardInterrupt):
            suggest(_toy_spec(tmp_path / "killed"), pool=pool, budget=3)
        assert len(calls) == 3
        calls.clear()
        monkeypatch.setattr(selection, "image_descriptors", lambda lp, images: calls.append(len(images)) or real(lp, images))
        again = suggest(_toy_spec(tmp_path / "killed"), pool=pool, budget=3)
        assert sum(calls) == 40 - 2 * 8  # parts 0 and 1 were kept
        assert again.ids == clean.ids

        def parts(root):
            return {p.name: p.read_bytes() for p in root.glob("runs/_artifacts/pool_features/*/part-*.parquet")}

        assert parts(tmp_path / "killed") == parts(tmp_path / "clean") and len(parts(tmp_path / "clean")) == 5

    @pytest.mark.ray
    def test_ray_engine_writes_the_same_features(self, tmp_path):
        import ray

        from handsoff_ray.pipeline.suggest import suggest

        pool = {"format": "toy", "seeds": POOL_SEEDS}
        local = suggest(_toy_spec(tmp_path / "local"), pool=pool, budget=3)
        ray.init(**private_ray_args())
        try:
            remote = suggest(_toy_spec(tmp_path / "ray"), pool=pool, budget=3, engine="ray")
        finally:
            ray.shutdown()
        assert remote.ids == local.ids
        for root in ("local", "ray"):
            assert (tmp_path / root / "runs/_artifacts").exists()
        a = sorted((tmp_path / "local").glob("runs/_artifacts/pool_features/*/part-*.parquet"))
        b = sorted((tmp_path / "ray").glob("runs/_artifacts/pool_features/*/part-*.parquet"))
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b] and len(a) == 5


class TestPoolsNeverReadLabels:
    def test_labeled_folder_pool_reads_images_only(self, tmp_path, monkeypatch):
        from handsoff_ray.pipeline import pool as pool_mod
        from handsoff_ray.pipeline.suggest import suggest
        from handsoff_ray.datasets.toy import write_toy_labeled_set

        root = tmp_path / "pool"
        write_toy_labeled_set(root, seeds=range(100, 112), size=64)
        for p in list((root / "masks").glob("*.png")) + [root / "keypoints.json"]:
            p.write_bytes(b"not a label")  # any attempt to use them would fail loudly
        opened = []
        real = pool_mod._read
        monkeypatch.setattr(pool_mod, "_read", lambda fs, path: opened.append(path) or real(fs, path))
        got = suggest(_toy_spec(tmp_path), pool={"path": str(root)}, budget=3)
        assert opened and all("/images/" in p for p in opened), opened
        assert len(got.ids) == 3 and all(i.startswith("000") for i in got.ids)

    def test_parquet_pool_reads_the_image_column_only(self, tmp_path, monkeypatch):
        from handsoff_ray.pipeline.suggest import suggest
        from handsoff_ray.toy.world import render_batch

        b = render_batch(range(200, 212), 64)

        def png(a):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            return buf.getvalue()

        table = pa.table({"image": [{"bytes": png(im), "path": None} for im in b.images],
                          "segmentation": [b"garbage"] * 12, "name": [f"face{k}" for k in range(12)]})
        (tmp_path / "pq").mkdir()
        pq.write_table(table, tmp_path / "pq" / "part-0.parquet")
        read = []
        real = pq.read_table
        monkeypatch.setattr(pq, "read_table", lambda *a, **k: read.append(k.get("columns")) or real(*a, **k))
        got = suggest(_toy_spec(tmp_path, pool={"id_column": "name"}), pool={"path": str(tmp_path / "pq")}, budget=2)
        assert got.ids[0].startswith("face") and ["image"] in read
        assert all(cols is None or "segmentation" not in cols for cols in read)


class TestBadPools:
    @pytest.mark.parametrize("args, message", [
        (["--pool", "/nonexistent/pool"], "pool /nonexistent/pool: no such file or folder"),
        (["--pool", "s3:///nobucket"], "names no bucket"),
        (["--pool-seeds", "9-3"], "is reversed"),
        (["--pool", "EMPTY"], "no images (.png"),
        (["--pool", "NOCOL"], "has no column 'image'"),
        (["--pool-seeds", "0-2", "--budget", "5"], "suggest.budget 5 is more than the pool's 3 images"),
    ])
    def test_one_line_exit_2_nothing_written(self, tmp_path, args, message):
        from handsoff_ray.cli import main

        (tmp_path / "empty").mkdir()
        (tmp_path / "nocol").mkdir()
        pq.write_table(pa.table({"x": [1]}), tmp_path / "nocol" / "a.parquet")
        args = [str(tmp_path / "empty") if a == "EMPTY" else str(tmp_path / "nocol") if a == "NOCOL" else a for a in args]
        spec = tmp_path / "spec.yaml"
        spec.write_text(json.dumps({"name": "sg", "generator": {"checkpoint": "toy"},
                                    "data": {"format": "toy", "seeds": "0-3"},
                                    "storage": {"output": str(tmp_path / "runs")}, "resources": {"engine": "local"}}))
        res = CliRunner().invoke(main, ["suggest", str(spec), *args, "--out", str(tmp_path / "out")])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and message in lines[0], res.output
        assert not (tmp_path / "out").exists()

    def test_dry_run_computes_nothing(self, tmp_path):
        from handsoff_ray.pipeline.suggest import suggest

        plan = suggest(_toy_spec(tmp_path), pool={"format": "toy", "seeds": POOL_SEEDS}, budget=4, dry_run=True)
        assert plan["pool_images"] == 40 and plan["images_to_describe"] == 40 and plan["parts_to_write"] == 5
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob("runs/_artifacts/pool_features/*/part-*"))


def test_after_a_fit_inverts_only_a_shortlist(finished, tmp_path):
    """A later round on the tiny fitted run: labeled images are never suggested again, only
    shortlist x budget pool images are inverted, and every pick says how unsure the label generator is."""
    from handsoff_ray.pipeline.context import open_run
    from handsoff_ray.pipeline.layout import RUN
    from handsoff_ray.pipeline.suggest import suggest

    spec = copy_run(finished, tmp_path, suggest={"out": str(tmp_path / "out"), "shortlist": 2, "images_per_unit": 4})
    pool_dir = tmp_path / "pool"
    shutil.copytree(spec.data.path, pool_dir)  # the labeled images and two more, as one folder of images
    labeled_ids = sorted(open_run(spec).read_json(RUN.latents_refs)["latents"])
    got = suggest(spec, pool={"path": str(pool_dir)}, budget=1, after=open_run(spec).uri())
    assert len(got.ids) == 1 and got.ids[0] not in labeled_ids
    table = pq.read_table(tmp_path / "out" / "suggestions.parquet").to_pylist()
    assert table[0]["uncertainty"] >= 0 and "label generator unsure" in table[0]["why"]
    summary = json.loads((tmp_path / "out" / "suggest.json").read_text())
    assert summary["round"] == "after-fit"


def test_after_needs_a_fitted_run(tmp_path):
    from handsoff_ray.pipeline.errors import UserError
    from handsoff_ray.pipeline.suggest import suggest

    with pytest.raises(UserError, match="no fitted label generator there"):
        suggest(_toy_spec(tmp_path), pool={"format": "toy", "seeds": POOL_SEEDS}, budget=2, after=str(tmp_path / "runs/sg"))
    assert not (tmp_path / "out").exists()


def test_s3_pool(tmp_path, s3_endpoint, aws_env):
    """A folder of images on object storage (moto's S3 server) is a pool like a local one: same picks."""
    import boto3

    from handsoff_ray.config import parse_spec
    from handsoff_ray.pipeline.suggest import suggest
    from handsoff_ray.toy.world import render_batch

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    local = tmp_path / "local"
    local.mkdir()
    for seed, im in zip(range(300, 310), render_batch(range(300, 310), 64).images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        s3.put_object(Bucket="handsoff-test", Key=f"pool/{seed}.png", Body=buf.getvalue())
        (local / f"{seed}.png").write_bytes(buf.getvalue())
    raw = _toy_spec(tmp_path).model_dump(mode="json")
    raw["storage"]["s3"]["endpoint_url"] = s3_endpoint
    spec = parse_spec(raw, source="test")
    remote = suggest(spec, pool={"path": "s3://handsoff-test/pool"}, budget=3, out=str(tmp_path / "o1"))
    here = suggest(spec, pool={"path": str(local)}, budget=3, out=str(tmp_path / "o2"))
    assert remote.ids == here.ids and len(remote.ids) == 3
    assert (tmp_path / "o1" / "labeled" / "images" / f"{remote.ids[0]}.png").read_bytes() == \
        (local / f"{remote.ids[0]}.png").read_bytes()
