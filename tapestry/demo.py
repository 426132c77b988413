"""`tapestry demo` / `make demo`: the whole path once, on real data, with wall time per stage."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from tapestry.artifacts import atomic_write_json, tenant_dir
from tapestry.config import TrainConfig, datasets_dir


@contextmanager
def _timed(timings: dict, stage: str):
    print(f"\n=== {stage} ===", flush=True)
    t0 = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - t0, 2)
    print(f"=== {stage}: {timings[stage]:.1f}s ===", flush=True)


def run_demo(tenant: str, root: Path | None = None, dataset: str = "ml-1m", quick: bool = False) -> dict:
    from tapestry.cli import ml1m_ratings_default, print_metrics, print_recommendations
    from tapestry.ensembles import run_export
    from tapestry.etl import run_etl
    from tapestry.etl.movielens import movielens_1m, movielens_100k
    from tapestry.serving.client import RecommendClient, RecommendError
    from tapestry.serving.pipeline import RecommendPipeline
    from tapestry.serving.triton_server import TritonServer
    from tapestry.training.pipeline import evaluate_models, run_train

    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    directory = datasets_dir() / dataset
    with _timed(timings, "etl"):
        tables = (movielens_1m(directory, ml1m_ratings_default(directory)) if dataset == "ml-1m"
                  else movielens_100k(directory))
        etl = run_etl(tables, tenant, root)
    cfg = TrainConfig.smoke() if quick else TrainConfig()
    with _timed(timings, "train"):
        run_train(tenant, root, cfg)
    with _timed(timings, "evaluate"):
        metrics = evaluate_models(tenant, root)
        print_metrics(metrics)
    with _timed(timings, "export"):
        export = run_export(tenant, root)

    # Two users with history plus one the system has never seen (popularity fallback).
    import polars as pl

    users = pl.read_parquet(etl.path / "user_map.parquet")["user_id"].to_list()
    demo_users = [users[0], users[len(users) // 2], "no-such-user"]
    served = {}
    with _timed(timings, "serve+recommend"):
        with TritonServer(export.model_repository) as server:
            print(f"Triton ready: HTTP {server.http_url}  gRPC {server.grpc_url}")
            for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                with RecommendClient(url, protocol=protocol) as client:
                    for user in demo_users:
                        result = client.recommend(tenant, user, k=10)
                        served[(protocol, user)] = result
                        print_recommendations(result, user, protocol)
                    try:
                        client.recommend("other-tenant", demo_users[0], k=10)
                    except RecommendError as e:
                        print(f"another tenant's request is refused ({protocol}): {e}")
    local = RecommendPipeline.from_artifacts(export.artifact_dir)
    agree = all(served[(p, u)].item_ids == local.recommend(tenant, u, 10).item_ids
                for p in ("http", "grpc") for u in demo_users)
    print(f"\nTriton HTTP == gRPC == in-process pipeline for {len(demo_users)} users: {agree}")
    timings["total"] = round(time.perf_counter() - t_all, 2)
    print("\nwall time per stage (s): " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
    report = {"tenant": tenant, "dataset": dataset, "timings_s": timings, "metrics": metrics,
              "served_equals_in_process": agree}
    atomic_write_json(tenant_dir(tenant, root) / "demo_report.json", report)
    if not agree:
        raise SystemExit("served answers differ from the in-process pipeline")
    return json.loads(json.dumps(report, default=str))
