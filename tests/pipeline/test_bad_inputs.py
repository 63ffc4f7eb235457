"""A corpus of bad inputs, the way a new user would get them wrong: specs, labeled folders, checkpoints,
storage locations and synthetic datasets.

Every case runs one `handsoff` command in-process and asserts the contract of cli.py's docstring: exit code
2, one line on stderr that starts with `Error:` and names the culprit, no traceback, and nothing in the
workspace written, changed or lost (every file's bytes compared before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from handsoff_ray.cli import main


def _port() -> int:
    from tests.support import free_port

    return free_port()  # nothing listens there: a Ray head that is gone


class Workspace:
    """A tmp folder holding a good spec's inputs: labeled set, generator, output folder (and a dataset copy)."""

    def __init__(self, root: Path, generator: str, labeled: str):
        self.root = root
        self.labeled = root / "labeled"
        shutil.copytree(labeled, self.labeled)
        self.gen = root / "gen.safetensors"
        shutil.copyfile(generator, self.gen)
        self.base = {"name": "t", "generator": {"checkpoint": str(self.gen)},
                     "data": {"path": str(self.labeled), "limit": 4},
                     "storage": {"output": str(root / "runs")}, "resources": {"engine": "local"}}
        self.dataset: Path | None = None

    def spec(self, text: str | None = None, **sections) -> str:
        """Write a spec (raw text, or the good spec with sections merged in); returns its path."""
        path = self.root / "spec.yaml"
        if text is None:
            data = json.loads(json.dumps(self.base))
            for key, value in sections.items():
                data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
            text = yaml.safe_dump(data)
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return str(path)

    def file(self, rel: str, content: bytes | str = b"") -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def edit_keypoints(self, edit) -> None:
        doc = json.loads((self.labeled / "keypoints.json").read_text())
        edit(doc)
        (self.labeled / "keypoints.json").write_text(json.dumps(doc))

    def edit_manifest(self, edit) -> None:
        path = self.dataset / "_manifest.json"
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _bad_pickle(w: Workspace) -> str:
    """An NVlabs-style .pkl whose unpickling would run code (and leave a file behind if it did)."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {w.root / 'pwned'}",))

    return w.file("evil.pkl", pickle.dumps({"G_ema": Evil()}))


def _ids(w: Workspace) -> list[str]:
    return sorted(p.stem for p in (w.labeled / "images").iterdir())


def _first_image(w: Workspace, folder: str = "images") -> Path:
    return w.labeled / folder / f"{_ids(w)[0]}.png"


def _sixteen_bit_first_image(w: Workspace) -> None:
    from PIL import Image

    Image.new("I;16", Image.open(_first_image(w)).size).save(_first_image(w))


def _mask_with_unknown_class(w: Workspace) -> None:
    from PIL import Image

    Image.new("L", Image.open(_first_image(w)).size, 250).save(_first_image(w, "masks"))


def _broken_copy(w: Workspace) -> str:
    """A copy of the labeled set as a test set, with one image that is not a PNG."""
    shutil.copytree(w.labeled, w.root / "test")
    (w.root / "test" / "images" / f"{_ids(w)[0]}.png").write_bytes(b"junk")
    return str(w.root / "test")


def _run_of_another_spec(w: Workspace) -> None:
    w.file("runs/t/latents/_stage.json", json.dumps({"stage": "invert", "stage_hash": "0123456789abcdef"}))


# A billion laughs: nine levels of ten aliases, 10**9 strings once expanded, from 1 KB of YAML.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "name: *i\n"


def _toy_spec(w: Workspace, seeds: str, test_seeds: str | None = None) -> str:
    ev = {"evaluation": {"enabled": True, "test_format": "toy", "test_seeds": test_seeds}} if test_seeds else {}
    return w.spec(data={"format": "toy", "seeds": seeds, "limit": 16}, **ev)


def _copy_of_labeled(w: Workspace) -> str:
    """Another folder holding the labeled set's files byte for byte (as a test set)."""
    shutil.copytree(w.labeled, w.root / "test")
    return str(w.root / "test")


