"""Resume and verification cost vs shard count on S3 (moto's server on 127.0.0.1); prints one JSON object.

    python benchmarks/resume_cost.py --json                      # 1,000 and 10,000 shards, ~5 min on 2 cores
    python benchmarks/resume_cost.py --json --shards 100 1000

For each shard count N: N tiny committed shards (--shard-bytes random bytes each; verification never
parses them) and a manifest recording them are put into a bucket of a ThreadedMotoServer run in a child
process (so its memory is not the driver's). Then, in this process, the driver side of a rerun:

- rerun_verify: `dataset.writer.verify_committed`, what every rerun of synthesize does before any compute:
  one listing of dataset/data/, then each shard's size and sha256 (streamed) against its manifest entry.
  Reported: storage calls by kind (the listing is one call; S3 pages it 1,000 keys at a time), seconds,
  ms per shard, and the driver's memory: the tracemalloc peak of the call (the manifest it is handed is
  allocated before; reading streams 8 MiB chunks, so the peak is about one chunk whatever N).
- reader_open: `SyntheticDataset`'s check (`manifest.check_dataset`): _SUCCESS, the manifest, one listing,
  sizes compared; no shard is read.
- stat_per_shard: the previous resume check, one HEAD (`store.exists`) per shard, for scale.

With --json only the JSON goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import multiprocessing
import os
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", type=int, nargs="+", default=[1000, 10000], metavar="N")
    p.add_argument("--shard-bytes", type=int, default=1024, metavar="B")
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    return p.parse_args(argv)


def _serve(port_queue) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port_queue.put(server.get_host_and_port()[1])
    while True:
        time.sleep(3600)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _populate(endpoint: str, bucket: str, n: int, size: int) -> dict:
    """N shards under runs/r/dataset/data/ and the manifest that records them; returns the manifest."""
    import boto3

    from handsoff_ray.pipeline.dataset.layout import DATASET_FILES

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    manifest = {"stage_hash": "bench", "shards": {}}

    def put(k: int) -> None:
        blob = os.urandom(size)
        client.put_object(Bucket=bucket, Key=f"runs/r/dataset/{DATASET_FILES.shard(k)}", Body=blob)
        manifest["shards"][str(k)] = {"shard": k, "file": DATASET_FILES.shard(k), "start": k, "stop": k + 1,
                                      "rows": 1, "bytes": size, "sha256": hashlib.sha256(blob).hexdigest()}

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n)))
    client.put_object(Bucket=bucket, Key="runs/r/dataset/_manifest.json", Body=json.dumps(manifest).encode())
    client.put_object(Bucket=bucket, Key="runs/r/dataset/_SUCCESS", Body=b"")
    return manifest


class _Counting:
    """Wraps a RunStore's storage calls to count them by kind."""

    def __init__(self, store):
        self.counts = collections.Counter()
        for name in ("sizes", "sha256", "exists", "read_bytes"):
            real = getattr(store, name)

            def counted(*args, _real=real, _name=name, **kwargs):
                self.counts[_name] += 1
                return _real(*args, **kwargs)

            setattr(store, name, counted)


def measure(endpoint: str, n: int, size: int) -> dict:
    from handsoff_ray.pipeline.dataset.manifest import check_dataset
    from handsoff_ray.pipeline.storage import RunStore
    from handsoff_ray.pipeline.dataset.layout import DATASET_FILES
    from handsoff_ray.pipeline.dataset.writer import DatasetWriter, verify_committed

    bucket = f"resume-{n}"
    t0 = time.perf_counter()
    manifest = _populate(endpoint, bucket, n, size)
    _log(f"  {n} shards put in {time.perf_counter() - t0:.0f} s")
    store = RunStore.open(f"s3://{bucket}/runs", run_id="r", endpoint_url=endpoint)
    counting = _Counting(store)
    ranges = [(k, k + 1) for k in range(n)]
    manifest_bytes = len(json.dumps(manifest))

    working = json.loads(json.dumps(manifest))  # what prepare_synthesis would have read
    tracemalloc.start()
    t0 = time.perf_counter()
    todo, notes = verify_committed(DatasetWriter(store, "dataset"), working, ranges, {}, "bench")
    verify_s = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert todo == [] and notes == [], (todo[:5], notes[:5])
    calls = dict(counting.counts)
    _log(f"  rerun verify: {verify_s:.1f} s, calls {calls}")

    t0 = time.perf_counter()
    found = check_dataset(store.fs, store.path("dataset"), store.uri("dataset"))
    open_s = time.perf_counter() - t0
    assert len(found.paths) == n

    counting.counts.clear()
    t0 = time.perf_counter()
    assert all(store.exists(f"dataset/{DATASET_FILES.shard(k)}") for k in range(n))
    stat_s = time.perf_counter() - t0
    _log(f"  reader open {open_s:.2f} s; one HEAD per shard {stat_s:.1f} s")
    return {
        "shards": n, "shard_bytes": size,
        "rerun_verify": {"seconds": round(verify_s, 2), "ms_per_shard": round(1000 * verify_s / n, 3),
                         "storage_calls": calls, "listings": calls.get("sizes", 0),
                         "tracemalloc_peak_bytes": peak, "peak_bytes_per_shard": round(peak / n, 1),
                         "manifest_json_bytes": manifest_bytes},
        "reader_open": {"seconds": round(open_s, 3), "ms_per_shard": round(1000 * open_s / n, 4)},
        "stat_per_shard": {"seconds": round(stat_s, 2), "ms_per_shard": round(1000 * stat_s / n, 3)},
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    endpoint = f"http://127.0.0.1:{ports.get(timeout=60)}"
    try:
        runs = []
        for n in args.shards:
            _log(f"{n} shards of {args.shard_bytes} B on {endpoint}")
            runs.append(measure(endpoint, n, args.shard_bytes))
    finally:
        server.terminate()
    result = {"endpoint": "moto ThreadedMotoServer, 127.0.0.1, child process", "runs": runs}
    if len(runs) > 1:
        small, big = runs[0], runs[-1]
        result["ms_per_shard_ratio_big_vs_small"] = round(
            big["rerun_verify"]["ms_per_shard"] / small["rerun_verify"]["ms_per_shard"], 2)
        # Flat memory: the driver's peak does not grow with the shard count (the manifest itself aside).
        result["peak_bytes_ratio_big_vs_small"] = round(
            big["rerun_verify"]["tracemalloc_peak_bytes"] / small["rerun_verify"]["tracemalloc_peak_bytes"], 2)
    print(json.dumps(result, indent=None if args.json else 2))
    return result


if __name__ == "__main__":
    main()
