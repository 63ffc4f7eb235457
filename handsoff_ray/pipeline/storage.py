"""Run storage: one prefix per run, local paths, file:// and s3:// URIs, all through pyarrow.fs.

    store = RunStore.open("s3://bucket/handsoff", run_id="faces-16")
    store.write_bytes("latents/img_0001.safetensors", blob)   # atomic: visible only when complete

One run is one prefix, <output>/<run_id>; what lives under it is pipeline/layout.py's. Each stage's
folder records the spec that owns it (RunContext.claim_stage), so two specs never mix outputs.

S3 settings come from the spec (`storage.s3`) or the usual environment (AWS_ENDPOINT_URL,
AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Each object-store operation
is retried through an outage (a refused connection, a name that does not resolve, a dropped upload) for
`storage.s3.retry_seconds` (default 60 s), saying so on stderr at the first failure; rejected credentials
and missing buckets fail at once, since no retry fixes them. Local paths that cannot be written (a
read-only or missing parent, a file in the way) are one-line StorageErrors.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import tenacity

__all__ = ["RunStore", "StorageError", "cached_local_file", "list_sizes", "resolve_filesystem", "retry_remote",
           "sha256_file"]

# Waits between attempts of one object-store operation; the last repeats until the retry budget is spent.
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_RETRY_SECONDS = 60.0  # storage.s3.retry_seconds: an unreachable endpoint fails in about a minute
# AWS error codes (as pyarrow names them) that no retry can fix.
_CREDENTIAL_ERRORS = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN",
                      "INVALID_CLIENT_TOKEN_ID", "MISSING_AUTHENTICATION_TOKEN")
_BUCKET_ERRORS = ("NO_SUCH_BUCKET", "INVALID_BUCKET_NAME")


class StorageError(RuntimeError):
    """Storage that cannot be used for this run (wrong spec under a run id, unreachable bucket...)."""


def resolve_filesystem(
    uri: str, *, endpoint_url: str | None = None, region: str | None = None, max_attempts: int = 3
) -> tuple[pafs.FileSystem, str]:
    """Map a path or URI to (filesystem, path inside it)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{uri!r} names no bucket; write s3://BUCKET/PREFIX")
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict = {
            "region": region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
        }
        if endpoint:
            ep = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
            kwargs["endpoint_override"] = ep.netloc
            kwargs["scheme"] = ep.scheme or "http"
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    raise StorageError(f"unsupported storage URI {uri!r}: use a local path, file:// or s3://")


_CHUNK = 8 << 20  # streamed reads move this much at a time: memory stays flat whatever the file size


def sha256_file(fs: pafs.FileSystem, path: str) -> tuple[str, int]:
    """(sha256 hex, size) of one file, streamed."""
    with fs.open_input_file(path) as f, pa.BufferedInputStream(f, _CHUNK) as buffered:
        size = f.size()
        # file_digest reads 256 KiB at a time; the buffer makes that one _CHUNK read (one ranged GET on S3).
        return hashlib.file_digest(buffered, "sha256").hexdigest(), size


def list_sizes(fs: pafs.FileSystem, folder: str) -> dict[str, int]:
    """{file name: size} of the files directly under folder, from one listing ({} when it does not exist)."""
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return {posixpath.basename(i.path): i.size for i in infos if i.type == pafs.FileType.File}


def _short(err: BaseException) -> str:
    """The informative part of a pyarrow S3 error ("AWS Error NETWORK_CONNECTION ...: Could not resolve ...")."""
    text = str(err)
    text = text[text.find("AWS Error"):] if "AWS Error" in text else text
    return text.split("; Details")[0].split(" (Request ID")[0]


def _permanent(err: OSError) -> str | None:
    """What to do about an error no retry fixes, or None when an outage may explain it."""
    text = str(err)
    if any(code in text for code in _CREDENTIAL_ERRORS):
        return ("the object store refused the credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE) for this endpoint")
    if any(code in text for code in _BUCKET_ERRORS):
        return "the bucket does not exist: create it, or fix the bucket name in storage.output"
    return None


def _backoff(state: tenacity.RetryCallState) -> float:
    return RETRY_BACKOFF_S[min(state.attempt_number, len(RETRY_BACKOFF_S)) - 1]


