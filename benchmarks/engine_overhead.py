"""Ray's start-up cost on a tiny run: the same jobs/specs/toy.yaml, tiny step counts, local vs ray engine.

    python benchmarks/engine_overhead.py --json        # ~3 min on 2 cores; prints one JSON object

Each engine runs `handsoff run` in a fresh process and output folder (what a user's first run pays),
then once more with nothing left to do (every stage skips; no Ray starts). Reported per engine: wall
seconds of the whole command, and each stage's `seconds` from its JSON line. The work is the same
(byte-identical outputs, tests/pipeline/test_stages.py), so ray minus local is Ray's overhead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["inversion.steps=4", "data.limit=2", "label_generator.ensemble_size=2", "label_generator.max_steps=10",
        "synthesis.num_samples=8", "synthesis.shard_size=4", "evaluation.max_steps=4",
        "evaluation.test_seeds=1000000-1000007", "resources.torch_threads=1"]


def run_once(engine: str, output: str) -> dict:
    sets = [a for s in [*TINY, f"resources.engine={engine}", f"storage.output={output}"] for a in ("--set", s)]
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "handsoff_ray", "run", str(ROOT / "jobs/specs/toy.yaml"), *sets],
                         capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"{engine}: exit {res.returncode}\n{res.stderr[-3000:]}")
    stages = {r["stage"]: r["seconds"] for r in map(json.loads, res.stdout.splitlines())}
    return {"wall_s": round(wall, 1), "stage_s": stages}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output too)")
    p.parse_args(argv)
    out = {}
    for engine in ("local", "ray"):
        with tempfile.TemporaryDirectory() as d:
            out[engine] = {"first": run_once(engine, d), "rerun_nothing_to_do": run_once(engine, d)}
    out["ray_minus_local_first_s"] = round(out["ray"]["first"]["wall_s"] - out["local"]["first"]["wall_s"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
