"""Read a synthetic HandsOff dataset for training: a torch IterableDataset over local or S3 Parquet.

    from handsoff_ray.dataset import SyntheticDataset
    ds = SyntheticDataset("handsoff-demo/runs/toy-demo/dataset", uncertainty_filter="reference")
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    for batch in loader:
        batch["image"]          # uint8 [B, H, W, 3]
        batch["segmentation"]   # uint8 [B, H, W]; also "keypoints" [B, J, 3], "depth" [B, H, W]

Shards are split across distributed ranks (torch.distributed, when initialised) and then across
DataLoader workers, so every row is read exactly once per epoch. Uncertainty filtering is a policy
applied here, at read time, from the `uncertainty_<task>` columns: "reference" drops the fraction the
dataset's spec names (the most certain `drop_most_certain` and the rest from the uncertain end, as the
HandsOff code does); a float in (0, 1) keeps that quantile of the least uncertain; None keeps all.
The `ray.data.read_parquet(<dataset>/data)` and Hugging Face `load_dataset("parquet", ...)` readers work
on the same files directly.
"""

from __future__ import annotations

import json
import os
import posixpath

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from handsoff_ray.pipeline.schema import decode_row, schema_meta
from handsoff_ray.pipeline.storage import resolve_filesystem

__all__ = ["SyntheticDataset"]


class SyntheticDataset(IterableDataset):
    def __init__(self, uri: str | os.PathLike, *, uncertainty_filter: str | float | None = "reference",
                 filter_task: str | None = None, endpoint_url: str | None = None, batch_rows: int = 64):
        """uri: the dataset folder (holding data/ and _manifest.json), local or s3://."""
        uri = os.fspath(uri)
        self.fs, root = resolve_filesystem(uri, endpoint_url=endpoint_url)
        self.root = root.rstrip("/")
        info = self.fs.get_file_info(pq_selector(self.root))
        self.files = sorted(i.path for i in info if i.path.endswith(".parquet"))
        if not self.files:
            raise FileNotFoundError(f"no Parquet shards under {uri}/data; is this a handsoff dataset folder?")
        self.meta = schema_meta(pq.read_schema(self.fs.open_input_file(self.files[0])))
        self.batch_rows = batch_rows
        self.filter_task = filter_task or self._default_task()  # whose uncertainty the policy reads
        self.keep = self._keep_set(uncertainty_filter, self.filter_task)

    def _default_task(self) -> str:
        tasks = self.meta["tasks"]
        return "segmentation" if "segmentation" in tasks else tasks[0]

    def _keep_set(self, policy, task: str) -> set[int] | None:
        if policy is None:
            return None
        column = f"uncertainty_{task}"
        # Only two narrow columns are read to decide the filter, never the images.
        tables = [pq.read_table(self.fs.open_input_file(f), columns=["sample_id", column]) for f in self.files]
        ids = np.concatenate([t.column("sample_id").to_numpy() for t in tables])
        scores = np.concatenate([t.column(column).to_numpy(zero_copy_only=False) for t in tables])
        if policy == "reference":
            from handsoff_ray.core.uncertainty import filter_indices

            card = self._dataset_spec()
            u = (card or {}).get("synthesis", {}).get("uncertainty", {})
            kept = filter_indices(torch.from_numpy(scores.astype(np.float64)),
                                  portion=u.get("filter_portion", 0.1),
                                  drop_most_certain=u.get("drop_most_certain", 30)).numpy()
        elif isinstance(policy, float) and 0 < policy < 1:
            from handsoff_ray.core.uncertainty import filter_by_threshold

            kept = filter_by_threshold(torch.from_numpy(scores.astype(np.float64)), keep_quantile=policy).numpy()
        else:
            raise ValueError(f"uncertainty_filter must be 'reference', a quantile in (0, 1) or None, got {policy!r}")
        return set(ids[kept].tolist())

    def _dataset_spec(self) -> dict | None:
        path = posixpath.join(self.root, "_stage.json")
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read()).get("spec")
        except (FileNotFoundError, OSError):
            return None

    def __len__(self) -> int:
        if self.keep is not None:
            return len(self.keep)
        return sum(pq.ParquetFile(self.fs.open_input_file(f)).metadata.num_rows for f in self.files)

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
            pf = pq.ParquetFile(self.fs.open_input_file(path))
            for batch in pf.iter_batches(batch_size=self.batch_rows):
                for row in batch.to_pylist():
                    if self.keep is None or row["sample_id"] in self.keep:
                        yield decode_row(row, self.meta)

    def __iter__(self):
        for out in self.numpy_rows():
            yield {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
                   for k, v in out.items()}


def pq_selector(root: str):
    import pyarrow.fs as pafs

    return pafs.FileSelector(posixpath.join(root, "data"), allow_not_found=True)
