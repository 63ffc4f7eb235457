"""The manifest is the truth: what a finished dataset holds, checked before anything reads it.

    <dataset>/_manifest.json   {"shards": {"0": {"file": "data/part-000000.parquet", "rows": 500,
                                                  "bytes": 6851234, "sha256": "9f2c...", ...}, ...}, ...}
    <dataset>/_SUCCESS         written last: every shard is committed and recorded

`check_dataset` is what readers run (SyntheticDataset, so inspect, preview, export and filter too): it needs
_SUCCESS, a readable manifest, and one listing of data/ that holds exactly the manifest's files at the
manifest's sizes; row counts are checked against each Parquet footer as it is opened. `verify_dataset`
(`handsoff verify DATASET`) adds every shard's sha256, reading every byte. With `allow_incomplete`, readers
take the shards that match and warn about the rest.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from handsoff_ray.pipeline.dataset.layout import DATASET_FILES
from handsoff_ray.pipeline.errors import UserError
from handsoff_ray.pipeline.storage import list_sizes, sha256_file

__all__ = [
    "DatasetError", "DatasetFiles", "IncompleteDatasetWarning", "check_dataset", "manifest_files", "manifest_versions",
    "parse_manifest",
    "read_manifest", "verify_dataset",
]

MANIFEST, SUCCESS, DATA = DATASET_FILES.manifest, DATASET_FILES.success, DATASET_FILES.data


class DatasetError(UserError):
    """A synthetic dataset that is incomplete or disagrees with its manifest; the message names the file."""


class IncompleteDatasetWarning(UserWarning):
    """Raised (as a warning) for each problem of a dataset read with allow_incomplete=True."""


def read_manifest(fs: pafs.FileSystem, root: str, uri: str) -> dict:
    """The dataset's manifest; DatasetError naming the file when it is missing or unreadable."""
    try:
        with fs.open_input_stream(posixpath.join(root, MANIFEST)) as f:
            raw = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{uri.rstrip('/')}/{MANIFEST}: missing") from None
    return parse_manifest(raw, uri)


def parse_manifest(raw: bytes, uri: str) -> dict:
    """Manifest bytes -> the manifest; DatasetError naming the file when they are not one."""
    where = f"{uri.rstrip('/')}/{MANIFEST}"
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{where}: not valid JSON ({err})") from None
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, dict) or not all(
            isinstance(e, dict) and {"file", "rows", "bytes", "sha256"} <= set(e) for e in shards.values()):
        raise DatasetError(f"{where}: not a handsoff manifest (each shard needs file, rows, bytes, sha256)")
    return manifest


def manifest_files(manifest: dict) -> dict[str, dict]:
    """{file name under data/: manifest entry}."""
    return {posixpath.basename(e["file"]): e for e in manifest["shards"].values()}


@dataclass
class DatasetFiles:
    """What a reader may open: shard paths (name order), the rows each must hold, and why others were left out."""

    paths: list[str]
    rows: dict[str, int] = field(default_factory=dict)  # path -> rows the manifest records
    warnings: list[str] = field(default_factory=list)
    manifest: dict | None = None  # None only when allow_incomplete read a dataset without a readable one


def _problems(fs: pafs.FileSystem, root: str, uri: str) -> tuple[list[str], dict | None, dict[str, int]]:
    """(problems, manifest or None, {name: size} of data/) from _SUCCESS, the manifest and one listing."""
    base = uri.rstrip("/")
    problems = []
    if fs.get_file_info(posixpath.join(root, SUCCESS)).type == pafs.FileType.NotFound:
        problems.append(f"{base}/{SUCCESS}: missing, so the dataset is incomplete (an interrupted or failed run)")
    try:
        manifest = read_manifest(fs, root, uri)
    except DatasetError as err:
        problems.append(str(err))
        manifest = None
    sizes = {n: s for n, s in list_sizes(fs, posixpath.join(root, DATA)).items() if n.endswith(".parquet")}
    if manifest is not None:
        expected = manifest_files(manifest)
        for name, entry in sorted(expected.items()):
            if name not in sizes:
                problems.append(f"{base}/data/{name}: missing (the manifest lists it)")
            elif sizes[name] != entry["bytes"]:
                problems.append(f"{base}/data/{name}: {sizes[name]} bytes, the manifest records {entry['bytes']}")
        problems += [f"{base}/data/{n}: not in the manifest" for n in sorted(set(sizes) - set(expected))]
    return problems, manifest, sizes


