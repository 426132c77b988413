"""The whole served ensemble over a 1M-item catalogue: exact (Flat) index vs the tuned ANN index, one run.

    python benchmarks/large_catalogue.py [--items 1000000] [--users 2000] [--events-per-user 600]
                                         [--requests 2000] [--levels 1,8] [--root DIR] [--reuse]

A synthetic tenant (`large-catalogue`) with every item in at least one event (the ETL's catalogue is the items
that have events): each user has a taste (one of 1,000 item categories) and draws most events from it, the rest
from a Zipf popularity over the whole catalogue. The item table gives each item its category, as a real catalogue
would: most of the 1M items have one event, so their vectors come from the item tower's category input, not their
IDs (without it they stay near their random start, and no IVF partition of random vectors beats a full scan:
nprobe 3,328 of 4,096 was needed for recall@100 0.95). It then runs the product's own steps, nothing mocked: ETL, training
(popularity + the two-tower retriever, the one model whose training cost does not grow with the catalogue: an
in-batch softmax; one epoch, the newest 20 prefixes per user), and two exports of the same models: `--index Flat`
(exact inner product over 1M vectors) and `--index auto` (IVF + SQ8 with an exact re-score, nprobe tuned to
recall@100 >= 0.95 at export). Each export is served by the real Triton server (dynamic batching on, the default)
and measured with `benchmarks/concurrency.py`'s closed-loop clients (gRPC, known users, fixed seed).

Writes benchmarks/results/large_catalogue-<items>.json: the data set's size, each step's time, and per export and
concurrency level requests/s and p50/p99, with the ANN-to-Flat ratios. --reuse skips generation, ETL and training
when the tenant already has trained models under --root, and the exports when it has a Flat and an ANN one of them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from concurrency import run_level  # noqa: E402 - the same load generator as the concurrency benchmark

from tapestry.artifacts import atomic_write_json, latest_version  # noqa: E402
from tapestry.config import TrainConfig  # noqa: E402
from tapestry.serving.triton_server import TritonServer  # noqa: E402

TENANT = "large-catalogue"
CLUSTERS = 1_000
P_TASTE = 0.7


def synthetic_items(num_items: int) -> pl.DataFrame:
    idx = np.arange(num_items)
    return pl.DataFrame({"item_id": [f"i{i}" for i in idx], "title": [f"item {i}" for i in idx],
                         "category": [f"c{c}" for c in idx % CLUSTERS]})


def synthetic_events(num_items: int, num_users: int, events_per_user: int, seed: int = 0) -> pl.DataFrame:
    """Vectorised (a few seconds at 1.2M events): every item once, spread over the users, the rest by taste."""
    rng = np.random.default_rng(seed)
    total = num_users * events_per_user
    if total < num_items:
        raise ValueError(f"{num_users} users x {events_per_user} events < {num_items} items: some items would have "
                         "no event, and the ETL's catalogue is the items with events")
    users = np.repeat(np.arange(num_users), events_per_user)
    items = np.empty(total, dtype=np.int64)
    cover = rng.permutation(total)[:num_items]                 # one event per item, at random positions
    items[cover] = rng.permutation(num_items)
    rest = np.ones(total, dtype=bool)
    rest[cover] = False
    n = int(rest.sum())
    taste = rng.integers(CLUSTERS, size=num_users)[users[rest]]
    in_taste = rng.random(n) < P_TASTE
    # cluster c holds the items i with i % CLUSTERS == c; Zipf ranks inside it and over the whole catalogue
    within = np.minimum(rng.zipf(1.3, n) - 1, num_items // CLUSTERS - 1)
    popular = np.minimum(rng.zipf(1.2, n) - 1, num_items - 1)
    items[rest] = np.where(in_taste, within * CLUSTERS + taste, popular)
    return pl.DataFrame({
        "user_id": [f"u{u}" for u in users],
        "item_id": [f"i{i}" for i in items],
        "event_type": ["view"] * total,
        "timestamp": 1_600_000_000 + np.arange(total, dtype=np.int64),   # per user in order; users interleave
    })


def prepare(args, log) -> dict:
    """Generate, ETL and train (timings); or nothing when --reuse finds trained models."""
    from tapestry.etl import run_etl
    from tapestry.etl.sources import generic_tables
    from tapestry.training.pipeline import run_train

    times = {}
    if args.reuse:
        try:
            latest_version(TENANT, "models", args.root)
            return {"reused": True}
        except FileNotFoundError:
            pass
    with tempfile.TemporaryDirectory(prefix="tapestry-large-") as tmp:
        t0 = time.perf_counter()
        events = synthetic_events(args.items, args.users, args.events_per_user)
        path, items = Path(tmp) / "events.parquet", Path(tmp) / "items.parquet"
        events.write_parquet(path)
        synthetic_items(args.items).write_parquet(items)
        times["generate_s"] = time.perf_counter() - t0
        log(f"[large] {events.height:,} events over {args.items:,} items, {args.users:,} users "
            f"({times['generate_s']:.1f}s)")
        t0 = time.perf_counter()
        run_etl(generic_tables(path, items), TENANT, args.root)
        times["etl_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_train(TENANT, args.root, TrainConfig(
        models=("popularity", "two_tower"), serve="two_tower", session="",
        params={"two_tower": {"epochs": 1, "max_examples_per_user": 20}}))
    times["train_s"] = time.perf_counter() - t0
    return times


def reusable_exports(root: Path | None) -> dict[str, Path]:
    """The newest export with an exact index ("Flat") and the newest with an ANN one ("auto") of the latest models."""
    from tapestry.artifacts import stage_dir

    try:
        models = str(latest_version(TENANT, "models", root))
    except FileNotFoundError:
        return {}
    found: dict[str, Path] = {}
    for export in sorted(stage_dir(TENANT, "export", root).glob("v[0-9]*"), reverse=True):
        manifest_path = export / "artifacts" / "manifest.json"
        if not manifest_path.is_file():
            continue
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("models_version") == models:
            found.setdefault("Flat" if manifest["index"]["factory"] == "Flat" else "auto", export)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--events-per-user", type=int, default=600)
    p.add_argument("--levels", default="1,8")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--root", type=Path)
    p.add_argument("--reuse", action="store_true")
    args = p.parse_args()
    # A SIGTERM (a killed benchmark) becomes SystemExit, so the servers' context managers stop Triton.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from tapestry.ensembles import run_export

    steps = prepare(args, print)
    exports = reusable_exports(args.root) if args.reuse else {}
    for index in ("Flat", "auto"):
        if index not in exports:
            t0 = time.perf_counter()
            exports[index] = run_export(TENANT, args.root, index=index).path
            steps[f"export_{index}_s"] = time.perf_counter() - t0
    users = pl.read_parquet(exports["Flat"] / "artifacts" / "users.parquet")["user_id"].to_list()
    levels = [int(x) for x in args.levels.split(",")]
    served = {}
    for index, export in exports.items():
        manifest = json.loads((export / "artifacts" / "manifest.json").read_text())
        results = []
        with TritonServer(export / "model_repository") as server:
            for n in levels:
                r = run_level(server.grpc_url, "grpc", TENANT, users, n, args.seconds)
                results.append(r)
                print(f"[large] index {index:<5} {n:>3} clients: {r['requests_per_s']:7.1f} req/s  p50 "
                      f"{r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  failed {r['failed']}", flush=True)
        served[index] = {"export": str(export), "index": manifest["index"], "num_items": manifest["num_items"],
                         "results": results}
    for i, r in enumerate(served["auto"]["results"]):
        flat = served["Flat"]["results"][i]
        r["requests_per_s_ratio_to_flat"] = r["requests_per_s"] / flat["requests_per_s"]
        r["p99_ratio_to_flat"] = r["p99_ms"] / flat["p99_ms"]
    report = {"benchmark": "large_catalogue", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tenant": TENANT, "items": args.items, "users": args.users, "events_per_user": args.events_per_user,
              "steps": steps, "protocol": "grpc", "seconds_per_level": args.seconds,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}, "exports": served}
    out = Path(__file__).parent / "results" / f"large_catalogue-{args.items}.json"
    atomic_write_json(out, report)
    print(f"written {out}")


if __name__ == "__main__":
    main()