def _symlink_loop(w: Workspace) -> str:
    loop = w.root / "loop"
    os.symlink(loop, loop)
    return str(loop)


# (id, what the case sets up and which command it runs -> argv, text the one Error: line must contain)
SPECS = [
    ("duplicate-top-level-key", lambda w: ["validate", w.spec("name: a\nseed: 1\nname: b\n")],
     "spec.yaml:3: name: duplicate key (first on line 1)"),
    ("duplicate-nested-key", lambda w: ["validate", w.spec("inversion:\n  steps: 3\n  lr: 0.1\n  steps: 4\n")],
     "spec.yaml:4: inversion.steps: duplicate key (first on line 2)"),
    ("bool-for-int", lambda w: ["validate", w.spec("inversion:\n  steps: true\n")],
     "spec.yaml:2: inversion.steps: expected an integer, got true"),
    ("float-for-int", lambda w: ["validate", w.spec("synthesis:\n  num_samples: 2.0\n")],
     "spec.yaml:2: synthesis.num_samples: expected an integer, got 2.0"),
    ("string-for-int", lambda w: ["validate", w.spec("seed: '7'\n")], 'spec.yaml:1: seed: expected an integer, got "7"'),
    ("int-for-bool", lambda w: ["validate", w.spec("synthesis: {store_latent: 1}\n")],
     "synthesis.store_latent: expected true or false, got 1"),
    ("float-in-int-pair", lambda w: ["validate", w.spec(
        "label_generator:\n  tasks:\n    segmentation: {hidden: [8, 4.5]}\n")],
     "spec.yaml:3: label_generator.tasks.segmentation.hidden: expected an integer, got 4.5"),
    ("bool-for-int-through-set", lambda w: ["validate", w.spec(), "--set", "inversion.steps=true"],
     "inversion.steps: expected an integer, got true"),
    ("not-utf8", lambda w: ["validate", w.spec(b"name: t\n# caf\xe9\n")], "spec.yaml:2:6: not UTF-8 text (byte 0xe9)"),
    ("yaml-syntax", lambda w: ["validate", w.spec("name: t\ninversion: {steps: 3\n")],
     "spec.yaml:3:1: not valid YAML: expected ',' or '}'"),
    ("yaml-tab-indent", lambda w: ["validate", w.spec("inversion:\n\tsteps: 3\n")], "spec.yaml:2:1: not valid YAML"),
    ("unknown-key", lambda w: ["validate", w.spec("inversion:\n  stepz: 3\n")],
     "spec.yaml:2: inversion.stepz: unknown key"),
    ("not-a-mapping", lambda w: ["validate", w.spec("- a\n- b\n")], "a job spec must be a YAML mapping, got list"),
    ("spec-missing", lambda w: ["validate", str(w.root / "nope.yaml")], "nope.yaml: no such spec file"),
    ("spec-is-a-folder", lambda w: ["validate", str(w.root)], "is a directory"),
    ("out-of-range", lambda w: ["validate", w.spec("inversion:\n  steps: 0\n")],
     "spec.yaml:2: inversion.steps: Input should be greater than or equal to 1"),
    ("bad-set-syntax", lambda w: ["validate", w.spec(), "--set", "nokey"], "expected KEY=VALUE"),
    ("set-into-a-value", lambda w: ["validate", w.spec(), "--set", "name.x=1"], "--set name.x: name is not a section"),
    ("evaluation-without-test-path", lambda w: ["validate", w.spec(evaluation={"enabled": True})],
     "test_path is required when evaluation is enabled"),
    ("crop-rows-reversed", lambda w: ["validate", w.spec(generator={"crop_rows": [10, 2]})], "crop_rows must be"),
    ("unsupported-storage-scheme", lambda w: ["validate", w.spec(storage={"output": "gs://bucket/runs"})],
     "unsupported storage URI 'gs://bucket/runs'"),
    ("unknown-data-id", lambda w: ["validate", w.spec(data={"ids": ["nope"]})], "data.ids: 1 id(s) not in"),
    ("unknown-data-id-on-run", lambda w: ["run", w.spec(data={"ids": ["nope"]})], "data.ids: 1 id(s) not in"),
    ("checkpoint-missing", lambda w: ["validate", w.spec(generator={"checkpoint": str(w.root / "none.pt")})],
     "generator.checkpoint: no such file"),
    ("checkpoint-garbage-on-validate", lambda w: ["validate", w.spec(
        generator={"checkpoint": w.file("junk.safetensors", b"\x00" * 64)})], "junk.safetensors"),
    ("checkpoint-garbage-on-run", lambda w: ["run", w.spec(
        generator={"checkpoint": w.file("junk.pt", b"not a torch file")})], "junk.pt"),
    ("output-under-a-file", lambda w: ["run", w.spec(storage={"output": w.file("afile") + "/runs"})],
     "is not a writable folder"),
    ("run-id-of-another-spec", lambda w: (_run_of_another_spec(w), ["run", w.spec()])[1],
     "holds invert output of another spec"),
    ("broken-evaluation-set", lambda w: ["validate", w.spec(evaluation={"enabled": True, "test_path": _broken_copy(w)})],
     "test/images/"),
    ("toy-test-seeds-overlap-labeled", lambda w: ["validate", _toy_spec(w, "0-15", "10-19")],
     "evaluation.test_seeds 10-19 and data.seeds 0-15 share seeds 10-15"),
    ("test-set-is-the-labeled-folder", lambda w: ["validate", w.spec(evaluation={
        "enabled": True, "test_path": str(w.labeled)})], "evaluation.test_path: 4 test image(s) are labeled images"),
    ("test-set-copies-labeled-images", lambda w: ["validate", w.spec(evaluation={
        "enabled": True, "test_path": _copy_of_labeled(w)})], "has the same bytes as data.path's images/"),
    ("yaml-alias-bomb", lambda w: ["validate", w.spec(ALIAS_BOMB)], "spec.yaml: the YAML expands to more than"),
    ("seed-range-of-1e11-faces", lambda w: ["validate", _toy_spec(w, "0-99999999999")],
     "data.seeds: '0-99999999999' names 100,000,000,000 seeds; at most 1,000,000"),
    ("s3-without-bucket", lambda w: ["validate", w.spec(storage={"output": "s3:///runs"})],
     "storage.output: 's3:///runs' names no bucket"),
    ("s3-scheme-only", lambda w: ["validate", w.spec(storage={"output": "s3://"})], "storage.output: 's3://' names no bucket"),
    ("spec-empty", lambda w: ["validate", w.spec("")], "spec.yaml is empty; start from `handsoff spec defaults`"),
    ("spec-comments-only", lambda w: ["run", w.spec("# my spec\n\n# todo\n")], "spec.yaml is empty"),
    ("checkpoint-is-a-folder-on-validate", lambda w: ["validate", w.spec(generator={"checkpoint": str(w.labeled)})],
     "generator.checkpoint: " + "{labeled} is a folder; pass the checkpoint file"),
    ("checkpoint-is-a-folder-on-run", lambda w: ["run", w.spec(generator={"checkpoint": str(w.labeled)})],
     "generator.checkpoint: " + "{labeled} is a folder"),
    ("data-path-is-a-file", lambda w: ["validate", w.spec(data={"path": w.file("afile")})],
     "data.path: {root}/afile is a file, expected a labeled folder"),
    ("data-path-is-a-symlink-loop", lambda w: ["run", w.spec(data={"path": _symlink_loop(w)})],
     "data.path: {root}/loop is a symlink loop"),
    ("dead-ray-head-in-spec", lambda w: ["run", w.spec(resources={"engine": "ray", "ray_address": f"127.0.0.1:{_port()}"})],
     "resources.ray_address: no Ray cluster answers at 127.0.0.1:"),
]
if not torch.cuda.is_available():
    SPECS.append(("cuda-without-a-gpu", lambda w: ["run", w.spec(generator={"device": "cuda"})],
                  "generator.device is 'cuda' but no CUDA device is visible"))