def retry_remote(what: str, where: str, op, *, budget_s: float | None = None, on_retry=None):
    """Run op() against an object store, retrying an outage for up to budget_s seconds.

    pyarrow's retry strategy already retries each HTTP request a few times within about a second; this
    rides out an endpoint that is gone for longer (a restart, a network blip). The first failure is
    reported on stderr at once, with what is being retried and for how long. FileNotFoundError passes
    through; credentials and missing buckets, and an outage longer than the budget, raise StorageError.
    budget_s defaults to DEFAULT_RETRY_SECONDS (readers, which have no spec).
    """
    budget_s = DEFAULT_RETRY_SECONDS if budget_s is None else budget_s
    t0 = time.monotonic()

    def report(state: tenacity.RetryCallState) -> None:
        # `after` runs on every retryable failure, before the stop check: the first one is reported even
        # when that one attempt (pyarrow's own request retries, a slow DNS timeout) outlasted the budget.
        if state.attempt_number == 1:
            print(f"handsoff: storage: {what} {where} failed ({_short(state.outcome.exception())}); "
                  f"retrying for up to {budget_s:.0f} s (storage.s3.retry_seconds)", file=sys.stderr, flush=True)

    def count(state: tenacity.RetryCallState) -> None:
        if on_retry:
            on_retry()

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(budget_s), wait=_backoff, after=report, before_sleep=count, reraise=True,
        retry=tenacity.retry_if_exception(
            lambda e: isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and not _permanent(e)))
    try:
        return retrying(op)
    except FileNotFoundError:
        raise
    except OSError as err:
        advice = _permanent(err)
        if advice:
            raise StorageError(f"{what} {where}: {advice} ({_short(err)})") from err
        raise StorageError(
            f"{what} {where} failed for {time.monotonic() - t0:.0f} s ({_short(err)}); finished work is kept: "
            "rerun the same command once the object store is reachable"
        ) from err


