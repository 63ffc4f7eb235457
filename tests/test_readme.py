"""Every command of README.md and jobs/README.md runs, in order, on a fresh clone.

The commands are read from the files' ```bash blocks, so a README change that breaks one fails here. They
run as written, in a folder holding only what a clone holds (jobs/), with two kinds of change that keep
this test at tens of seconds: commands on jobs/specs/toy.yaml get `--set` options with tiny step counts
(`tests.support.TINY_TOY_SPEC`, local engine), and `train-gan` gets a tiny network and a few images.
`handsoff` commands run in this process (click's runner), which is what the console script calls.
"""

from __future__ import annotations

import shlex
import shutil

import pytest
from click.testing import CliRunner

from handsoff_ray.cli import main
from tests.support import ROOT, TINY_TOY_SPEC, readme_commands, tiny_set_options

# Commands proven elsewhere, with where; anything else in a README must run here.
ELSEWHERE = {
    "make demo": "the demo's wrapper (`handsoff demo`, minutes); its spec is jobs/specs/toy.yaml (tests/toy)",
    "make test": "this test suite",
    "ray start": "tests/jobs/test_ray_job_submit.py starts a head the same way",
    "ray job submit": "tests/jobs/test_ray_job_submit.py runs this command from jobs/README.md",
}
SPEC_COMMANDS = {"validate", "run", "invert", "fit", "synthesize", "evaluate", "suggest"}
# train-gan: a tiny network for a few steps, whatever the spec or --toy asks for
TINY_GAN = {"gan.resolution": 16, "gan.channel_base": 64, "gan.channel_max": 16, "gan.style_dim": 16, "gan.n_mlp": 2,
            "gan.batch_size": 2, "gan.kimg": 0.004, "gan.checkpoint_kimg": 0.002, "gan.kid.images": 4,
            "gan.kid.every_kimg": 0, "resources.torch_threads": 1}
TINY_GAN_DATA = {"gan.data.seeds": "10000000-10000009", "gan.data.holdout": 2}


def _walk() -> list[tuple[str, str]]:
    return [(name, c) for name in ("README.md", "jobs/README.md") for c in readme_commands(ROOT / name)]


def _args(command: str) -> tuple[list[str], str | None]:
    """The handsoff arguments of a README command, and the file its stdout is redirected to (`> FILE`)."""
    words = shlex.split(command)
    target = None
    if ">" in words:
        words, target = words[: words.index(">")], words[words.index(">") + 1]
    if words[:3] == ["python", "-m", "handsoff_ray"]:
        words = ["handsoff", *words[3:]]
    assert words[0] == "handsoff", f"{command!r}: not a handsoff command; run it here or add it to ELSEWHERE"
    args = words[1:]
    if args[0] in SPEC_COMMANDS:
        args += tiny_set_options(TINY_TOY_SPEC)
    if args[0] == "train-gan":
        tiny = TINY_GAN if "--toy" in args else {**TINY_GAN, **TINY_GAN_DATA}
        args += [f"--set={k}={v}" for k, v in tiny.items()]
    return args, target


def test_the_readmes_name_the_commands_walked():
    names = [c for _, c in _walk()]
    assert "handsoff run jobs/specs/toy.yaml" in names and any(c.startswith("ray job submit") for c in names)


@pytest.mark.slow
def test_every_readme_command_runs_in_order_on_a_fresh_clone(tmp_path, monkeypatch):
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "jobs", clone / "jobs")  # what a clone holds that the commands read
    monkeypatch.chdir(clone)
    ran = []
    for source, command in _walk():
        if any(command.startswith(prefix) for prefix in ELSEWHERE):
            continue
        args, target = _args(command)
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, f"{source}: `{command}` exited {res.exit_code}:\n{res.output[-3000:]}"
        if target:
            (clone / target).write_text(res.stdout)
        ran.append(command)
    assert len(ran) >= 15, ran
    assert (clone / "handsoff-demo" / "runs" / "toy" / "eval" / "report.json").is_file()
    assert (clone / "synth" / "images").is_dir() and (clone / "generator.safetensors").is_file()
    assert "inversion:" in (clone / "my-spec.yaml").read_text()