LABELED = [
    ("image-not-a-png", lambda w: (_first_image(w).write_bytes(b"not a png"), ["data", "check", str(w.labeled)])[1],
     "images/"),
    ("mask-class-unknown", lambda w: (_mask_with_unknown_class(w), ["data", "check", str(w.labeled)])[1],
     "class ids [250] not in masks/classes.yaml"),
    ("mask-missing", lambda w: (_first_image(w, "masks").unlink(), ["data", "check", str(w.labeled)])[1],
     "has no mask"),
    ("image-16-bit", lambda w: (_sixteen_bit_first_image(w), ["data", "check", str(w.labeled)])[1],
     "is not an 8-bit image"),
    ("keypoint-visible-outside", lambda w: (w.edit_keypoints(
        lambda d: d["points"][_ids(w)[0]].__setitem__(0, [500, -40, 2])), ["data", "check", str(w.labeled)])[1],
     "at (500, -40) is marked visible but lies outside"),
    ("keypoints-not-json", lambda w: ((w.labeled / "keypoints.json").write_text('{"names": ['),
                                      ["data", "check", str(w.labeled)])[1], "keypoints.json: not valid JSON (line 1"),
    ("classes-yaml-missing", lambda w: ((w.labeled / "masks" / "classes.yaml").unlink(),
                                        ["data", "check", str(w.labeled)])[1], "classes.yaml"),
    ("depth-scale-negative", lambda w: ((w.labeled / "depth" / "depth.yaml").write_text("scale: -3\n"),
                                        ["data", "check", str(w.labeled)])[1], "scale must be a positive number"),
    ("labeled-folder-missing", lambda w: ["data", "check", str(w.root / "nowhere")], "does not exist"),
    ("labeled-problem-stops-run", lambda w: (_first_image(w, "masks").unlink(), ["run", w.spec()])[1],
     "has no mask"),
]

