"""`handsoff demo`'s job spec and seed ranges. Running the demo itself takes minutes on Ray (`make demo`); here the
spec it runs is checked to be the shipped toy spec users copy, and bad seed ranges to fail before any compute."""

from pathlib import Path

import pytest

from handsoff_ray.config import load_spec, parse_spec
from handsoff_ray.demo import FULL, QUICK, demo_spec
from handsoff_ray.evaluation import planned_steps

SPEC = Path(__file__).parents[2] / "jobs" / "specs" / "toy.yaml"


def test_demo_spec_is_the_shipped_toy_spec_but_for_its_name():
    """Every section, those added later included, equals jobs/specs/toy.yaml's: what `make demo` runs is what
    users copy. Only the run's name differs."""
    shipped = load_spec(SPEC).model_dump()
    demo = parse_spec(demo_spec("./handsoff-demo", FULL)).model_dump()
    assert demo == shipped | {"name": "toy-demo"}
    assert demo["data"]["format"] == demo["evaluation"]["test_format"] == "toy"  # nothing on disk to prepare


@pytest.mark.parametrize("size", [FULL, QUICK], ids=["full", "quick"])
def test_every_arm_trains_for_max_steps(size):
    """HandsOff, baseline and oracle networks get the same optimiser steps: even the 16-image baseline
    (2 batches an epoch at batch 8) has epochs to spare. With epochs 1,000 it stopped at 2,000 of 2,400."""
    ev = parse_spec(demo_spec("./handsoff-demo", size)).evaluation
    for n_train in (16, size.n_oracle, size.n_synthetic):
        steps = planned_steps(n_train, epochs=ev.epochs, batch_size=ev.batch_size, max_steps=ev.max_steps)
        assert steps == ev.max_steps == size.downstream_steps


class TestSeedRanges:
    """`handsoff demo --labeled-seeds/--test-seeds/--oracle-seeds`: any disjoint ranges the GAN never saw."""

    def test_defaults_are_the_documented_ranges(self):
        from handsoff_ray.demo import QUICK, DemoSeeds

        full, quick = DemoSeeds().resolve(FULL), DemoSeeds().resolve(QUICK)
        assert (full.labeled, full.test, full.oracle) == (range(16), range(1_000_000, 1_000_500),
                                                          range(2_000_000, 2_002_000))
        assert (len(quick.test), len(quick.oracle)) == (100, 300)

    def test_other_ranges_reach_every_stage_of_the_spec(self):
        from handsoff_ray.demo import DemoSeeds

        seeds = DemoSeeds(range(100, 124), range(5_000, 5_050), range(7_000, 7_400))
        spec = parse_spec(demo_spec("./d", FULL, seeds=seeds))
        assert spec.data.seeds == "100-123" and spec.data.limit == 24
        assert spec.evaluation.test_seeds == "5000-5049"

    @pytest.mark.parametrize(("kw", "match"), [
        ({"test": range(10, 20)}, "--labeled-seeds 0-15 and --test-seeds 10-19 overlap"),
        ({"oracle": range(1_000_100, 1_000_200)}, "--test-seeds .* and --oracle-seeds .* overlap"),
        ({"oracle": range(9_999_990, 10_000_010)}, "within 0-9999999 .* toy GAN trained on seeds from 10,000,000"),
        ({"labeled": range(0)}, "give a non-empty range"),
    ])
    def test_overlapping_or_gan_seen_ranges_are_refused(self, kw, match):
        from handsoff_ray.demo import DemoSeeds

        with pytest.raises(ValueError, match=match):
            DemoSeeds(**kw).resolve(FULL)

    @pytest.mark.parametrize(("text", "expected"), [("0-15", range(16)), ("7", range(7, 8)), ("10-10", range(10, 11))])
    def test_parse_seed_range(self, text, expected):
        from handsoff_ray.demo import parse_seed_range

        assert parse_seed_range(text) == expected

    @pytest.mark.parametrize("text", ["a-b", "5-3", "1-2-3", ""])
    def test_parse_seed_range_rejects(self, text):
        from handsoff_ray.demo import parse_seed_range

        with pytest.raises(ValueError, match="seed range"):
            parse_seed_range(text)

    def test_cli_refuses_bad_ranges_before_any_compute(self, tmp_path):
        from click.testing import CliRunner

        from handsoff_ray.cli import main

        out = tmp_path / "demo"
        res = CliRunner().invoke(main, ["demo", "--out", str(out), "--test-seeds", "0-99"])
        assert res.exit_code == 2
        assert "--labeled-seeds 0-15 and --test-seeds 0-99 overlap" in res.output
        assert not out.exists()
