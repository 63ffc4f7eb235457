"""Progress: one JSON line per event with rate and ETA in logs, a tqdm bar on a terminal, on every engine."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime

from handsoff_ray.pipeline.progress import StageProgress, stage_progress, watch
from handsoff_ray.pipeline.context import open_run
from handsoff_ray.pipeline.run import run_stage
from tests.pipeline.runs import copy_run as _copy_of
from tests.pipeline.runs import label_generator_folder, latent_file


def _events(err: str, stage: str) -> list[dict]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("msg") == stage]


class TestStageProgress:
    def test_logs_one_line_per_event_with_rate_and_eta(self, capsys):
        with stage_progress("invert", total=4, unit="step", interactive=False) as bar:
            for done in (1, 2, 2, 4):  # a repeated count is no new event
                bar.update_to(done, shard=done)
        events = _events(capsys.readouterr().err, "invert")
        assert [e["done"] for e in events] == [1, 2, 4]
        assert all(e["total"] == 4 and e["unit"] == "step" and e["rate_per_s"] > 0 for e in events)
        assert events[-1]["eta_s"] == 0 and events[0]["eta_s"] >= 0
        assert datetime.fromisoformat(events[0]["time"]).tzinfo is not None  # ISO 8601, not epoch floats

    def test_throttled_log_still_reports_the_end(self, capsys):
        bar = StageProgress("evaluate", total=100, unit="step", interactive=False, log_every_s=3600)
        for step in range(1, 101):
            bar.update_to(step)
        assert [e["done"] for e in _events(capsys.readouterr().err, "evaluate")] == [1, 100]

    def test_terminal_gets_a_tqdm_bar(self, capsys):
        with stage_progress("fit", total=3, unit="member", interactive=True) as bar:
            bar.update_to(3)
        err = capsys.readouterr().err
        assert "fit" in err and "3/3" in err and "member" in err and not _events(err, "fit")

    def test_watch_polls_a_count_while_the_block_runs(self, capsys):
        count, seen = [0], threading.Event()

        def poll() -> int:
            count[0] += 1
            if count[0] >= 2:
                seen.set()
            return min(count[0], 5)

        bar = StageProgress("fit", total=5, unit="member", interactive=False)
        with watch(poll, bar, interval_s=0.01):
            assert seen.wait(30)  # polled while the block is still running
        assert bar.done >= 2


def test_local_engine_reports_inversion_steps_and_fitted_members(finished, tmp_path, capsys):
    spec = _copy_of(finished, tmp_path)
    store = open_run(spec)
    lg_folder = label_generator_folder(store)
    os.remove(latent_file(store, "000001"))
    for name in ["label_generator.safetensors", "members/member-000.safetensors"]:
        os.remove(f"{lg_folder}/{name}")
    capsys.readouterr()
    run_stage(spec, "invert", engine="local")
    run_stage(spec, "fit", engine="local")
    err = capsys.readouterr().err
    invert = _events(err, "invert")
    assert invert and invert[-1]["done"] == invert[-1]["total"] == spec.inversion.steps  # 1 image x its steps
    assert [e["done"] for e in _events(err, "fit")] == [1]  # one member was missing


def test_ray_is_quiet_unless_verbose(monkeypatch):
    import logging

    from handsoff_ray.pipeline import progress

    for var in ("RAY_LOGGER_LEVEL", "RAY_BACKEND_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(progress, "_quiet", False)
    progress.quiet_ray(verbose=True)
    assert "RAY_LOGGER_LEVEL" not in os.environ
    progress.quiet_ray(verbose=False)
    assert os.environ["RAY_LOGGER_LEVEL"] == "error" and os.environ["RAY_BACKEND_LOG_LEVEL"] == "fatal"

    from ray.data import DataContext

    ctx = DataContext.get_current()
    monkeypatch.setattr(ctx, "enable_progress_bars", True)
    level = logging.getLogger("ray.data").level
    try:
        progress.quiet_ray_data()
        assert ctx.enable_progress_bars is False and logging.getLogger("ray.data").level == logging.ERROR
    finally:
        logging.getLogger("ray.data").setLevel(level)
