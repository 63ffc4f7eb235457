"""Run storage: one prefix per run, local paths, file:// and s3:// URIs, all through pyarrow.fs.

    store = RunStore.open("s3://bucket/handsoff", run_id="faces-16", spec_hash="ab12...")
    store.write_bytes("latents/img_0001.safetensors", blob)   # atomic: visible only when complete

Layout (one run = one prefix)::

    <output>/<run_id>/_run.json          spec, spec hash, created-at; guards against mixing specs
    <output>/<run_id>/latents/           per-image W+ latents and inversion metrics
    <output>/<run_id>/label_generator/   the fitted ensemble
    <output>/<run_id>/dataset/           synthetic Parquet shards
    <output>/<run_id>/eval/              evaluation reports

S3 settings come from the spec (`storage.s3`) or the usual environment (AWS_ENDPOINT_URL,
AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); retries use pyarrow's
standard AWS retry strategy so brief object-store outages do not fail a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

__all__ = ["RunStore", "StorageError", "list_sizes", "resolve_filesystem", "sha256_file"]

# Waits between attempts of one object-store operation (about 15 s of outage ridden out in all).
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


class StorageError(RuntimeError):
    """Storage that cannot be used for this run (wrong spec under a run id, unreachable bucket...)."""


def resolve_filesystem(
    uri: str, *, endpoint_url: str | None = None, region: str | None = None, max_attempts: int = 10
) -> tuple[pafs.FileSystem, str]:
    """Map a path or URI to (filesystem, path inside it)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    if parsed.scheme == "s3":
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
    h, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def list_sizes(fs: pafs.FileSystem, folder: str) -> dict[str, int]:
    """{file name: size} of the files directly under folder, from one listing ({} when it does not exist)."""
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return {posixpath.basename(i.path): i.size for i in infos if i.type == pafs.FileType.File}


@dataclass
class RunStore:
    fs: pafs.FileSystem
    root: str  # <output>/<run_id> inside fs
    run_id: str

    @classmethod
    def open(
        cls,
        output: str,
        *,
        run_id: str,
        spec_json: dict | None = None,
        spec_hash: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = 10,
    ) -> "RunStore":
        """Open (creating if needed) the run prefix; refuse a run id that holds another spec's outputs."""
        fs, base = resolve_filesystem(output, endpoint_url=endpoint_url, region=region, max_attempts=max_attempts)
        store = cls(fs=fs, root=posixpath.join(base, run_id), run_id=run_id)
        if spec_hash is not None:
            existing = store.read_json("_run.json")
            if existing is None:
                store.write_json("_run.json", {"run_id": run_id, "spec_hash": spec_hash, "spec": spec_json})
            elif existing.get("spec_hash") != spec_hash:
                raise StorageError(
                    f"run {run_id!r} under {output} was made by spec {existing.get('spec_hash')}, "
                    f"this spec is {spec_hash}: pick another storage.run_id or output, or delete the old run"
                )
        return store

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
                while chunk := src.read(8 << 20):
                    dst.write(chunk)

        self._commit(rel, copy)

    def _commit(self, rel: str, write) -> None:
        """Run write(stream) so that rel appears only when complete.

        Locally: a hidden temporary file, then a rename. On S3 an object becomes visible only when its
        (multipart) upload completes, so writing the final key directly is already atomic; the upload
        is retried through outages (see _remote).
        """
        final = self.path(rel)
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(posixpath.dirname(final), recursive=True)
            tmp = posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}.{uuid.uuid4().hex}.tmp")
            with self.fs.open_output_stream(tmp) as f:
                write(f)
            self.fs.move(tmp, final)
            return

        def upload() -> None:
            with self.fs.open_output_stream(final) as f:
                write(f)

        self._remote("write", rel, upload)

    def _remote(self, what: str, rel: str, op):
        """Run one object-store operation, retrying an outage for up to sum(RETRY_BACKOFF_S) seconds.

        pyarrow's retry strategy already retries each HTTP request a few times within about a second;
        this outer loop rides out an endpoint that is gone for several seconds (a restart, a network
        blip). Each retry is counted in the `handsoff_write_retries_total` metric.
        """
        if isinstance(self.fs, pafs.LocalFileSystem):
            return op()
        t0 = time.monotonic()
        for attempt, delay in enumerate((*RETRY_BACKOFF_S, None), 1):
            try:
                return op()
            except OSError as err:
                if delay is None:
                    raise StorageError(
                        f"{what} {self.uri(rel)} failed {attempt} times over {time.monotonic() - t0:.0f} s ({err}); "
                        "finished work is kept: rerun the same command once the object store is reachable"
                    ) from err
                from handsoff_ray.pipeline.metrics import metrics

                metrics().inc("write_retries", 1, run_id=self.run_id)
                time.sleep(delay)

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
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)

        self._remote("read", rel, copy)
        return dest
