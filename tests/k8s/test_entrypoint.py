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


def test_raycronjob_child_name_gives_run_id_and_seed(spec_file):
    env = {"OWNER_NAME": "faces-weekly-29927807", "HANDSOFF_SEED_OFFSET": "from-run-id"}
    args = entrypoint.build_args(spec_file, [], env)
    assert "storage.run_id=faces-weekly-29927807" in args and args[-1] == f"seed={5 + 29927807}"


def test_launcher_seed_offset_wraps_into_the_seed_range(spec_file):
    args = entrypoint.build_args(spec_file, [], {"HANDSOFF_RUN_ID": "r", "HANDSOFF_SEED_OFFSET": str(2**31)})
    assert args[-1] == "seed=5"


@pytest.mark.parametrize("env, message", [
    ({}, "no run id: set HANDSOFF_RUN_ID"),
    ({"HANDSOFF_RUN_ID": "plain", "HANDSOFF_SEED_OFFSET": "from-run-id"}, "ends in no number"),
    ({"HANDSOFF_RUN_ID": "r", "HANDSOFF_SEED_OFFSET": "soon"}, "must be an integer or from-run-id"),
])
def test_missing_or_bad_identity_stops_with_one_line(spec_file, env, message):
    with pytest.raises(SystemExit, match=message):
        entrypoint.build_args(spec_file, [], env)
