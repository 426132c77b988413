"""Requests/s and latency of the served ensemble at several client concurrencies (closed loop, loopback only).

    python benchmarks/concurrency.py --tenant ml1m [--root DIR] [--levels 1,8,32] [--seconds 10] [--protocol grpc]

Each level runs N client threads, each with its own connection, sending requests back to back for a fixed time
(after a warm-up); known users drawn with a fixed seed. Writes benchmarks/results/concurrency-<tenant>[-name].json
with requests/s, p50/p99 and failed requests per level, and the requests/s ratio of each level to concurrency 1,
measured in the same run. This is the baseline the dynamic-batching work is compared against.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.artifacts import atomic_write_json, latest_version
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tenant", default="ml1m")
    p.add_argument("--root", type=Path)
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--protocol", choices=("http", "grpc"), default="grpc")
    p.add_argument("--name", help="suffix of the result file")
    args = p.parse_args()

    export = latest_version(args.tenant, "export", args.root)
    users = pl.read_parquet(export / "artifacts" / "users.parquet")["user_id"].to_list()
    manifest = json.loads((export / "artifacts" / "manifest.json").read_text())
    levels = [int(x) for x in args.levels.split(",")]
    results = []
    with TritonServer(export / "model_repository") as server:
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        for n in levels:
            r = run_level(url, args.protocol, args.tenant, users, n, args.seconds)
            results.append(r)
            print(f"[concurrency] {n:>3} clients: {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                  f"p99 {r['p99_ms']:7.2f} ms  failed {r['failed']}", flush=True)
    base = results[0]["requests_per_s"]
    for r in results:
        r["requests_per_s_ratio_to_first"] = r["requests_per_s"] / base if base else None
    report = {"benchmark": "concurrency", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tenant": args.tenant, "export": str(export), "served_model": manifest["served_model"],
              "reranker": manifest.get("reranker"), "protocol": args.protocol, "seconds_per_level": args.seconds,
              "max_batch_size": 0, "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
              "results": results}
    suffix = f"-{args.name}" if args.name else ""
    out = Path(__file__).parent / "results" / f"concurrency-{args.tenant}{suffix}.json"
    atomic_write_json(out, report)
    print(f"written {out}")


if __name__ == "__main__":
    main()
