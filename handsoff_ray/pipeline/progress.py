"""Progress of the long stages on every engine: a live tqdm bar on a terminal, one JSON line per event
in logs (a Ray job's driver log, a pod's stdout), both with rate and ETA.

    with stage_progress("invert", total=16, unit="image") as bar:
        bar.update_to(8)                      # 8 of 16 images done

    # Ray Train / Ray Data workers write to storage; the driver counts what has been written:
    with stage_progress("fit", total=10, unit="member") as bar, watch(count_members, bar):
        trainer.fit()

Counting outputs in storage (rather than asking workers to report) gives the same events whichever
engine, worker count or restart produced them. Progress goes to stderr; stdout keeps one JSON result
line per stage. Ray's own progress bars and log lines stay quiet unless `quiet_ray(verbose=True)`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

__all__ = ["StageProgress", "stage_progress", "watch", "log_event", "now_iso", "quiet_ray", "quiet_ray_data"]

_quiet = False  # set by quiet_ray(verbose=False); read by quiet_ray_data


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def log_event(msg: str, **fields) -> None:
    """One JSON object per line on stderr, timestamped in ISO 8601: readable by people and log shippers."""
    print(json.dumps({"time": now_iso(), "msg": msg, **fields}, default=str), file=sys.stderr, flush=True)


class StageProgress:
    """`done` out of `total` units of one stage; see the module docstring."""

    def __init__(self, stage: str, total: int, unit: str, *, interactive: bool | None = None,
                 log_every_s: float = 0.0, started: float | None = None):
        self.stage, self.total, self.unit = stage, int(total), unit
        # `started` (time.monotonic()) when the work began before the total was known
        self.done, self.t0 = 0, time.monotonic() if started is None else started
        self._log_every, self._last_log = log_every_s, float("-inf")
        self._lock = threading.Lock()
        if interactive is None:
            interactive = sys.stderr.isatty()
        self._bar = None
        if interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=stage, unit=unit, file=sys.stderr, dynamic_ncols=True)
            self._bar.start_t -= time.monotonic() - self.t0 if started is not None else 0.0

    def rate_and_eta(self) -> tuple[float | None, float | None]:
        elapsed = time.monotonic() - self.t0
        if self.done <= 0 or elapsed <= 0:
            return None, None
        rate = self.done / elapsed
        return rate, max(self.total - self.done, 0) / rate

    def update_to(self, done: int, **fields) -> None:
        """Record that `done` units are finished (a count, not an increment); extra fields go to the log line."""
        with self._lock:
            done = min(int(done), self.total)
            if done <= self.done:
                return
            self.done = done
            if self._bar is not None:
                self._bar.update(done - self._bar.n)
                if fields:
                    self._bar.set_postfix(fields, refresh=False)
                return
            now = time.monotonic()
            if done < self.total and now - self._last_log < self._log_every:
                return
            self._last_log = now
            rate, eta = self.rate_and_eta()
            log_event(self.stage, done=done, total=self.total, unit=self.unit,
                      rate_per_s=None if rate is None else round(rate, 3),
                      eta_s=None if eta is None else round(eta, 1), **fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def stage_progress(stage: str, total: int, unit: str, **kw) -> Iterator[StageProgress]:
    bar = StageProgress(stage, total, unit, **kw)
    try:
        yield bar
    finally:
        bar.close()


@contextmanager
def watch(count: Callable[[], int], bar: StageProgress, *, interval_s: float = 2.0) -> Iterator[None]:
    """While the block runs (e.g. a Ray Train fit), poll `count()` every interval_s and report it to `bar`;
    once more at the end. A failing poll (a storage hiccup) is skipped, never raised into the block."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval_s):
            try:
                bar.update_to(count())
            except Exception:  # noqa: BLE001 - progress must never break the stage it watches
                pass

    thread = threading.Thread(target=poll, name=f"progress-{bar.stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    bar.update_to(count())


def quiet_ray(*, verbose: bool = False) -> None:
    """Keep Ray's own progress bars and info/warning lines out of the user's terminal unless `verbose`.

    Call it before Ray is imported and started: its log levels are read from the environment then
    (Python's INFO "Started a local Ray instance", the C++ core's harmless error-level PreemptionWatcher
    line on each Ray Train fit); workers inherit the environment. Ray Data is quieted where it is used
    (`quiet_ray_data`). Ray's logs still go to its session folder (/tmp/ray/session_latest/logs), so
    nothing is lost for debugging.
    """
    global _quiet
    _quiet = not verbose
    if verbose:
        return
    os.environ.setdefault("RAY_LOGGER_LEVEL", "error")  # read when ray is imported: call this first
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


def quiet_ray_data() -> None:
    """After `import ray.data`, in the driver: no Ray Data progress bars or per-10 s progress blocks and
    only its errors, when quiet_ray(verbose=False) was called (Ray Data sets up its own loggers on import)."""
    if not _quiet:
        return
    import logging

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
