"""Business rules and explanations on one tenant's export: quality with and without each rule, and what
explanations and rules add to a request, side by side in one run.

    tapestry train --tenant ml1m            # (after `tapestry etl --tenant ml1m --dataset ml-1m`)
    python benchmarks/rules_quality.py --tenant ml1m --dataset ml-1m [--root R]

Quality: every test user of the export's ETL (leave-one-out: one held-out test item each) is asked for its top 10
through the served stages, in process (tapestry.serving: feature_lookup -> user_encoder -> retrieval -> filter ->
rerank), with a time-correct history: the online store holds each user's train + valid events only (the exported
store holds the test item too, which the filter would then drop). The first four stages run once per user; the
rerank stage once per rule set on the same candidates. Per rule set: NDCG@10 and HR@10 of the test item,
coverage@10 (distinct items recommended / catalogue), intra-list diversity two ways (1 - mean pairwise cosine of
the served model's item vectors, what MMR optimises; 1 - mean pairwise Jaccard of the genre sets, which it does not
see), the share of listed items that are "fresh", and the mean list length (caps are strict: lists may be short).

Latency: the whole in-process request (the five stages, one user, K = 10) without explanations (the rerank stage's
explainer replaced by one that returns empty reasons), with explanations (what is served), and with explanations +
the "combined" rules; the three take turns request by request (a rotating order), so load on this shared machine
hits all alike. Torch and FAISS run one thread, as in the Triton stages. This is not Triton's end-to-end latency
(benchmarks/serving_latency.py measures that), but the explanation and rule work is exactly the code Triton runs.
Writes benchmarks/results/rules_quality-<dataset>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import torch

from tapestry.artifacts import atomic_write_json, latest_version
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.filtering import CandidateFilter
from tapestry.serving.item_facts import ItemFacts
from tapestry.serving.pipeline import RecommendPipeline, request_tensors
from tapestry.serving.rerank import Rerank
from tapestry.serving.retrieval import Retrieval
from tapestry.serving.rules import RuleRanker, Rules
from tapestry.serving.stage import export_manifest
from tapestry.serving.user_encoder import UserEncoder
from tapestry.training.data import InteractionData

RESULTS = Path(__file__).resolve().parent / "results"
K = 10


def fresh_window_days(facts: ItemFacts, share: float = 0.1) -> float:
    """The window that makes the newest `share` of the catalogue (by first event) fresh. A data set's own
    calendar decides what "new" can mean: on ML-1M every film is rated within its first weeks, so a fixed 90 days
    would mark nothing."""
    seen = facts.first_seen[facts.first_seen >= 0]
    return round(float(facts.data_end - np.quantile(seen, 1 - share)) / 86_400, 1)


def rule_sets(popular_ids: list[str], fresh_days: float) -> dict[str, Rules]:
    return {
        "none": Rules(),
        "max_per_genre_2": Rules(max_per={"genre": 2}),
        "max_per_genre_3": Rules(max_per={"genre": 3}),
        "mmr_0.2": Rules(mmr_weight=0.2),
        "mmr_0.4": Rules(mmr_weight=0.4),
        "fresh_boost_0.3": Rules(fresh_boost=0.3, fresh_days=fresh_days),
        "blocked_top20_popular": Rules(blocked_item_ids=tuple(popular_ids[:20])),
        "combined": Rules(max_per={"genre": 3}, mmr_weight=0.2, fresh_boost=0.1, fresh_days=fresh_days),
    }


class NoExplanations:
    def reasons(self, top, history):
        return [b""] * len(top)


def _summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "requests": len(a)}


def time_correct_lookup(art: Path, data: InteractionData, tenant: str) -> FeatureLookup:
    """feature_lookup over a store holding each user's train + valid events (not the test item)."""
    m = export_manifest(art)
    hist = data.sequences(("train", "valid"))
    users = pl.read_parquet(art / "users.parquet")
    users = users.with_columns(pl.Series("history", [hist[u].tolist() for u in users["user_idx"].to_list()],
                                         dtype=pl.List(pl.Int64)))
    items = pl.read_parquet(art / "items.parquet").sort("item_idx")
    item_ids = [""] * (int(items["item_idx"].max()) + 1)
    for idx, iid in items.select("item_idx", "item_id").iter_rows():
        item_ids[idx] = iid
    return FeatureLookup(tenant, m["max_len"], users=users, item_ids=item_ids, num_attrs=m["num_user_attrs"])


