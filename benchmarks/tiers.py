"""Serving tiers side by side on one export: each tier's test quality and request latency, in one run.

    tapestry export --tenant ml-1m --serve sasrec_lightgcn          # an export with a DLRM or fusion reranker
    python benchmarks/tiers.py --tenant ml-1m --dataset ml-1m [--triton]

Quality: test Recall@10 / NDCG@10 (MRR, Recall@100) of the SERVED path, through the shared full-ranking evaluation
(tapestry.training.evaluate): every test user is asked for its top `max_k` by the export's own stages (the online
store holding the history up to the test item: train + valid, as the evaluation's other models see it), and the
answer is a full-catalogue score (list position; -inf for items not recommended, so a target outside the list is
a miss). The stages before the rank stage run once per user; each tier's rank stage then reranks the same filtered
candidates, so the tiers differ by exactly what a tier changes.

Latency: one in-process `RecommendPipeline.recommend` (all five stages, the export's own store, k=10) per request,
the tiers taking turns request by request (a rotating order, so a burst of load on this shared machine hits them
alike); torch and FAISS on one thread, as in the Triton stages. The rank stage alone is timed too, on every test
user's filtered candidates during the quality pass (what a tier adds, without the shared stages). With --triton, also through ONE real Triton server
serving the tiers at once, one tenant per tier (copies of the export: hard-linked artifacts, the tenant renamed),
gRPC requests in the same rotation. Writes benchmarks/results/tiers-<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tapestry.artifacts import atomic_write_json, latest_version
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.pipeline import RecommendPipeline, request_tensors
from tapestry.serving.stage import as_str
from tapestry.serving.tiers import RANK_CLASSES, apply_tier, rank_stage_class, supported_tiers
from tapestry.training.data import InteractionData
from tapestry.training.evaluate import evaluate

RESULTS = Path(__file__).resolve().parent / "results"


def _summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "requests": len(a)}


def tier_pipelines(artifact_dir: Path, manifest: dict, tiers) -> dict[str, RecommendPipeline]:
    """One pipeline per tier sharing every stage but the rank stage (loaded once: the encoder, the index)."""
    base = RecommendPipeline.from_artifacts(artifact_dir, tiers[-1])
    rank_at = next(i for i, s in enumerate(base.stages) if type(s) in RANK_CLASSES.values())
    out = {}
    for tier in tiers:
        stages = list(base.stages)
        stages[rank_at] = rank_stage_class(manifest, tier).from_artifacts(artifact_dir)
        out[tier] = RecommendPipeline(stages)
    return out


class ServedTier:
    """A tier's served answers as a full-catalogue scorer for tapestry.training.evaluate: the item at list
    position p scores -p, every other item -inf (not a candidate: a target the tier did not return ranks after the
    whole list, max_k >= k items, so it is a miss at k)."""

    def __init__(self, answers: dict[int, np.ndarray], num_items: int):
        self.answers, self.num_items = answers, num_items

    def score(self, user_idx: np.ndarray, histories) -> torch.Tensor:
        out = torch.full((len(user_idx), self.num_items), float("-inf"))
        for row, u in enumerate(user_idx):
            items = self.answers[int(u)]
            out[row, torch.from_numpy(items)] = -torch.arange(len(items), dtype=torch.float32)
        return out


def quality(pipes: dict[str, RecommendPipeline], artifact_dir: Path, manifest: dict, data: InteractionData,
            log=print) -> dict[str, dict]:
    tenant, k = manifest["tenant"], int(manifest["max_k"])
    users = pl.read_parquet(artifact_dir / "users.parquet")
    items = pl.read_parquet(artifact_dir / "items.parquet").sort("item_idx")
    item_ids = [""] * (int(items["item_idx"].max()) + 1)
    for idx, iid in items.select("item_idx", "item_id").iter_rows():
        item_ids[idx] = iid
    index_of = {iid: i for i, iid in enumerate(item_ids) if i}
    # The store as of the test item: each user's train + valid history (the evaluation's test protocol).
    hist = data.sequences(("train", "valid"))
    as_of_test = users.with_columns(pl.Series("history", [hist[u].tolist() if u < len(hist) else []
                                                          for u in users["user_idx"].to_list()],
                                              dtype=pl.List(pl.Int64)))
    lookup = FeatureLookup(tenant, manifest["max_len"], users=as_of_test, item_ids=item_ids,
                           num_attrs=manifest["num_user_attrs"])
    first = next(iter(pipes.values())).stages
    rank_at = next(i for i, s in enumerate(first) if type(s) in RANK_CLASSES.values())
    before = RecommendPipeline([lookup, *first[1:rank_at]])
    test_users = data.test["user_idx"].to_numpy()
    user_id = dict(zip(users["user_idx"].to_list(), users["user_id"].to_list()))
    answers = {tier: {} for tier in pipes}
    rank_ms = {tier: [] for tier in pipes}
    t0 = time.perf_counter()
    for n, u in enumerate(test_users):
        env = before.run(request_tensors(tenant, user_id[int(u)], k))
        for j in range(len(pipes)):   # a rotating order, as for the request latency
            tier = list(pipes)[(n + j) % len(pipes)]
            rank = pipes[tier].stages[rank_at]
            inputs = {name: env[name] for name in rank.inputs if name in env}
            out = rank(inputs)   # the top max_k, for the evaluation; timed below at k=10, as a request asks
            t1 = time.perf_counter()
            rank({**inputs, "K": np.array([10], np.int32)})
            rank_ms[tier].append((time.perf_counter() - t1) * 1e3)
            answers[tier][int(u)] = np.array([index_of[as_str(x)] for x in out["ITEM_IDS"]], dtype=np.int64)
        if n % 500 == 0:
            log(f"[tiers] quality: {n}/{len(test_users)} users ({time.perf_counter() - t0:.0f}s)")
    return ({tier: evaluate(ServedTier(answers[tier], data.num_items), data, "test", k=10) for tier in pipes},
            {tier: _summary(ms) for tier, ms in rank_ms.items()})


def latency_in_process(pipes: dict[str, RecommendPipeline], tenant: str, user_ids: list[str], warmup: int) -> dict:
    names = list(pipes)
    timings = {name: [] for name in names}
    for i, user in enumerate(user_ids):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            t0 = time.perf_counter()
            result = pipes[name].recommend(tenant, user, k=10)
            ms = (time.perf_counter() - t0) * 1e3
            assert len(result.item_ids) == 10
            if i >= warmup:
                timings[name].append(ms)
    return {name: _summary(t) for name, t in timings.items()}


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def latency_triton(export: Path, manifest: dict, tiers, user_ids: list[str], warmup: int, log=print) -> dict:
    """One Triton server, one tenant per tier (the export copied under a scratch root, the tenant renamed)."""
    from tapestry.serving import multi_tenant as mt
    from tapestry.serving.client import RecommendClient, ensemble_name

    scratch = Path(tempfile.mkdtemp(prefix="tiers-triton-"))
    try:
        tenants = {}
        for tier in tiers:
            tenant = f"{manifest['tenant']}-{tier}"
            copy = scratch / tenant / "export" / "v0001"
            shutil.copytree(export, copy, copy_function=_link_or_copy,
                            ignore=shutil.ignore_patterns("__pycache__", "manifest.json"))
            atomic_write_json(copy / "artifacts" / "manifest.json", {**manifest, "tenant": tenant, "tier": tier})
            apply_tier(copy / "model_repository", tier, manifest.get("reranker", "feature"))
            (scratch / tenant / "export" / "LATEST").write_text("v0001\n")
            tenants[tier] = tenant
        t0 = time.perf_counter()
        with mt.serving(list(tenants.values()), scratch, timeout=900) as server:
            log(f"[tiers] Triton ready with {len(tenants)} tenants in {time.perf_counter() - t0:.0f}s")
            clients = {tier: RecommendClient(server.grpc_url, protocol="grpc",
                                             model_name=ensemble_name(t, multi_tenant=True))
                       for tier, t in tenants.items()}
            names = list(tenants)
            timings = {name: [] for name in names}
            for i, user in enumerate(user_ids):
                for j in range(len(names)):
                    name = names[(i + j) % len(names)]
                    t1 = time.perf_counter()
                    result = clients[name].recommend(tenants[name], user, k=10)
                    ms = (time.perf_counter() - t1) * 1e3
                    assert len(result.item_ids) == 10
                    if i >= warmup:
                        timings[name].append(ms)
            for c in clients.values():
                c.close()
        return {name: _summary(t) for name, t in timings.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def offline_test(manifest: dict) -> dict:
    """The training run's own test rows (metrics.json) of the served retriever and rankers: the served tiers should
    reproduce them (same protocol), a check that the served path is the evaluated one."""
    path = Path(manifest.get("models_version", "")) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    names = [manifest.get("served_model"), f"{manifest.get('served_model')}+rerank", manifest.get("ranker_model")]
    return {n: {k: round(float(v), 4) for k, v in metrics[n]["test"].items() if k in ("ndcg@10", "recall@10")}
            for n in names if n and isinstance(metrics.get(n, {}).get("test"), dict)}


def run_export_tiers(export: Path, args, log=print) -> dict:
    art = export / "artifacts"
    manifest = json.loads((art / "manifest.json").read_text())
    tiers = supported_tiers(manifest.get("reranker", "feature"))
    data = InteractionData.load(Path(manifest["etl_version"]))
    pipes = tier_pipelines(art, manifest, tiers)
    t0 = time.perf_counter()
    scores, rank_latency = quality(pipes, art, manifest, data, log)
    quality_s = time.perf_counter() - t0
    users = pl.read_parquet(art / "users.parquet")
    ids = dict(zip(users["user_idx"].to_list(), users["user_id"].to_list()))
    user_ids = [ids[int(u)] for u in np.resize(data.test["user_idx"].to_numpy(), args.requests + args.warmup)]
    in_process = latency_in_process(pipes, manifest["tenant"], user_ids, args.warmup)
    triton = latency_triton(export, manifest, tiers, user_ids, args.warmup, log) if args.triton else None
    base, rows = tiers[0], {}
    for tier in tiers:
        q = {key: round(float(v), 4) if isinstance(v, float) else v for key, v in scores[tier].items()}
        rows[tier] = {"rank_stage": rank_stage_class(manifest, tier).__name__, "quality_test": q,
                      "latency_in_process": in_process[tier], "latency_rank_stage_alone": rank_latency[tier],
                      **({"latency_triton_grpc": triton[tier]} if triton else {}),
                      f"vs_{base}": {
                          "ndcg@10": round(scores[tier]["ndcg@10"] / scores[base]["ndcg@10"], 3),
                          "recall@10": round(scores[tier]["recall@10"] / scores[base]["recall@10"], 3),
                          "p50_in_process": round(in_process[tier]["p50_ms"] / in_process[base]["p50_ms"], 3),
                          "p50_rank_stage": round(rank_latency[tier]["p50_ms"] / rank_latency[base]["p50_ms"], 3),
                          **({"p50_triton": round(triton[tier]["p50_ms"] / triton[base]["p50_ms"], 3)}
                             if triton else {})}}
        lat = rows[tier]["latency_in_process"]
        extra = (f", Triton p50 {triton[tier]['p50_ms']:.2f} / p99 {triton[tier]['p99_ms']:.2f} ms" if triton else "")
        log(f"{export.name} {tier:>9} ({rows[tier]['rank_stage']}): NDCG@10 {q['ndcg@10']:.4f}, Recall@10 "
            f"{q['recall@10']:.4f}; rank stage p50 {rank_latency[tier]['p50_ms']:.2f} ms; in-process p50 "
            f"{lat['p50_ms']:.2f} / p99 {lat['p99_ms']:.2f} ms{extra}")
    return {"export": str(export), "models_version": manifest.get("models_version"),
            "served_model": manifest.get("served_model"), "reranker": manifest.get("reranker"),
            "ranker_model": manifest.get("ranker_model"), "num_candidates": manifest.get("num_candidates"),
            "num_items": int(data.num_items - 1), "quality_seconds": round(quality_s, 1),
            "offline_test_of_the_run": offline_test(manifest), "tiers": rows}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tenant", default="ml-1m")
    p.add_argument("--dataset", default="ml-1m", help="names the output file")
    p.add_argument("--root", type=Path)
    p.add_argument("--versions", help="comma-separated export versions, each measured on its own (default: the "
                                      "latest)")
    p.add_argument("--requests", type=int, default=300, help="timed requests per tier")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--triton", action="store_true", help="also time the tiers through one real Triton server")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)
    latest = latest_version(args.tenant, "export", args.root)
    exports = [latest.parent / v for v in args.versions.split(",")] if args.versions else [latest]
    runs = [run_export_tiers(export, args) for export in exports]
    result = {
        "tenant": args.tenant, "dataset": args.dataset,
        "protocol": "leave-one-out test, full ranking (tapestry.training.evaluate) of the served top max_k (100); "
                    "the online store as of the test item (train + valid history)",
        "latency_what": "one request, k=10, batch 1; in process: RecommendPipeline.recommend (5 stages), 1 torch "
                        "thread; rank stage alone: the tier's rank stage on each test user's filtered candidates "
                        "(k=10); triton: gRPC to <tenant>__recommend, one tenant per tier in one server",
        "runs": runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average "
                   f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
        "command": " ".join(["benchmarks/tiers.py", *sys.argv[1:]]),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = args.output or RESULTS / f"tiers-{args.dataset}.json"
    atomic_write_json(out, result)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
