"""Read a synthetic HandsOff dataset for training: a torch IterableDataset over local or S3 Parquet.

    from handsoff_ray import SyntheticDataset
    ds = SyntheticDataset("handsoff-demo/runs/toy-demo/dataset", uncertainty_filter="reference")
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    for batch in loader:
        batch["image"]          # uint8 [B, H, W, 3]
        batch["segmentation"]   # uint8 [B, H, W]; also "keypoints" [B, J, 3], "depth" [B, H, W]

Shards are split across distributed ranks (torch.distributed, when initialised) and then across
DataLoader workers, so every row is read exactly once per epoch. Uncertainty filtering is a policy
applied here, at read time, from the `uncertainty_<task>` columns: "reference" drops the fraction the
manifest's reader defaults name (the writing spec's `reader.*`: the most certain `drop_most_certain` and
the rest from the uncertain end, as the HandsOff code does); a float in (0, 1) keeps that quantile of the least uncertain; None keeps all.
The `ray.data.read_parquet(<dataset>/data)` and Hugging Face `load_dataset("parquet", ...)` readers work
on the same files directly.
"""

from __future__ import annotations

import os
import posixpath
import warnings

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from handsoff_ray.pipeline.dataset.manifest import (
    DatasetError, IncompleteDatasetWarning, check_dataset, manifest_versions,
)
from handsoff_ray.pipeline.dataset.schema import decode_row, schema_meta
from handsoff_ray.pipeline.storage import StorageError, resolve_filesystem, retry_remote

__all__ = ["SyntheticDataset"]


class SyntheticDataset(IterableDataset):
    def __init__(self, uri: str | os.PathLike, *, uncertainty_filter: str | float | None = "reference",
                 filter_task: str | None = None, endpoint_url: str | None = None, batch_rows: int = 64,
                 allow_incomplete: bool = False, version: int | None = None):
        """uri: the dataset folder (holding data/, _manifest.json and _SUCCESS), local or s3://.

        version: read one version (batch) of the dataset (the manifest's "versions"; a scheduled run adds
        one each time), or every version with None (default). `self.versions` lists what the dataset holds.

        A dataset without _SUCCESS, or whose shards disagree with its manifest, raises DatasetError naming
        the file; allow_incomplete=True reads the shards that match instead and warns about the rest.
        """
        uri = os.fspath(uri)
        self.uri = uri
        self.fs, root = resolve_filesystem(uri, endpoint_url=endpoint_url)
        self.root = root.rstrip("/")
        found = retry_remote("open", uri, lambda: check_dataset(self.fs, self.root, uri,
                                                                allow_incomplete=allow_incomplete, version=version))
        self.files, self._rows, self.warnings = found.paths, found.rows, found.warnings
        self.manifest = found.manifest or {}
        self.version = version
        self.versions = manifest_versions(self.manifest) if self.manifest else []
        for message in self.warnings:
            warnings.warn(f"reading an incomplete dataset: {message}", IncompleteDatasetWarning, stacklevel=2)
        self.meta = schema_meta(self.open_shard(self.files[0]).schema_arrow)
        self.batch_rows = batch_rows
        self.filter_task = filter_task or self._default_task()  # whose uncertainty the policy reads
        self.keep = self._keep_set(uncertainty_filter, self.filter_task)

    def open_shard(self, path: str) -> pq.ParquetFile:
        """One shard, checked against the row count its manifest entry records; DatasetError names the file."""
        try:
            pf = pq.ParquetFile(self.fs.open_input_file(path))
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise self._unreadable(path, err) from None
        expected = self._rows.get(path)
        if expected is not None and pf.metadata.num_rows != expected:
            raise DatasetError(f"{self._where(path)}: {pf.metadata.num_rows} rows, the manifest records {expected}; "
                               "rerun `handsoff synthesize SPEC` to rewrite it")
        return pf

    def read_shard(self, path: str, columns: list[str] | None = None):
        """One whole shard (or some of its columns) as an Arrow table."""
        pf = self.open_shard(path)
        try:
            return pf.read(columns=columns)
        except (OSError, ValueError) as err:
            raise self._unreadable(path, err) from None

    def _where(self, path: str) -> str:
        return f"{self.uri.rstrip('/')}/data/{posixpath.basename(path)}"

    def _unreadable(self, path: str, err: Exception) -> DatasetError | StorageError:
        if "AWS Error" in str(err):  # the object store failed, not the file
            return StorageError(f"read {self._where(path)}: the object store failed ({err}); rerun once it is "
                                "reachable")
        return DatasetError(f"{self._where(path)}: not a readable Parquet file ({err}); "
                            "rerun `handsoff synthesize SPEC` to rewrite it")

    def _default_task(self) -> str:
        tasks = self.meta["tasks"]
        return "segmentation" if "segmentation" in tasks else tasks[0]

    def _keep_set(self, policy, task: str) -> set[int] | None:
        if policy is None:
            return None
        column = f"uncertainty_{task}"
        # Only two narrow columns are read to decide the filter, never the images.
        tables = [self.read_shard(f, ["sample_id", column]) for f in self.files]
        ids = np.concatenate([t.column("sample_id").to_numpy() for t in tables])
        scores = np.concatenate([t.column(column).to_numpy(zero_copy_only=False) for t in tables])
        if policy == "reference":
            from handsoff_ray.core.uncertainty import filter_indices

            from handsoff_ray.config import ReaderSpec

            # The defaults the writing spec's reader.* recorded in the manifest (the reference's without one).
            policy_args = ReaderSpec.model_validate(self.manifest.get("reader") or {})
            kept = filter_indices(torch.from_numpy(scores.astype(np.float64)), portion=policy_args.filter_portion,
                                  drop_most_certain=policy_args.drop_most_certain).numpy()
        elif isinstance(policy, float) and 0 < policy < 1:
            from handsoff_ray.core.uncertainty import filter_by_threshold

            kept = filter_by_threshold(torch.from_numpy(scores.astype(np.float64)), keep_quantile=policy).numpy()
        else:
            raise ValueError(f"uncertainty_filter must be 'reference', a quantile in (0, 1) or None, got {policy!r}")
        return set(ids[kept].tolist())

    def __len__(self) -> int:
        if self.keep is not None:
            return len(self.keep)
        return sum(self.open_shard(f).metadata.num_rows for f in self.files)

    def _my_files(self) -> list[str]:
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        worker = get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        return self.files[rank * nworkers + wid :: world * nworkers]

    def numpy_rows(self):
        """The kept rows of this rank's / worker's shards, decoded to numpy arrays, in sample-id order
        within one process (shards in name order, rows in id order)."""
        for path in self._my_files():
            batches = self.open_shard(path).iter_batches(batch_size=self.batch_rows)
            while True:
                try:
                    batch = next(batches, None)
                except (OSError, ValueError) as err:
                    raise self._unreadable(path, err) from None
                if batch is None:
                    break
                for row in batch.to_pylist():
                    if self.keep is None or row["sample_id"] in self.keep:
                        yield decode_row(row, self.meta)

    def __iter__(self):
        for out in self.numpy_rows():
            yield {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
                   for k, v in out.items()}

