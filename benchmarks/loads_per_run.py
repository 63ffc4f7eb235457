"""How often one `handsoff run` (invert, fit, synthesize; local engine) loads the generator and opens the
labeled set, on a tiny toy spec. Issue 12 took these from 5 loads and 6 opens to 1 and 1.

    python benchmarks/loads_per_run.py          # {"generator_loads": 1, "labeled_set_opens": 1, "seconds": ...}

Counts, not times: each load of a 1024 px generator is seconds and each open of a labeled set decodes and
checks every image, so on real data these are the repeated costs a run should not pay.
"""

from __future__ import annotations

import json
import tempfile
import time

import yaml
from click.testing import CliRunner


def main() -> None:
    import handsoff_ray.core.checkpoint as checkpoint
    import handsoff_ray.pipeline.labeled as labeled
    from handsoff_ray.cli import main as cli

    counts = {"generator_loads": 0, "labeled_set_opens": 0}
    real_load, real_open = checkpoint.load_generator, labeled.open_spec_labeled_set

    def load(*a, **k):
        counts["generator_loads"] += 1
        return real_load(*a, **k)

    def open_set(*a, **k):
        counts["labeled_set_opens"] += 1
        return real_open(*a, **k)

    checkpoint.load_generator, labeled.open_spec_labeled_set = load, open_set
    with tempfile.TemporaryDirectory() as d:
        spec = {"name": "loads", "generator": {"checkpoint": "toy"}, "data": {"format": "toy", "seeds": "0-3"},
                "inversion": {"steps": 2, "batch_size": 2},
                "label_generator": {"ensemble_size": 2, "max_steps": 5, "batch_pixels": 64},
                "synthesis": {"num_samples": 4, "shard_size": 2, "batch_size": 2},
                "storage": {"output": d}, "resources": {"engine": "local", "torch_threads": 1},
                "evaluation": {"enabled": False}}
        with open(f"{d}/spec.yaml", "w") as f:
            yaml.safe_dump(spec, f)
        t0 = time.time()
        res = CliRunner().invoke(cli, ["run", f"{d}/spec.yaml", "--stages", "invert,fit,synthesize"])
        assert res.exit_code == 0, res.output
    print(json.dumps({**counts, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