CHECKPOINTS = [
    ("checkpoint-garbage-pt", lambda w: ["checkpoint", "info", w.file("g.pt", b"garbage")], "g.pt"),
    ("checkpoint-empty-safetensors", lambda w: ["checkpoint", "info", w.file("e.safetensors")], "e.safetensors"),
    ("checkpoint-is-a-folder", lambda w: ["checkpoint", "info", str(w.root)], "is a folder; pass the checkpoint file"),
    ("checkpoint-does-not-exist", lambda w: ["checkpoint", "info", str(w.root / "none.pkl")], "no such file"),
    ("checkpoint-pickle-that-runs-code", lambda w: ["checkpoint", "info", _bad_pickle(w)], "evil.pkl"),
    ("convert-into-a-file", lambda w: ["checkpoint", "convert", str(w.gen), w.file("afile") + "/g.safetensors"],
     "cannot write"),
]

DATASETS = [
    ("dataset-missing", lambda w: ["inspect", str(w.root / "nowhere")], "no handsoff dataset here"),
    ("shard-truncated", lambda w: (os.truncate(w.dataset / "data" / "part-000001.parquet", 50),
                                   ["inspect", str(w.dataset)])[1], "data/part-000001.parquet: 50 bytes"),
    ("shard-deleted-and-success-gone", lambda w: (os.remove(w.dataset / "data" / "part-000002.parquet"),
                                                  os.remove(w.dataset / "_SUCCESS"),
                                                  ["export", str(w.dataset), "--format", "coco", "--out",
                                                   str(w.root / "x")])[2], "_SUCCESS: missing"),
    ("manifest-not-json", lambda w: ((w.dataset / "_manifest.json").write_text("{oops"),
                                     ["verify", str(w.dataset)])[1], "_manifest.json: not valid JSON"),
    ("manifest-rows-tampered", lambda w: (w.edit_manifest(lambda m: m["shards"]["0"].update(rows=99)),
                                          ["preview", str(w.dataset), "--out", str(w.root / "p.png")])[1],
     "part-000000.parquet: 4 rows, the manifest records 99"),
    ("manifest-sha-tampered", lambda w: (w.edit_manifest(lambda m: m["shards"]["1"].update(sha256="0" * 64)),
                                         ["verify", str(w.dataset)])[1], "part-000001.parquet: sha256"),
    ("shard-not-in-manifest", lambda w: (w.edit_manifest(lambda m: m["shards"].pop("2")),
                                         ["filter", str(w.dataset), "--out", str(w.root / "f"), "--keep", "0.5"])[1],
     "part-000002.parquet: not in the manifest"),
    ("export-into-non-empty-folder", lambda w: (w.file("mine/keep.txt", "mine"), [
        "export", str(w.dataset), "--format", "png-folder", "--out", str(w.root / "mine")])[1], "is not empty"),
    ("export-under-a-file", lambda w: ["export", str(w.dataset), "--format", "coco", "--out",
                                       w.file("afile") + "/x"], "afile"),
    ("filter-without-policy", lambda w: ["filter", str(w.dataset), "--out", str(w.root / "f"), "--policy", "none"],
     "filter needs a policy"),
]


