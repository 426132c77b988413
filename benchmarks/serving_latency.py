"""Serving latency: the Triton ensemble over HTTP and gRPC vs. the same stages in process (the baseline).

    python benchmarks/serving_latency.py --tenant ml1m [--requests 500]
    # K interest vectors vs one, side by side (two exports of one training run: see --exports)
    tapestry export --tenant ml1m --serve sasrec_lightgcn && tapestry export --tenant ml1m --serve comirec
    python benchmarks/serving_latency.py --tenant ml1m --exports v0001,v0002 --name multi_interest

Needs an export (`tapestry export --tenant ml1m`). Writes benchmarks/results/serving_latency-<tenant>[-name].json
with per-path p50/p99 and the ratio to the in-process pipeline, all measured in the same run on the same users.
With several exports, each is served in turn on the same request list and the p99 ratios to the FIRST export are
added (`p99_ratio_to_first`).
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


def measure_export(export: Path, tenant: str, users: list[str], k: int) -> dict:
    results = {}
    local = RecommendPipeline.from_artifacts(export / "artifacts")
    results["in_process"] = _measure(lambda u: local.recommend(tenant, u, k), users)
    with TritonServer(export / "model_repository") as server:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            with RecommendClient(url, protocol=protocol) as client:
                results[f"triton_{protocol}"] = _measure(lambda u: client.recommend(tenant, u, k), users)
    base = results["in_process"]["p50_ms"]
    for r in results.values():
        r["p50_ratio_to_in_process"] = r["p50_ms"] / base
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tenant", default="ml1m")
    p.add_argument("--root", type=Path)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--exports", help="comma-separated export versions (e.g. v0001,v0002) to compare; default: latest")
    p.add_argument("--name", help="suffix of the result file")
    args = p.parse_args()

    latest = latest_version(args.tenant, "export", args.root)
    exports = [latest.parent / v for v in args.exports.split(",")] if args.exports else [latest]
    ids = pl.read_parquet(exports[0] / "artifacts" / "users.parquet")["user_id"].to_list()
    rng = np.random.default_rng(0)
    users = [ids[i] for i in rng.integers(0, len(ids), args.requests)]
    runs = []
    for export in exports:
        manifest = json.loads((export / "artifacts" / "manifest.json").read_text())
        print(f"[latency] {export.name}: {manifest['served_model']} ({manifest.get('num_interests', 1)} vector(s))")
        runs.append({"export": str(export), "served_model": manifest["served_model"],
                     "num_interests": manifest.get("num_interests", 1),
                     "results": measure_export(export, args.tenant, users, args.k)})
    for run in runs[1:]:
        for path, r in run["results"].items():
            r["p99_ratio_to_first"] = r["p99_ms"] / runs[0]["results"][path]["p99_ms"]
    report = {"benchmark": "serving_latency", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tenant": args.tenant, "k": args.k,
              "machine": {"platform": platform.platform(), "processor": platform.processor()},
              "baseline": "in_process", **({"export": runs[0]["export"], "results": runs[0]["results"]}
                                           if len(runs) == 1 else {"runs": runs})}
    suffix = f"-{args.name}" if args.name else ""
    out = Path(__file__).parent / "results" / f"serving_latency-{args.tenant}{suffix}.json"
    atomic_write_json(out, report)
    for run in runs:
        for name, r in run["results"].items():
            extra = f"  p99 x{r['p99_ratio_to_first']:.2f} vs first" if "p99_ratio_to_first" in r else ""
            print(f"{run['served_model']:<18} {name:<12} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                  f"x{r['p50_ratio_to_in_process']:.2f} vs in-process{extra}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