@dataclass
class RunStore:
    fs: pafs.FileSystem
    root: str  # <output>/<run_id> inside fs
    run_id: str
    retry_seconds: float = DEFAULT_RETRY_SECONDS  # how long one object-store operation rides out an outage

    @classmethod
    def open(
        cls,
        output: str,
        *,
        run_id: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = 3,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> "RunStore":
        """The run prefix <output>/<run_id> (nothing is written until a stage writes)."""
        fs, base = resolve_filesystem(output, endpoint_url=endpoint_url, region=region, max_attempts=max_attempts)
        return cls(fs=fs, root=posixpath.join(base, run_id), run_id=run_id, retry_seconds=retry_seconds)

    def sibling(self, run_id: str) -> "RunStore":
        """The prefix <output>/<run_id> next to this one, on the same file system (e.g. _artifacts)."""
        return RunStore(fs=self.fs, root=posixpath.join(posixpath.dirname(self.root), run_id), run_id=run_id,
                        retry_seconds=self.retry_seconds)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def uri(self, rel: str = "") -> str:
        """A URI other tools (pyarrow, ray.data, datasets) can open."""
        full = self.path(rel) if rel else self.root
        return f"s3://{full}" if isinstance(self.fs, pafs.S3FileSystem) else full

    def exists(self, rel: str) -> bool:
        return self._remote("stat", rel, lambda: self.fs.get_file_info(self.path(rel))).type != pafs.FileType.NotFound

    def list(self, rel: str) -> list[str]:
        """Names (not paths) of the files directly under rel; [] when rel does not exist."""
        return sorted(self.sizes(rel))

    def sizes(self, rel: str) -> dict[str, int]:
        """{name: size} of the files directly under rel, from one listing; {} when rel does not exist."""
        return self._remote("list", rel, lambda: list_sizes(self.fs, self.path(rel)))

    def sha256(self, rel: str) -> tuple[str, int]:
        """(sha256 hex, size) of the file at rel, streamed."""
        return self._remote("read", rel, lambda: sha256_file(self.fs, self.path(rel)))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self._remote("delete", rel, lambda: self.fs.delete_file(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()

        return self._remote("read", rel, read)

    def read_json(self, rel: str) -> dict | None:
        if not self.exists(rel):
            return None
        return json.loads(self.read_bytes(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write data under rel so that the file appears under its name only when complete."""
        self._commit(rel, lambda f: f.write(data))

    def put_file(self, rel: str, local_path: str) -> None:
        """Commit a local file under rel, streamed (never whole in memory), visible only when complete."""

        def copy(dst) -> None:
            with open(local_path, "rb") as src:
                shutil.copyfileobj(src, dst, _CHUNK)

        self._commit(rel, copy)

    def _commit(self, rel: str, write) -> None:
        """Run write(stream) so that rel appears only when complete.

        Locally: a hidden temporary file, then a rename. On S3 an object becomes visible only when its
        (multipart) upload completes, so writing the final key directly is already atomic; the upload
        is retried through outages (see _remote).
        """
        final = self.path(rel)
        if isinstance(self.fs, pafs.LocalFileSystem):
            def write_and_rename() -> None:
                self.fs.create_dir(posixpath.dirname(final), recursive=True)
                tmp = posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}.{uuid.uuid4().hex}.tmp")
                with self.fs.open_output_stream(tmp) as f:
                    write(f)
                self.fs.move(tmp, final)

            self._remote("write", rel, write_and_rename)
            return

        def upload() -> None:
            with self.fs.open_output_stream(final) as f:
                write(f)

        self._remote("write", rel, upload)

    def _remote(self, what: str, rel: str, op):
        """Run one storage operation: retried through object-store outages (retry_remote, each retry counted
        in `handsoff_write_retries_total`); locally, an unwritable path is a one-line StorageError."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            try:
                return op()
            except FileNotFoundError:
                if what != "write":
                    raise
                raise StorageError(f"cannot {what} {self.path(rel)}: a parent folder cannot be created there; "
                                   "pick another storage.output") from None
            except OSError as err:
                raise StorageError(f"cannot {what} {self.path(rel)}: {err.strerror or err}; "
                                   "pick a writable storage.output") from None

        def counted() -> None:
            from handsoff_ray.pipeline.telemetry import metrics

            metrics().inc("write_retries", 1, run_id=self.run_id)

        return retry_remote(what, self.uri(rel), op, budget_s=self.retry_seconds, on_retry=counted)

    def sweep_temporaries(self, rel: str) -> int:
        """Delete the hidden temporaries of local writes that died mid-way under rel; returns how many.

        Only call it when no writer is active under rel (e.g. after every shard has been committed).
        On S3 an unfinished upload never becomes an object, so there is nothing to sweep.
        """
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return 0
        info = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        stale = [i.path for i in info if posixpath.basename(i.path).startswith(".") and i.path.endswith(".tmp")]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    def write_json(self, rel: str, obj: dict) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def local_copy(self, rel: str, dest_dir: str) -> str:
        """Materialise a file on local disk (e.g. a checkpoint to hand to torch); returns its path."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            return self.path(rel)
        os.makedirs(dest_dir, exist_ok=True)
        dest = os.path.join(dest_dir, posixpath.basename(rel))

        def copy() -> None:
            with self.fs.open_input_stream(self.path(rel)) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)

        self._remote("read", rel, copy)
        return dest


def cached_local_file(uri: str, *, endpoint_url: str | None = None, region: str | None = None) -> str:
    """A local copy of the remote file at `uri` (torch and safetensors read local files, e.g. a generator
    checkpoint on S3), downloaded once per machine: every stage, worker and actor reuses it instead of leaving
    a copy per load. A replaced object (another size or mtime) gets a new copy."""
    from handsoff_ray.core._files import atomic_write

    fs, inner = resolve_filesystem(uri, endpoint_url=endpoint_url, region=region)
    info = fs.get_file_info(inner)
    key = f"{uri}|{info.size}|{info.mtime_ns}"
    folder = os.path.join(tempfile.gettempdir(), "handsoff-checkpoints")
    local = os.path.join(folder, f"{hashlib.sha256(key.encode()).hexdigest()[:16]}_{inner.rsplit('/', 1)[-1]}")
    if not (os.path.isfile(local) and os.path.getsize(local) == info.size):
        os.makedirs(folder, exist_ok=True)
        # Concurrent actors each write their own temporary, then rename: a reader never sees half a file.
        with fs.open_input_stream(inner) as src, atomic_write(local) as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    return local
