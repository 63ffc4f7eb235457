"""The demo's spec is the shipped toy spec: what `make demo` runs is what users copy."""

from pathlib import Path

from handsoff_ray.config import load_spec, parse_spec
from handsoff_ray.toy.demo import FULL, demo_spec

SPEC = Path(__file__).parents[2] / "jobs" / "specs" / "toy.yaml"


def test_demo_runs_the_shipped_toy_spec():
    shipped = load_spec(SPEC)
    demo = parse_spec(demo_spec("./handsoff-demo", FULL))
    for section in ("seed", "generator", "data", "inversion", "label_generator", "synthesis", "evaluation"):
        assert getattr(demo, section) == getattr(shipped, section), section
    assert demo.data.format == demo.evaluation.test_format == "toy"  # nothing on disk to prepare or upload
