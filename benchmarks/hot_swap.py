"""Hot swap under load: requests/s, failed requests and p50/p99 latency before, during and after a swap, then a
rollback, of one tenant served by the multi-tenant Triton server (tapestry.serving.multi_tenant).

    python benchmarks/hot_swap.py --tenant ml100k --dataset ml-100k --root /tmp/hot-swap   # prepares 2 exports
    python benchmarks/hot_swap.py --tenant ml1m                   # a tenant that has two exports already

With --dataset and fewer than two exports, the tenant is prepared first: ETL, then a smoke-sized training and an
export, twice (the second with another seed for the served model, so the two exports recommend differently).
The server starts on the second-newest export; `swap` then serves the newest and `rollback` the older again, while
--clients gRPC clients send requests in a loop. Each request is counted in the phase in which it was SENT, and its
answer is compared with both exports' in-process pipelines (`from_old` / `from_new`; `neither` would be a mix).
Writes benchmarks/results/hot_swap-<tenant>.json.
"""
from __future__ import annotations

import argparse
import platform
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.artifacts import atomic_write_json, stage_dir
from tapestry.config import TrainConfig
from tapestry.etl.datasets import locate
from tapestry.serving import model_control as mc
from tapestry.serving import multi_tenant as mt
from tapestry.serving.client import RecommendClient, RecommendError, ensemble_name
from tapestry.serving.pipeline import RecommendPipeline

QUIET = {"log": lambda *a, **k: None}


def exports(tenant: str, root: Path | None) -> list[Path]:
    base = stage_dir(tenant, "export", root)
    return sorted(p for p in base.iterdir() if p.name[1:].isdigit()) if base.is_dir() else []


def prepare(tenant: str, root: Path | None, dataset: str) -> None:
    """ETL (when missing), then smoke training + export until the tenant has two exports."""
    from tapestry.ensembles import run_export
    from tapestry.etl import run_etl
    from tapestry.etl.movielens import movielens_100k
    from tapestry.training.pipeline import run_train

    if not (stage_dir(tenant, "etl", root) / "LATEST").exists():
        run_etl(movielens_100k(locate(dataset)), tenant, root, **QUIET)
    while len(exports(tenant, root)) < 2:
        seed = len(exports(tenant, root))
        run_train(tenant, root, TrainConfig.smoke(params={"sasrec_lightgcn": {"seed": seed}}), **QUIET)
        print(f"[hot_swap] exported {run_export(tenant, root, **QUIET).path}")


class Load:
    """``clients`` threads, each with its own gRPC client, sending requests in a loop until stopped."""

    def __init__(self, url: str, tenant: str, users: list[str], clients: int, k: int):
        self.records: list[list[tuple]] = [[] for _ in range(clients)]   # (sent, latency_ms, user, items | None)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, tenant, users[i::clients], k, self.records[i]),
                                          daemon=True) for i in range(clients)]

    def _run(self, url, tenant, users, k, out) -> None:
        with RecommendClient(url, protocol="grpc", model_name=ensemble_name(tenant, multi_tenant=True)) as client:
            i = 0
            while not self._stop.is_set():
                user, sent = users[i % len(users)], time.perf_counter()
                try:
                    items = client.recommend(tenant, user, k=k).item_ids
                except RecommendError:
                    items = None
                out.append((sent, (time.perf_counter() - sent) * 1e3, user, items))
                i += 1

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def phase_stats(records: list[tuple], start: float, end: float, old: dict, new: dict) -> dict:
    rows = [r for r in records if start <= r[0] < end]
    ok = np.array([r[1] for r in rows if r[3] is not None])
    return {
        "duration_s": round(end - start, 3), "requests": len(rows),
        "failed": sum(r[3] is None for r in rows), "requests_per_s": round(len(rows) / (end - start), 1),
        "p50_ms": round(float(np.percentile(ok, 50)), 3) if ok.size else None,
        "p99_ms": round(float(np.percentile(ok, 99)), 3) if ok.size else None,
        "from_old": sum(r[3] == old[r[2]] for r in rows if r[3] is not None),
        "from_new": sum(r[3] == new[r[2]] and r[3] != old[r[2]] for r in rows if r[3] is not None),
        "neither": sum(r[3] not in (old[r[2]], new[r[2]]) for r in rows if r[3] is not None),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tenant", default="ml100k")
    p.add_argument("--root", type=Path)
    p.add_argument("--dataset", choices=("ml-100k",), help="prepare the tenant when it has < 2 exports")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--window", type=float, default=10.0, help="seconds measured before and after each swap")
    p.add_argument("--users", type=int, default=300)
    p.add_argument("-k", type=int, default=10)
    args = p.parse_args()

    if args.dataset:
        prepare(args.tenant, args.root, args.dataset)
    old_export, new_export = exports(args.tenant, args.root)[-2:]
    ids = pl.read_parquet(old_export / "artifacts" / "users.parquet")["user_id"].to_list()
    users = [ids[i] for i in np.random.default_rng(0).choice(len(ids), min(args.users, len(ids)), replace=False)]
    expected = {}
    for export in (old_export, new_export):
        local = RecommendPipeline.from_artifacts(export / "artifacts")
        expected[export.name] = {u: local.recommend(args.tenant, u, k=args.k).item_ids for u in users}
    old, new = expected[old_export.name], expected[new_export.name]
    swap_log: list[str] = []
    with mt.serving([args.tenant], args.root, versions={args.tenant: old_export.name}) as server:
        with Load(server.grpc_url, args.tenant, users, args.clients, args.k) as load:
            time.sleep(args.window)   # measurement windows are durations: the load runs meanwhile
            marks = [("before", time.perf_counter())]
            mc.swap(args.tenant, args.root, log=swap_log.append)
            marks.append(("during_swap", time.perf_counter()))
            time.sleep(args.window)
            marks.append(("after_swap", time.perf_counter()))
            mc.rollback(args.tenant, args.root, log=swap_log.append)
            marks.append(("during_rollback", time.perf_counter()))
            time.sleep(args.window)
            marks.append(("after_rollback", time.perf_counter()))
    records = [r for rs in load.records for r in rs]
    starts = [min(r[0] for r in records)] + [t for _, t in marks[:-1]]
    phases = {name: phase_stats(records, s, e, old, new) for (name, e), s in zip(marks, starts)}
    report = {"benchmark": "hot_swap", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tenant": args.tenant, "machine": {"platform": platform.platform(), "processor": platform.processor()},
              "clients": args.clients, "protocol": "grpc", "k": args.k, "users": len(users),
              "old_export": str(old_export), "new_export": str(new_export),
              "answers_differ_for_users": sum(old[u] != new[u] for u in users), "swap_log": swap_log,
              "note": "a request counts in the phase it was SENT in; from_old: the answer equals the old export's "
                      "in-process answer; from_new: equals the new one's and differs from the old; neither: a mix",
              "phases": phases, "failed_total": sum(ph["failed"] for ph in phases.values())}
    out = Path(__file__).parent / "results" / f"hot_swap-{args.tenant}.json"
    atomic_write_json(out, report)
    for name, ph in phases.items():
        print(f"{name:<16} {ph['duration_s']:6.1f}s {ph['requests']:>6} req {ph['requests_per_s']:>7.1f}/s "
              f"failed {ph['failed']}  p50 {ph['p50_ms']} ms  p99 {ph['p99_ms']} ms  "
              f"old/new/neither {ph['from_old']}/{ph['from_new']}/{ph['neither']}")
    print("\n".join(swap_log))
    print(f"written {out}")


if __name__ == "__main__":
    main()
