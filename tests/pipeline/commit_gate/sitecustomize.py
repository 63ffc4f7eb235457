"""Holds the Ray actors' shard commits at a known point, so a fault test kills or interrupts mid-run for certain.

Python imports `sitecustomize` at start-up from the first folder on sys.path that has one, so every process
started with this folder on PYTHONPATH loads this file, the Ray workers a driver starts included (they inherit
its environment). With HANDSOFF_TEST_COMMIT_GATE=<folder> set, in a Ray worker:

- the first HANDSOFF_TEST_FREE_COMMITS shard commits (counted over all workers: one token file each) go through;
- every later shard is written whole to its hidden temporary file; then the worker writes <folder>/held-<pid>
  and waits, before the rename that would commit the shard, for as long as <folder>/hold exists.

So with `hold` present a run commits exactly that many shards and then every actor stops mid-commit, holding a
`.part-*.tmp`; deleting `hold` lets the run go on. Nothing in the package knows about this.
"""

import os
import sys

GATE = os.environ.get("HANDSOFF_TEST_COMMIT_GATE")
_HOLD_LIMIT_S = 600  # a worker orphaned while held gives up waiting instead of living on


def _take_free_commit(gate: str, free: int) -> bool:
    for i in range(free):
        try:
            os.close(os.open(os.path.join(gate, f"commit-{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            continue
    return False


def _install(gate: str, free: int) -> None:
    import time

    from handsoff_ray.pipeline.storage import RunStore

    commit = RunStore._commit

    def gated_commit(self, rel, write):
        if not rel.startswith("dataset/data/part-"):
            return commit(self, rel, write)

        def write_then_wait(stream):
            write(stream)
            if _take_free_commit(gate, free):
                return
            open(os.path.join(gate, f"held-{os.getpid()}"), "w").close()
            deadline = time.monotonic() + _HOLD_LIMIT_S
            while os.path.exists(os.path.join(gate, "hold")) and time.monotonic() < deadline:
                time.sleep(0.05)

        return commit(self, rel, write_then_wait)

    RunStore._commit = gated_commit


if GATE and sys.argv and sys.argv[0].endswith("default_worker.py"):  # Ray's Python worker processes only
    _install(GATE, int(os.environ.get("HANDSOFF_TEST_FREE_COMMITS", "0")))
