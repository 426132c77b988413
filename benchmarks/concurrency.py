"""Requests/s and latency of the served ensemble at several client concurrencies, with and without Triton's
dynamic batching, side by side in one run (closed loop, loopback only).

    python benchmarks/concurrency.py --tenant ml1m [--root DIR] [--levels 1,8,32] [--seconds 10] [--protocol grpc]
                                     [--batch-sizes 0,64]

The latest export's artifacts are served from one model repository per max_batch_size (0 = unbatched: one request
per stage call, the contract before dynamic batching), one server after the other on the same cores. Each level
runs N client threads, each with its own connection, sending requests back to back for a fixed time (after a
warm-up); known users drawn with a fixed seed, the same for every configuration. The client threads run on the
same machine as the server, so their CPU time is in every number, for both configurations alike.

Writes benchmarks/results/concurrency-<tenant>[-name].json: per configuration and level, requests/s, p50/p99 and
failed requests; per batched configuration, the mean batch each stage ran (Triton's inference / execution counts);
and the requests/s and p99 ratios of each batched level to the unbatched one at the same concurrency.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.artifacts import atomic_write_json, latest_version
from tapestry.serving.batching import MODELS, set_max_batch_size
from tapestry.serving.client import RecommendClient
from tapestry.serving.triton_server import TritonServer


def run_level(url: str, protocol: str, tenant: str, users: list[str], clients: int, seconds: float,
              warmup: float = 1.0) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    ready, go = threading.Barrier(clients + 1), threading.Barrier(clients + 1)   # connected; then the clock starts
    state = {"measure_from": 0.0, "stop_at": 0.0}

    def worker(i: int) -> None:
        rng = np.random.default_rng(i)
        with RecommendClient(url, protocol=protocol) as client:
            ready.wait()
            go.wait()
            while (now := time.perf_counter()) < state["stop_at"]:
                user = users[int(rng.integers(len(users)))]
                try:
                    client.recommend(tenant, user, k=10)
                except Exception:  # noqa: BLE001 - a failed request is counted, the load goes on
                    failures[i] += 1
                    continue
                if now >= state["measure_from"]:
                    latencies[i].append((time.perf_counter() - now) * 1e3)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    state["measure_from"], state["stop_at"] = t0 + warmup, t0 + warmup + seconds
    go.wait()
    for t in threads:
        t.join()
    lat = np.array([x for per in latencies for x in per])
    return {"clients": clients, "requests": int(lat.size), "failed": int(sum(failures)),
            "requests_per_s": float(lat.size / seconds),
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None}


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU time (user + system) so far of this process (the load generator), the Triton server and each of its
    python-backend stubs (named by their model), from /proc: where the cores go at a given load."""
    tick = os.sysconf("SC_CLK_TCK")

    def read(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick          # utime, stime

    out = {"load_generator": read(os.getpid()), "tritonserver": read(server_pid)}
    for child in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split():
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            name = next((c.decode() for c in cmd if c.endswith(b"_0_0")), f"pid {child}")   # <model>_0_0
            out[name.removesuffix("_0_0")] = read(int(child))
        except (OSError, StopIteration):
            continue
    return out


def repository(export: Path, max_batch_size: int, work: Path) -> Path:
    """A copy of the export's model repository rewritten for `max_batch_size`, its artifacts linked beside it."""
    root = work / f"mbs{max_batch_size}"
    shutil.copytree(export / "model_repository", root / "model_repository",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "artifacts").symlink_to((export / "artifacts").resolve())
    set_max_batch_size(root / "model_repository", max_batch_size)
    return root / "model_repository"


def mean_batches(http_url: str) -> dict[str, float]:
    """Per stage: requests answered / executions, since the server started (warm-ups included)."""
    import tritonclient.http as th

    client = th.InferenceServerClient(http_url.removeprefix("http://"))
    out = {}
    for model in MODELS:
        if model == "recommend":
            continue
        stats = client.get_inference_statistics(model)["model_stats"][0]
        out[model] = stats["inference_count"] / max(stats["execution_count"], 1)
    client.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tenant", default="ml1m")
    p.add_argument("--root", type=Path)
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--protocol", choices=("http", "grpc"), default="grpc")
    p.add_argument("--batch-sizes", default="0,64", help="max_batch_size per configuration; 0 (unbatched) first is "
                                                          "the baseline the ratios are taken against")
    p.add_argument("--name", help="suffix of the result file")
    args = p.parse_args()
    # A SIGTERM (a killed benchmark) becomes SystemExit, so the servers' context managers stop Triton.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    export = latest_version(args.tenant, "export", args.root)
    users = pl.read_parquet(export / "artifacts" / "users.parquet")["user_id"].to_list()
    manifest = json.loads((export / "artifacts" / "manifest.json").read_text())
    levels = [int(x) for x in args.levels.split(",")]
    configs = {}
    with tempfile.TemporaryDirectory(prefix="tapestry-concurrency-") as work:
        for mbs in [int(x) for x in args.batch_sizes.split(",")]:
            results = []
            with TritonServer(repository(export, mbs, Path(work))) as server:
                url = server.grpc_url if args.protocol == "grpc" else server.http_url
                for n in levels:
                    before, t0 = cpu_seconds(server.pid), time.perf_counter()
                    r = run_level(url, args.protocol, args.tenant, users, n, args.seconds)
                    after, wall = cpu_seconds(server.pid), time.perf_counter() - t0
                    # cores busy per process over the level (warm-up included), and CPU ms per answered request
                    r["cores"] = {k: round((after[k] - before[k]) / wall, 3) for k in after if k in before}
                    r["cpu_ms_per_request"] = (round(sum(r["cores"].values()) * wall / max(r["requests"], 1) * 1e3, 3))
                    results.append(r)
                    print(f"[concurrency] max_batch_size {mbs:>3}, {n:>3} clients: {r['requests_per_s']:7.1f} req/s  "
                          f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  failed {r['failed']}  cores "
                          + " ".join(f"{k} {v:.2f}" for k, v in r["cores"].items()), flush=True)
                batches = mean_batches(server.http_url) if mbs else None
            if batches:
                print("[concurrency] mean batch per stage: "
                      + ", ".join(f"{m} {b:.2f}" for m, b in batches.items()), flush=True)
            configs[str(mbs)] = {"max_batch_size": mbs, "results": results, "mean_batch_per_stage": batches}
    base = configs.get("0")
    for cfg in configs.values():
        for i, r in enumerate(cfg["results"]):
            ref = base["results"][i] if base else None
            r["requests_per_s_ratio_to_unbatched"] = (r["requests_per_s"] / ref["requests_per_s"]
                                                      if ref and ref["requests_per_s"] else None)
            r["p99_ratio_to_unbatched"] = r["p99_ms"] / ref["p99_ms"] if ref and ref["p99_ms"] else None
    report = {"benchmark": "concurrency", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tenant": args.tenant, "export": str(export), "served_model": manifest["served_model"],
              "reranker": manifest.get("reranker"), "num_items": manifest.get("num_items"),
              "index": manifest.get("index"), "protocol": args.protocol, "seconds_per_level": args.seconds,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
              "configurations": list(configs.values())}
    suffix = f"-{args.name}" if args.name else ""
    out = Path(__file__).parent / "results" / f"concurrency-{args.tenant}{suffix}.json"
    atomic_write_json(out, report)
    print(f"written {out}")


if __name__ == "__main__":
    main()