OTHERS = [
    ("verify-not-a-dataset", lambda w: ["verify", str(w.labeled)],
     "{labeled} is not a handsoff dataset (no _manifest.json)"),
    ("verify-nothing-there", lambda w: ["verify", str(w.root / "nowhere")],
     "{root}/nowhere is not a handsoff dataset (no _manifest.json)"),
    ("inspect-s3-without-bucket", lambda w: ["inspect", "s3:///runs/t/dataset"], "'s3:///runs/t/dataset' names no bucket"),
]


def _cases(table, group):
    return [pytest.param(group, build, expected, id=f"{group}:{name}") for name, build, expected in table]


ALL = _cases(SPECS, "spec") + _cases(LABELED, "labeled") + _cases(CHECKPOINTS, "checkpoint") + \
    _cases(DATASETS, "dataset") + _cases(OTHERS, "other")


def test_the_corpus_is_large_enough():
    assert len(ALL) >= 40


def _assert_refused(w: Workspace, argv: list[str], expected: str) -> None:
    before = _snapshot(w.root)
    res = CliRunner().invoke(main, argv)
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 2, (argv, res.exit_code, res.output[-2000:], res.exc_info)
    assert "Traceback" not in res.output
    assert len(errors) == 1 and expected in errors[0], res.stderr
    assert not [line for line in res.stderr.splitlines() if line.startswith("  ")], res.stderr  # no problem list
    assert _snapshot(w.root) == before, "a refused command wrote, changed or deleted files"


@pytest.mark.parametrize("group, build, expected", ALL)
def test_bad_input_is_refused_cleanly(group, build, expected, request, tmp_path, tiny_generator_path,
                                      toy_labeled_path):
    w = Workspace(tmp_path, tiny_generator_path, toy_labeled_path)
    if group == "dataset":
        from handsoff_ray.pipeline.context import open_run

        spec, _ = request.getfixturevalue("finished")
        w.dataset = tmp_path / "dataset"
        shutil.copytree(open_run(spec).path("dataset"), w.dataset)
    argv = [str(a) for a in build(w)]
    _assert_refused(w, argv, expected.replace("{root}", str(tmp_path)).replace("{labeled}", str(w.labeled)))
    assert not (tmp_path / "pwned").exists()


class TestStorageCorpus:
    """Object stores that cannot be used: unreachable, unresolvable, refusing credentials, missing buckets."""

    @pytest.fixture
    def w(self, tmp_path, tiny_generator_path, toy_labeled_path, aws_env, monkeypatch):
        import handsoff_ray.pipeline.storage as storage

        monkeypatch.setattr(storage, "DEFAULT_RETRY_SECONDS", 1)  # readers' budget: keep the test short
        return Workspace(tmp_path, tiny_generator_path, toy_labeled_path)

    def test_inspect_on_an_unreachable_endpoint(self, w):
        from tests.support import free_port

        _assert_refused(w, ["inspect", "s3://b/runs/t/dataset", "--endpoint-url", f"http://127.0.0.1:{free_port()}"],
                        "rerun the same command once the object store is reachable")

    def test_verify_on_an_unresolvable_host(self, w):
        _assert_refused(w, ["verify", "s3://b/d", "--endpoint-url", "http://no-such-host.invalid:9000"],
                        "Could not resolve")

    def test_run_on_an_unreachable_endpoint(self, w):
        from tests.support import free_port

        spec = w.spec(storage={"output": "s3://b/runs", "s3": {"endpoint_url": f"http://127.0.0.1:{free_port()}",
                                                               "retry_seconds": 1}})
        _assert_refused(w, ["run", spec], "rerun the same command once the object store is reachable")

    def test_validate_with_rejected_credentials(self, w, denying_endpoint):
        spec = w.spec(storage={"output": "s3://b/runs", "s3": {"endpoint_url": denying_endpoint}})
        _assert_refused(w, ["validate", spec], "refused the credentials")

    def test_run_into_a_missing_bucket(self, w, s3_endpoint):
        spec = w.spec(storage={"output": "s3://no-such-bucket/runs", "s3": {"endpoint_url": s3_endpoint}})
        _assert_refused(w, ["run", spec, "--stages", "invert"], "bucket does not exist")


