"""Local files written all at once or not at all: `atomic_write`.

    with atomic_write("out/state.pt") as fh:     # a temporary dot-file next to it, renamed into place
        torch.save(state, fh)

A reader never sees a half-written file under the final name: the bytes go to `.<name>.<pid>-<token>.tmp`
in the same folder (same filesystem, so `os.replace` is atomic), which replaces `path` only when the
block exits normally; on any exception, KeyboardInterrupt included, the temporary is deleted. The dot
prefix keeps it out of folder listings that skip hidden files (the labeled-set reader does). No fsync:
this protects against an interrupted process, not a power cut.

Tests: `python -m pytest -q tests/core/test_files.py`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yield `path`'s temporary opened with `mode` ("wb" or "w"); rename it over `path` on success."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    # pid + token: concurrent writers (processes or threads) of one path never share a temporary.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