def component_costs(upstream: RecommendPipeline, plain: Rerank, ruled: Rerank, users: list[str],
                    tenant: str) -> dict:
    """The explainer's and the rules' own work per request, away from the rest of the request: each call's best
    of 5 (a preempted call on this shared machine is not the code's cost), then the median over requests."""
    explain, rules, argsort = [], [], []
    for user in users:
        env = upstream.run(request_tensors(tenant, user, K))
        k, cands, scores, read, attrs, _, history = plain._request({n: env[n] for n in plain.inputs})
        final = plain.reranker.score_many([plain.reranker.features(cands, scores, read, attrs)])[0]
        top = cands[np.argsort(-final, kind="stable")[:k]]
        for sink, call in ((explain, lambda: plain.explainer.reasons(top, history)),
                           (rules, lambda: ruled.rules.top(cands, final, k)),
                           (argsort, lambda: np.argsort(-final, kind="stable")[:k])):
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                call()
                best = min(best, time.perf_counter() - start)
            sink.append(best * 1e6)
    return {"explanations": round(float(np.median(explain)), 1),
            "combined_rules_top_k": round(float(np.median(rules)), 1),
            "plain_top_k_argsort": round(float(np.median(argsort)), 1), "requests": len(users)}


def list_metrics(lists: list[np.ndarray], targets: np.ndarray, facts: ItemFacts, genre_sets: list[frozenset],
                 fresh: np.ndarray, num_items: int) -> dict:
    ndcg, hits, ild_cos, ild_genre, fresh_share, lengths = [], [], [], [], [], []
    for top, target in zip(lists, targets):
        where = np.flatnonzero(top == target)
        hits.append(float(where.size > 0))
        ndcg.append(1.0 / np.log2(where[0] + 2) if where.size else 0.0)
        lengths.append(len(top))
        fresh_share.append(float(fresh[top].mean()) if len(top) else 0.0)
        if len(top) < 2:
            continue
        v = facts.vectors[top].astype(np.float64)
        sims = v @ v.T
        pairs = np.triu_indices(len(top), 1)
        ild_cos.append(1.0 - float(sims[pairs].mean()))
        jac = [len(genre_sets[a] & genre_sets[b]) / max(len(genre_sets[a] | genre_sets[b]), 1)
               for a, b in zip(top[pairs[0]], top[pairs[1]])]
        ild_genre.append(1.0 - float(np.mean(jac)))
    return {"ndcg@10": round(float(np.mean(ndcg)), 4), "hr@10": round(float(np.mean(hits)), 4),
            "coverage@10": round(len(set(np.concatenate(lists).tolist())) / (num_items - 1), 4),
            "ild_cosine": round(float(np.mean(ild_cos)), 4), "ild_genre": round(float(np.mean(ild_genre)), 4),
            "fresh_share": round(float(np.mean(fresh_share)), 4), "mean_length": round(float(np.mean(lengths)), 3)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tenant", default="ml1m")
    p.add_argument("--dataset", default="ml-1m", help="names the output file")
    p.add_argument("--root", type=Path)
    p.add_argument("--users", type=int, default=0, help="test users for quality (0: all)")
    p.add_argument("--requests", type=int, default=600, help="timed requests per latency variant")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)

    export = latest_version(args.tenant, "export", args.root)
    art = export / "artifacts"
    facts = ItemFacts.load(art)
    if facts is None:
        raise SystemExit(f"{export} has no item_facts.npz (exported before explanations): run `tapestry export`")
    m = export_manifest(art)
    data = InteractionData.load(Path(m["etl_version"]))
    lookup = time_correct_lookup(art, data, args.tenant)
    upstream = RecommendPipeline([lookup, *(s.from_artifacts(art) for s in (UserEncoder, Retrieval, CandidateFilter))])
    base = Rerank.from_artifacts(art)
    idx_of = {iid: i for i, iid in enumerate(base.item_ids) if i > 0}

    popularity = np.load(art / "popularity.npy")
    popular_ids = [base.item_ids[i] for i in np.argsort(-popularity, kind="stable") if i > 0]
    fresh_days = fresh_window_days(facts)
    sets = rule_sets(popular_ids, fresh_days)
    stages = {}
    for name, rules in sets.items():
        stage = copy.copy(base)
        stage.rules = RuleRanker(rules, facts, base.item_ids) if rules.active else None
        stages[name] = stage

    test = data.test.sort("user_idx")
    user_ids = dict(zip(*pl.read_parquet(art / "users.parquet").select("user_idx", "user_id")
                        .to_dict(as_series=False).values()))
    rows = [(user_ids[u], t) for u, t in test.select("user_idx", "item_idx").iter_rows() if u in user_ids]
    if args.users:
        rows = rows[: args.users]
    genre_sets = [frozenset() for _ in range(len(base.item_ids))]
    for i in range(1, facts.num_items):
        genre_sets[i] = frozenset(n for n in (facts.entity_names[j] for j in facts.entities_of(i))
                                  if n.startswith("genre="))
    fresh = stages["combined"].rules.fresh

    t0 = time.perf_counter()
    lists = {name: [] for name in stages}
    for user, _ in rows:
        env = upstream.run(request_tensors(args.tenant, user, K))
        for name, stage in stages.items():
            out = stage({n: env[n] for n in stage.inputs})
            lists[name].append(np.array([idx_of[x.decode()] for x in out["ITEM_IDS"]], dtype=np.int64))
    quality_s = time.perf_counter() - t0
    targets = np.array([t for _, t in rows])
    quality = {name: list_metrics(lists[name], targets, facts, genre_sets, fresh, m["num_items"]) for name in stages}
    plain = quality["none"]
    for name, q in quality.items():
        q["ndcg@10_change_pct"] = round(100 * (q["ndcg@10"] / plain["ndcg@10"] - 1), 2) if plain["ndcg@10"] else None
        q["ild_genre_change_pct"] = round(100 * (q["ild_genre"] / plain["ild_genre"] - 1), 2)

    # Latency: the full in-process request, three variants in turn.
    quiet = copy.copy(base)
    quiet.explainer = NoExplanations()
    variants = {"no_explanations": quiet, "explanations": base, "explanations+combined_rules": stages["combined"]}
    pipelines = {name: RecommendPipeline([*upstream.stages, stage]) for name, stage in variants.items()}
    names = list(pipelines)
    timings = {name: [] for name in names}
    requests = [user for user, _ in rows]
    requests = (requests * (1 + (args.requests + args.warmup) // len(requests)))[: args.requests + args.warmup]
    for i, user in enumerate(requests):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            tensors = request_tensors(args.tenant, user, K)
            start = time.perf_counter()
            pipelines[name].run(tensors)
            ms = (time.perf_counter() - start) * 1e3
            if i >= args.warmup:
                timings[name].append(ms)
    latency = {name: _summary(timings[name]) for name in names}
    components = component_costs(upstream, base, stages["combined"], requests[: min(300, len(requests))], args.tenant)
    base_p50 = latency["no_explanations"]["p50_ms"]
    for name in names:
        latency[name]["p50_change_pct"] = round(100 * (latency[name]["p50_ms"] / base_p50 - 1), 2)

    result = {
        "tenant": args.tenant, "dataset": args.dataset, "export": str(export), "served_model": m["served_model"],
        "reranker": m.get("reranker"), "etl_version": m["etl_version"], "k": K, "test_users": len(rows),
        "quality_seconds": round(quality_s, 1),
        "what": {"quality": "served stages in process; store = train+valid history; leave-one-out test item",
                 "latency": "whole in-process request (5 stages, batch 1, K=10), 1 torch/FAISS thread, rotating "
                            "variants; not Triton's end-to-end latency",
                 "ild_cosine": "1 - mean pairwise cosine of the served model's item vectors",
                 "ild_genre": "1 - mean pairwise Jaccard of genre sets",
                 "fresh": f"first seen within {fresh_days} days of the data's last event (the newest 10 % of "
                          "the catalogue)"},
        "rules": {name: {k: (v if k != "blocked_item_ids" else f"{len(v)} ids") for k, v in vars(r).items() if v}
                  for name, r in sets.items()},
        "quality": quality, "latency": latency, "component_us": components,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average "
                   f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
    }
    out = args.output or RESULTS / f"rules_quality-{args.dataset}.json"
    atomic_write_json(out, json.loads(json.dumps(result, default=list)))
    print(f"{'rules':<24}{'NDCG@10':>9}{'change':>9}{'cov@10':>8}{'ILD cos':>9}{'ILD genre':>10}{'fresh':>7}{'len':>6}")
    for name, q in quality.items():
        print(f"{name:<24}{q['ndcg@10']:>9.4f}{q['ndcg@10_change_pct']:>8.1f}%{q['coverage@10']:>8.3f}"
              f"{q['ild_cosine']:>9.3f}{q['ild_genre']:>10.3f}{q['fresh_share']:>7.3f}{q['mean_length']:>6.1f}")
    for name, row in latency.items():
        print(f"{name:>28}: p50 {row['p50_ms']:.2f} ms ({row['p50_change_pct']:+.1f} %), p99 {row['p99_ms']:.2f} ms")
    print("isolated per-request cost (us, median over requests of the best of 5 calls): "
          + ", ".join(f"{k} {v}" for k, v in components.items()))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
