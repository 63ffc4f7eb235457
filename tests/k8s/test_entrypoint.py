"""jobs/entrypoint.py turns the RayJob's environment into `handsoff run` arguments."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helm.conftest import ROOT

spec = importlib.util.spec_from_file_location("entrypoint", ROOT / "jobs" / "entrypoint.py")
entrypoint = importlib.util.module_from_spec(spec)
spec.loader.exec_module(entrypoint)


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: faces\nseed: 5\n")
    return str(path)


def test_run_id_from_the_chart_and_ray_address_auto(spec_file):
    args = entrypoint.build_args(spec_file, ["--stages", "synthesize"], {"HANDSOFF_RUN_ID": "demo-handsoff-ray"})
    assert args == ["run", spec_file, "--set", "storage.run_id=demo-handsoff-ray", "--set",
                    "resources.ray_address=auto", "--stages", "synthesize"]


def test_raycronjob_child_adds_a_version_to_the_schedules_dataset(spec_file):
    """The child's trailing minute is the version; the run id is the schedule's, so every child adds a batch
    to one dataset and reuses its inversions and label generator; the spec's seed stands."""
    env = {"OWNER_NAME": "faces-weekly-29927807", "HANDSOFF_SEED_OFFSET": "from-run-id",
           "HANDSOFF_SCHEDULE": "faces-weekly"}
    args = entrypoint.build_args(spec_file, [], env)
    assert "storage.run_id=faces-weekly" in args and args[-1] == "synthesis.version=29927807"
    assert not any(a.startswith("seed=") for a in args)


def test_launcher_offset_without_schedule_keeps_the_run_id(spec_file):
    args = entrypoint.build_args(spec_file, [], {"HANDSOFF_RUN_ID": "r", "HANDSOFF_SEED_OFFSET": "7"})
    assert "storage.run_id=r" in args and args[-1] == "synthesis.version=7"


@pytest.mark.parametrize("env, message", [
    ({}, "no run id: set HANDSOFF_RUN_ID"),
    ({"HANDSOFF_RUN_ID": "plain", "HANDSOFF_SEED_OFFSET": "from-run-id"}, "ends in no number"),
    ({"HANDSOFF_RUN_ID": "r", "HANDSOFF_SEED_OFFSET": "soon"}, "must be an integer or from-run-id"),
    ({"HANDSOFF_RUN_ID": "r", "HANDSOFF_SEED_OFFSET": str(2**29 + 1)}, "above the largest dataset version"),
])
def test_missing_or_bad_identity_stops_with_one_line(spec_file, env, message):
    with pytest.raises(SystemExit, match=message):
        entrypoint.build_args(spec_file, [], env)


def test_train_gan_keeps_the_run_id_and_ray_address_and_trains_on_ray(spec_file):
    env = {"HANDSOFF_RUN_ID": "gan-job", "HANDSOFF_SEED_OFFSET": "7"}  # a version means nothing to train-gan
    args = entrypoint.build_args(spec_file, ["--max-minutes", "600"], env, "train-gan")
    assert args == ["train-gan", spec_file, "--engine", "ray", "--set", "storage.run_id=gan-job",
                    "--set", "resources.ray_address=auto", "--max-minutes", "600"]


def test_train_gan_arguments_are_what_the_cli_takes(tmp_path):
    from click.testing import CliRunner

    from handsoff_ray.cli import main as cli

    path = tmp_path / "gan.yaml"
    path.write_text(f"name: g\nstorage: {{output: {tmp_path}/out}}\n"
                    "gan: {data: {format: toy, seeds: 10000000-10000099, holdout: 10}}\n")
    args = entrypoint.build_args(str(path), ["--dry-run"], {"HANDSOFF_RUN_ID": "gan-job"}, "train-gan")
    args = args[:args.index("resources.ray_address=auto") - 1] + ["--dry-run"]  # no cluster to join here
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and "gan-job/gan" in res.output, res.output
