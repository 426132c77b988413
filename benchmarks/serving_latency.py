"""Serving latency: the Triton ensemble over HTTP and gRPC vs. the same stages in process (the baseline).

    python benchmarks/serving_latency.py --tenant ml1m [--requests 500]

Needs an export (`tapestry export --tenant ml1m`). Writes benchmarks/results/serving_latency-<tenant>.json with
per-path p50/p99 and the ratio to the in-process pipeline, all measured in the same run on the same users.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.artifacts import atomic_write_json, latest_version
from tapestry.serving.client import RecommendClient
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.triton_server import TritonServer


def _measure(call, users: list[str], warmup: int = 20) -> dict:
    for u in users[:warmup]:
        call(u)
    lat = []
    for u in users:
        t0 = time.perf_counter()
        call(u)
        lat.append((time.perf_counter() - t0) * 1e3)
    a = np.array(lat)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "requests": len(lat),
            "samples_ms": [round(x, 4) for x in lat]}   # the raw latencies: `tapestry report` draws histograms


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tenant", default="ml1m")
    p.add_argument("--root", type=Path)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("-k", type=int, default=10)
    args = p.parse_args()

    export = latest_version(args.tenant, "export", args.root)
    ids = pl.read_parquet(export / "artifacts" / "users.parquet")["user_id"].to_list()
    rng = np.random.default_rng(0)
    users = [ids[i] for i in rng.integers(0, len(ids), args.requests)]
    results = {}
    local = RecommendPipeline.from_artifacts(export / "artifacts")
    results["in_process"] = _measure(lambda u: local.recommend(args.tenant, u, args.k), users)
    with TritonServer(export / "model_repository") as server:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            with RecommendClient(url, protocol=protocol) as client:
                results[f"triton_{protocol}"] = _measure(lambda u: client.recommend(args.tenant, u, args.k), users)
    base = results["in_process"]["p50_ms"]
    for r in results.values():
        r["p50_ratio_to_in_process"] = r["p50_ms"] / base
    report = {"benchmark": "serving_latency", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tenant": args.tenant, "export": str(export), "k": args.k,
              "machine": {"platform": platform.platform(), "processor": platform.processor()},
              "baseline": "in_process", "results": results}
    out = Path(__file__).parent / "results" / f"serving_latency-{args.tenant}.json"
    atomic_write_json(out, report)
    for name, r in results.items():
        print(f"{name:<12} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
              f"x{r['p50_ratio_to_in_process']:.2f} vs in-process")
    print(f"written {out}")


if __name__ == "__main__":
    main()