def manifest_versions(manifest: dict) -> list[int]:
    """The versions (batches) a dataset holds: [0] for a dataset written before versions."""
    versions = manifest.get("versions")
    if versions:
        return sorted(int(v) for v in versions)
    return sorted({int(e.get("version", 0)) for e in manifest["shards"].values()})


def check_dataset(fs: pafs.FileSystem, root: str, uri: str, *, allow_incomplete: bool = False,
                  version: int | None = None) -> DatasetFiles:
    """The shards a reader may open (all versions, or one); DatasetError (one line, naming the first bad file)
    unless all is whole."""
    problems, manifest, sizes = _problems(fs, root, uri)
    if manifest is None and not sizes and len(problems) == 2:  # no _SUCCESS, no manifest, no shards
        raise DatasetError(f"{uri}: no handsoff dataset here (no {MANIFEST}, {SUCCESS} or data/*.parquet); "
                           "pass the dataset folder of a run, e.g. RUN/dataset")
    if problems and not allow_incomplete:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DatasetError(
            f"{problems[0]}{more}: rerun `handsoff synthesize SPEC` to finish or repair it, "
            f"`handsoff verify {uri}` to list every problem, or pass --allow-incomplete to read the shards that match")
    if manifest is None:
        names, rows = sorted(sizes), {}
    else:
        expected = manifest_files(manifest)
        if version is not None:
            if version not in manifest_versions(manifest):
                raise DatasetError(f"{uri}: no version {version} in this dataset (it holds versions "
                                   f"{manifest_versions(manifest)}); pass one of them, or version=None for all")
            expected = {n: e for n, e in expected.items() if int(e.get("version", 0)) == version}
        names = sorted(n for n, e in expected.items() if sizes.get(n) == e["bytes"])
        rows = {posixpath.join(root, DATA, n): int(expected[n]["rows"]) for n in names}
    if not names:
        raise DatasetError(f"{uri.rstrip('/')}/data: no Parquet shards to read; is this a handsoff dataset folder?")
    return DatasetFiles([posixpath.join(root, DATA, n) for n in names], rows, problems, manifest)


def verify_dataset(fs: pafs.FileSystem, root: str, uri: str) -> dict:
    """Every check readers make plus each shard's sha256 and Parquet row count; a report listing every problem."""
    import pyarrow.parquet as pq

    # Neither a manifest nor data/: not a dataset at all (a labeled folder, a typo), rather than an interrupted run
    if all(fs.get_file_info(posixpath.join(root, name)).type == pafs.FileType.NotFound for name in (MANIFEST, DATA)):
        raise DatasetError(f"{uri.rstrip('/')} is not a handsoff dataset (no {MANIFEST}); pass the dataset folder "
                           "of a run, e.g. RUN/dataset")
    problems, manifest, sizes = _problems(fs, root, uri)
    report = {"dataset": uri, "shards": 0, "rows": 0, "verified": 0}
    if manifest is not None:
        expected = manifest_files(manifest)
        report["shards"] = len(expected)
        report["rows"] = sum(int(e["rows"]) for e in expected.values())
        if "num_samples" in manifest and report["rows"] != manifest["num_samples"]:
            problems.append(f"{uri.rstrip('/')}/{MANIFEST}: shards hold {report['rows']} rows, "
                            f"num_samples says {manifest['num_samples']}")
        for name, entry in sorted(expected.items()):
            if sizes.get(name) != entry["bytes"]:
                continue  # already reported by size
            path, where = posixpath.join(root, DATA, name), f"{uri.rstrip('/')}/data/{name}"
            digest, _ = sha256_file(fs, path)
            if digest != entry["sha256"]:
                problems.append(f"{where}: sha256 {digest[:12]}..., the manifest records {entry['sha256'][:12]}...")
                continue
            try:
                rows = pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows
            except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
                problems.append(f"{where}: not a readable Parquet file ({err})")
                continue
            if rows != entry["rows"]:
                problems.append(f"{where}: {rows} rows, the manifest records {entry['rows']}")
                continue
            report["verified"] += 1
    return {**report, "ok": not problems, "problems": problems}
