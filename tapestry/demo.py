"""`tapestry demo` / `make demo`: the whole path once, on real data, with wall time per stage."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from tapestry.artifacts import atomic_write_json, tenant_dir
from tapestry.config import TrainConfig


@contextmanager
def _timed(timings: dict, stage: str):
    print(f"\n=== {stage} ===", flush=True)
    t0 = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - t0, 2)
    print(f"=== {stage}: {timings[stage]:.1f}s ===", flush=True)


def served_path_summary(metrics: dict, manifest: dict, leaderboard: Path | None = None) -> list[str]:
    """Lines comparing the served path's test metrics with the two-tower baseline's: from this run when it trained
    a two-tower, else from the committed multi-seed leaderboard (labelled as such), else said to be missing."""
    served = manifest["served_model"]
    path = manifest.get("ranker_model") if manifest.get("reranker") not in (None, "feature") else f"{served}+rerank"
    if path not in metrics:
        path = served
    test = metrics.get(path, {}).get("test", {})
    ks = [k for k in test if k.startswith(("ndcg@", "recall@")) and not k.endswith("@100")]
    fmt = lambda m: ", ".join(f"{k} {m[k]:.4f}" for k in ks if k in m)  # noqa: E731
    lines = [f"served path {path} (this run, test): {fmt(test)}"]
    if "two_tower" in metrics:
        lines.append(f"two-tower baseline (this run, test): {fmt(metrics['two_tower']['test'])}")
    elif leaderboard is not None and leaderboard.exists():
        board = json.loads(leaderboard.read_text())
        base = board["paths"].get(board["baseline"], {})
        got = ", ".join(f"{k} {base[k]['mean']:.4f} ± {base[k]['ci95']:.4f}" for k in ks if k in base)
        mine = board["paths"].get(path, {})
        mine_txt = ", ".join(f"{k} {mine[k]['mean']:.4f} ± {mine[k]['ci95']:.4f}" for k in ks if k in mine)
        lines.append(f"two-tower baseline {board['baseline']} (committed leaderboard, {len(board['seeds'])} seeds): "
                     f"{got}" + (f"; the same leaderboard gives {path}: {mine_txt}" if mine_txt else ""))
    else:
        lines.append("two-tower baseline: not trained in this run and no committed leaderboard "
                     "(python benchmarks/leaderboard.py run --dataset ml-1m)")
    return lines


def demo_data(dataset: str, fetch: bool = True) -> Path:
    """The folder the demo reads: the whole data set from the first root that has it; else, with fetch=True, the
    official download (pinned, verified, cached: `tapestry datasets fetch`); if that fails, ML-1M's partial copy
    (../shared) when there is one, said loudly; else an error naming the fetch command."""
    from tapestry.etl.datasets import find, locate
    from tapestry.etl.fetch import FetchError, fetch as fetch_dataset

    found = find(dataset)
    if found is not None or not fetch or (dataset == "ml-1m" and os.environ.get("TAPESTRY_ML1M_RATINGS")):
        return found or locate(dataset)
    try:
        return fetch_dataset(dataset)
    except FetchError as e:
        partial = find(dataset, partial=True)
        if partial is None:
            raise
        print(f"[demo] could not fetch the full {dataset}: {e}\n[demo] continuing on the PARTIAL copy at {partial}",
              flush=True)
        return partial


def run_demo(tenant: str, root: Path | None = None, dataset: str = "ml-1m", quick: bool = False,
             fetch: bool = True) -> dict:
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
    directory = demo_data(dataset, fetch)
    with _timed(timings, "etl"):
        tables = (movielens_1m(directory, ml1m_ratings_default(directory)) if dataset == "ml-1m"
                  else movielens_100k(directory))
        data = dict(tables.sources)
        print(f"[demo] data: {data['events']}" + (f" ({data['ratings']})" if "ratings" in data else ""), flush=True)
        etl = run_etl(tables, tenant, root)
    cfg = TrainConfig.smoke() if quick else TrainConfig()
    with _timed(timings, "train"):
        run_train(tenant, root, cfg)
    with _timed(timings, "evaluate"):
        metrics = evaluate_models(tenant, root)
        print_metrics(metrics)
    with _timed(timings, "export"):
        export = run_export(tenant, root)
    from tapestry.config import PROJECT_ROOT

    manifest = json.loads((export.artifact_dir / "manifest.json").read_text())
    board = PROJECT_ROOT / "benchmarks" / "results" / f"leaderboard-{dataset}.json"
    print("\n" + "\n".join(served_path_summary(metrics, manifest, board)))

    # The kinds of request serving answers: a known user; the same user with events newer than the export
    # (RECENT_ITEM_IDS); an anonymous visitor whose session is only recent events (SR-GNN when exported); a visitor
    # with nothing at all (popularity).
    import polars as pl

    users = pl.read_parquet(export.artifact_dir / "users.parquet")
    item_table = pl.read_parquet(export.artifact_dir / "items.parquet")
    items = dict(zip(item_table["item_idx"].to_list(), item_table["item_id"].to_list()))
    known, other = users.row(0, named=True), users.row(len(users) // 2, named=True)
    fresh = [items[i] for i in other["history"][-3:] if i not in set(known["history"])]
    requests = [(known["user_id"], None), (known["user_id"], fresh + ["not-in-catalogue"]),
                ("visitor-1", [items[i] for i in other["history"][-4:]]), ("visitor-2", None)]
    served = {}
    with _timed(timings, "serve+recommend"):
        with TritonServer(export.model_repository) as server:
            print(f"Triton ready: HTTP {server.http_url}  gRPC {server.grpc_url}")
            for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                with RecommendClient(url, protocol=protocol) as client:
                    for n, (user, recent) in enumerate(requests):
                        result = client.recommend(tenant, user, k=10, recent_item_ids=recent)
                        served[(protocol, n)] = result
                        print_recommendations(result, user, protocol, recent)
                    try:
                        client.recommend("other-tenant", known["user_id"], k=10)
                    except RecommendError as e:
                        print(f"another tenant's request is refused ({protocol}): {e}")
    local = RecommendPipeline.from_artifacts(export.artifact_dir)
    # Items and their reasons (REASONS, printed under each item above) alike.
    agree = all((served[(p, n)].item_ids, served[(p, n)].reasons) == (expected.item_ids, expected.reasons)
                for n, (u, r) in enumerate(requests)
                for expected in [local.recommend(tenant, u, 10, recent_item_ids=r)] for p in ("http", "grpc"))
    print(f"\nTriton HTTP == gRPC == in-process pipeline for {len(requests)} requests "
          f"({', '.join(served[('http', n)].strategy for n in range(len(requests)))}): {agree}")
    timings["total"] = round(time.perf_counter() - t_all, 2)
    print("\nwall time per stage (s): " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
    print(f"data: {data['events']}" + (f" ({data['ratings']})" if "ratings" in data else ""))
    report = {"tenant": tenant, "dataset": dataset, "data": data, "timings_s": timings, "metrics": metrics,
              "served_equals_in_process": agree}
    atomic_write_json(tenant_dir(tenant, root) / "demo_report.json", report)
    if not agree:
        raise SystemExit("served answers differ from the in-process pipeline")
    return json.loads(json.dumps(report, default=str))