class TestEnvironmentCorpus:
    """What the environment names that cannot be used: a Ray head that is gone, a stdout that cannot be written."""

    @pytest.fixture
    def w(self, tmp_path, tiny_generator_path, toy_labeled_path):
        return Workspace(tmp_path, tiny_generator_path, toy_labeled_path)

    @pytest.mark.parametrize("command", ["run", "invert"])
    def test_dead_ray_head_fails_before_any_marker(self, w, monkeypatch, command):
        """`ray job submit` sets RAY_ADDRESS; a head that is gone used to be retried for minutes after the invert
        stage wrote its marker. The single-stage commands (no preflight) are refused the same way."""
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_port()}")
        _assert_refused(w, [command, w.spec(resources={"engine": "ray"})],
                        "RAY_ADDRESS: no Ray cluster answers at 127.0.0.1:")

    @pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
    @pytest.mark.parametrize("command", ["schema", "defaults"])
    def test_spec_discovery_into_a_full_disk(self, command):
        """`handsoff spec schema > /dev/full`: one line about the write, exit 2, no traceback."""
        import subprocess
        import sys

        with open("/dev/full", "w") as full:
            res = subprocess.run([sys.executable, "-m", "handsoff_ray", "spec", command], stdout=full,
                                 stderr=subprocess.PIPE, text=True, timeout=120,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: cannot write") and "No space left" in lines[0], lines


class TestTestSetSharesNoImage:
    """preflight's comparison of the evaluation set with the labeled set: refuses shared images, passes held-out ones."""

    def test_a_held_out_folder_passes(self, tmp_path, tiny_generator_path, toy_labeled_path):
        from handsoff_ray.config import load_spec
        from handsoff_ray.pipeline.preflight import preflight
        from handsoff_ray.datasets.toy import write_toy_labeled_set

        w = Workspace(tmp_path, tiny_generator_path, toy_labeled_path)
        write_toy_labeled_set(tmp_path / "test", seeds=range(100, 104), size=32)  # other faces, same size
        spec = load_spec(w.spec(evaluation={"enabled": True, "test_path": str(tmp_path / "test")}))
        assert preflight(spec, ("evaluate",)) == []

    def test_same_bytes_under_another_name_are_found_and_only_equal_sizes_are_read(self, tmp_path, monkeypatch):
        import hashlib as hl

        from handsoff_ray.pipeline.preflight import _same_files

        files = {name: tmp_path / name for name in ("a1", "a2", "b1", "b2", "b3")}
        for name, content in [("a1", b"one"), ("a2", b"two!"), ("b1", b"two!"), ("b2", b"owt"), ("b3", b"longer")]:
            files[name].write_bytes(content)
        read = []
        real = hl.file_digest
        monkeypatch.setattr(hl, "file_digest", lambda f, d: (read.append(os.path.basename(f.name)), real(f, d))[1])
        same = _same_files({"x": files["a1"], "y": files["a2"]}, {"p": files["b1"], "q": files["b2"], "r": files["b3"]})
        assert same == [("p", "y")]  # b2 has a1's size but other bytes
        assert "b3" not in read and sorted(read) == ["a1", "a2", "b1", "b2"]
