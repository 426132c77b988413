"""Ingest freshness: the time from appending an event line to the file `tapestry ingest --follow` reads until the
real Triton server's answer reflects it, with the plain request latency of the same server as the baseline.

    python benchmarks/ingest_freshness.py [--tenant ml100k] [--root DIR] [--events 30] [--poll-interval 0.2]

Without --root (or with a root whose tenant has no export yet) the tenant is built first the way the integration
tests build theirs: ML-100K ETL, smoke-sized training, export (a temp root is deleted at the end). The benchmark
starts its own redis-server (free port, temp dir), loads the export into it, serves the export with Triton reading
that Redis (TAPESTRY_REDIS_URL in its environment) and runs `tapestry ingest --follow` as a subprocess on a CSV
file. Per event (distinct users, fixed seed): the user's top-10 over gRPC; after a random pause in
[0, poll interval) (so an append does not always land at the same point of ingest's polling cycle) one valid
`view` line (the user, the top-1 item, a timestamp newer than any in the data set) is appended and flushed (t0);
then the user is asked again, back to back, until the item has left the answer (an ingested event joins the
seen set, which the filter stage removes): t1. A wait over --timeout seconds counts as "not visible".
Writes benchmarks/results/ingest_freshness-<tenant>.json: per-event latency and polls, p50/p90/max, the ingest
poll interval, the not-visible count, request-latency p50/p99 and the ratio freshness p50 / request p50.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.artifacts import atomic_write_json, latest_version, stage_dir
from tapestry.config import DEFAULT_MODELS, TrainConfig
from tapestry.etl.datasets import locate
from tapestry.online.local_redis import LocalRedis
from tapestry.online.load import load_export_into_redis
from tapestry.online.store import REDIS_URL_ENV, RedisStore
from tapestry.serving.client import RecommendClient
from tapestry.serving.triton_server import TritonServer

QUIET = {"log": lambda *a, **k: None}
HEADER = "user_id,item_id,event_type,timestamp\n"


def prepare(tenant: str, root: Path) -> Path:
    """The latest export of `tenant` under `root`, built first (ML-100K, smoke training) when there is none."""
    if not (stage_dir(tenant, "export", root) / "LATEST").exists():
        from tapestry.ensembles import run_export
        from tapestry.etl import run_etl
        from tapestry.etl.movielens import movielens_100k
        from tapestry.training.pipeline import run_train

        t0 = time.perf_counter()
        run_etl(movielens_100k(locate("ml-100k")), tenant, root, **QUIET)
        run_train(tenant, root, TrainConfig.smoke(models=DEFAULT_MODELS), **QUIET)
        run_export(tenant, root, **QUIET)
        print(f"[freshness] built tenant {tenant} under {root} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return latest_version(tenant, "export", root)


def start_ingest(tenant: str, root: Path, source: Path, url: str, poll: float, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tapestry.cli", "ingest", "--tenant", tenant, "--source", str(source), "--follow",
           "--root", str(root), "--redis", url, "--poll-interval", str(poll)]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, REDIS_URL_ENV: url, "TAPESTRY_HOME": str(root)},
                                start_new_session=True)


def stop_ingest(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)      # cli_ingest ends a follow run cleanly after the current batch
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_ingesting(proc: subprocess.Popen, events, store: RedisStore, log: Path, timeout: float = 120) -> float:
    """Append an event of a fresh user and wait until the store has it: ingest is up and following."""
    t0 = time.perf_counter()
    events.write(f"freshness-warmup,{first_item(store)},view,{int(time.time())}\n")
    events.flush()
    while store.get("freshness-warmup") is None:
        if proc.poll() is not None or time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"tapestry ingest is not applying events; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return time.perf_counter() - t0


def first_item(store: RedisStore) -> str:
    items = pl.read_parquet(Path(store.metadata().export_version) / "items.parquet", columns=["item_id", "item_idx"])
    return items.filter(pl.col("item_idx") > 0)["item_id"][0]


def pct(a: list[float]) -> dict:
    x = np.array(a)
    return {"p50_ms": float(np.percentile(x, 50)), "p90_ms": float(np.percentile(x, 90)),
            "p99_ms": float(np.percentile(x, 99)), "max_ms": float(x.max()), "mean_ms": float(x.mean())} \
        if x.size else {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tenant", default="ml100k")
    p.add_argument("--root", type=Path, help="artifact root (default: a temp root, built and deleted)")
    p.add_argument("--events", type=int, default=30, help="events measured, one per distinct user")
    p.add_argument("--poll-interval", type=float, default=0.2, help="ingest --poll-interval (its CLI default 0.2)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds after which an event counts as not visible")
    p.add_argument("--requests", type=int, default=300, help="plain requests for the baseline latency")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # unwind the ExitStack: stop every process
    rng = np.random.default_rng(args.seed)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tapestry-freshness-")))
        root = (args.root or work / "artifacts").resolve()
        export = prepare(args.tenant, root)
        users = pl.read_parquet(export / "artifacts" / "users.parquet")["user_id"].to_list()
        chosen = [users[i] for i in rng.choice(len(users), min(args.events, len(users)), replace=False)]

        redis = stack.enter_context(LocalRedis(work / "redis"))
        load_export_into_redis(export / "artifacts", redis.url, **QUIET)
        store = RedisStore(redis.url, args.tenant)
        stack.callback(store.close)
        source, ingest_log = work / "events.csv", work / "ingest.log"
        source.write_text(HEADER)
        ingest = start_ingest(args.tenant, root, source, redis.url, args.poll_interval, ingest_log)
        stack.callback(stop_ingest, ingest)
        server = stack.enter_context(TritonServer(export / "model_repository", env={REDIS_URL_ENV: redis.url}))
        client = stack.enter_context(RecommendClient(server.grpc_url, protocol="grpc"))
        events = stack.enter_context(open(source, "a", encoding="utf-8"))
        ready_s = wait_until_ingesting(ingest, events, store, ingest_log)
        print(f"[freshness] redis {redis.url}, triton {server.grpc_url}, ingest following {source} "
              f"(first event applied {ready_s:.1f}s after the append)", flush=True)

        # Baseline: plain request latency of the same server, same users, before any of them is touched.
        for u in chosen[:20]:
            client.recommend(args.tenant, u, k=10)
        request_ms = []
        for i in range(args.requests):
            t = time.perf_counter()
            client.recommend(args.tenant, chosen[i % len(chosen)], k=10)
            request_ms.append((time.perf_counter() - t) * 1e3)

        per_event = []
        for user in chosen:
            before = client.recommend(args.tenant, user, k=10)
            item = before.item_ids[0]
            time.sleep(float(rng.uniform(0, args.poll_interval)))
            events.write(f"{user},{item},view,{int(time.time())}\n")
            events.flush()
            t0, polls, seen_ms = time.perf_counter(), 0, None
            while time.perf_counter() - t0 < args.timeout:
                polls += 1
                if item not in client.recommend(args.tenant, user, k=10).item_ids:
                    seen_ms = (time.perf_counter() - t0) * 1e3
                    break
            per_event.append({"user_id": user, "item_id": item, "strategy_before": before.strategy,
                              "latency_ms": seen_ms, "polls": polls})
        stop_ingest(ingest)
        ingest_summary = [ln for ln in ingest_log.read_text().splitlines() if ln.startswith("[ingest]")]
        load = os.getloadavg()

    visible = [e["latency_ms"] for e in per_event if e["latency_ms"] is not None]
    fresh, req = pct(visible), pct(request_ms)
    ratio = fresh["p50_ms"] / req["p50_ms"] if fresh["p50_ms"] is not None else None
    report = {
        "benchmark": "ingest_freshness", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tenant": args.tenant, "export": str(export), "protocol": "grpc", "k": 10, "seed": args.seed,
        "ingest_poll_interval_s": args.poll_interval, "timeout_s": args.timeout,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "loadavg_at_end": [round(x, 2) for x in load]},
        "note": "latency: from the flushed append to the first gRPC answer without the appended item (polled back "
                "to back); a random pause in [0, poll interval) precedes each append; ingest, Triton, Redis and "
                "this client share the machine's cores",
        "events": len(per_event), "not_visible": len(per_event) - len(visible),
        "freshness": fresh, "polls_per_event_mean": float(np.mean([e["polls"] for e in per_event])),
        "request_latency": {**req, "requests": len(request_ms)},
        "freshness_p50_over_request_p50": ratio, "ingest_log": ingest_summary, "per_event": per_event,
    }
    out = Path(__file__).parent / "results" / f"ingest_freshness-{args.tenant}.json"
    atomic_write_json(out, report)
    f = {k: (round(v, 1) if v is not None else None) for k, v in fresh.items()}
    print(f"[freshness] {len(per_event)} events, poll interval {args.poll_interval}s: freshness p50 {f['p50_ms']} "
          f"p90 {f['p90_ms']} max {f['max_ms']} ms, not visible {report['not_visible']}; request p50 "
          f"{req['p50_ms']:.2f} ms; freshness p50 / request p50 = {ratio and round(ratio, 1)}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
