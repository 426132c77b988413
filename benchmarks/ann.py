"""ANN indexes vs exact Flat: recall@k and queries/s, each index tuned to a target recall first.

    python benchmarks/ann.py [--items 1000000 --dim 64 --queries 1000] [--factories Flat "IVF{nlist},Flat" HNSW32]
    python benchmarks/ann.py --catalogue ml-1m --model artifacts/<tenant>/models/vNNNN/lightgcn.pt

Synthetic items (the default): a two-level Gaussian mixture. --clusters centres (genres) with Zipf sizes
(exponent 0.8: a few big genres, a long tail), each split into sub-clusters of ~20 items (series, artists: the
fine structure learned tables have); directions scaled i^-0.5, which gives the participation-ratio dimension
(~20) measured on ml-1m LightGCN (17) and SASRec (25) item tables; each item = unit(sub-centre + noise) times a
log-normal norm with sigma 0.15 (SASRec's measured log-norm spread; inner-product search must respect norms).
Queries are fresh draws from the same mixture (cluster by Zipf weight, then one of its sub-clusters), not noisy
copies of items: a copy makes its item a trivial top-1 and flatters recall. Catalogue mode indexes a trained
model's item table; queries are its user vectors when the model has `user_embeddings()` (LightGCN), else noisy
copies of random items (recorded in the JSON).

Per index: build seconds, the parameter `tune_index` chose on --tune-queries (tuned to target + --tune-margin so
the held-out recall lands at the target despite sampling noise), recall@k vs exact on the --queries held-out
queries, queries/s at batch 1 (one query per call on one FAISS thread: the serving case, as triton_adapter
sets it) and at batch 64 (OMP_NUM_THREADS threads), p50/p99 single-query latency, and the ratio of each
throughput to Flat's, measured in the same run. For compressed (SQ/PQ) indexes the exact re-score is measured
twice: IndexRefineFlat inside FAISS (what build_index returns) and a manual numpy re-score of the base index's
candidates from the item table, at the same nprobe and k_factor.
Writes benchmarks/results/ann-<name>.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from tapestry.artifacts import atomic_write_json
from tapestry.serving.ann import (IndexConfig, build_index, default_nlist, exact_topk, get_params, recall_at_k,
                                  tune_index)

RESULTS = Path(__file__).resolve().parent / "results"
# Direction scales i^-0.5: participation-ratio dim ~20, as measured on ml-1m LightGCN (17) and SASRec (25) items.
SPECTRUM = 0.5
DEFAULT_FACTORIES = ["Flat", "IVF{nlist},Flat", "IVF{nlist},SQ8", "IVF{nlist},PQ{pq}x4fs", "HNSW32"]


def synthetic(num_items: int, dim: int, num_queries: int, clusters: int, seed: int = 0, sub_size: int = 20,
              fine: float = 0.5):
    """Item table [num_items + 1, dim] (row 0 = padding) and queries from the same two-level Zipf mixture."""
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, dim + 1) ** -SPECTRUM                         # per-direction scale, decaying

    def noise(m: int, scale: np.ndarray) -> np.ndarray:                   # rows of norm `scale`, shaped spectrum
        z = rng.standard_normal((m, dim)) * spectrum
        return z * (scale / np.linalg.norm(z, axis=1))[:, None]

    centres = noise(clusters, np.ones(clusters))
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8                     # Zipf cluster sizes
    weights /= weights.sum()
    spread = rng.uniform(0.5, 1.0, clusters)                              # offset norm / centre norm, per cluster
    # Sub-clusters of ~sub_size items (series, artists, near-duplicates): the fine structure learned tables have.
    n_sub = np.maximum(1, np.ceil(weights * num_items / sub_size)).astype(np.int64)
    first_sub = np.concatenate([[0], np.cumsum(n_sub)[:-1]])
    sub_cluster = np.repeat(np.arange(clusters), n_sub)
    sub_centres = centres[sub_cluster] + noise(len(sub_cluster), spread[sub_cluster])

    def draw(n: int, norm_sigma: float) -> np.ndarray:
        out = np.empty((n, dim), dtype=np.float32)
        for s in range(0, n, 200_000):
            m = min(200_000, n - s)
            c = rng.choice(clusters, m, p=weights)
            sub = first_sub[c] + (rng.random(m) * n_sub[c]).astype(np.int64)
            v = sub_centres[sub] + noise(m, fine * spread[c])
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            out[s:s + m] = v * rng.lognormal(0.0, norm_sigma, (m, 1)) if norm_sigma else v
        return out

    items = np.vstack([np.zeros((1, dim), np.float32), draw(num_items, 0.15)])
    return items, draw(num_queries, 0.0), {
        "clusters": clusters, "zipf_exponent": 0.8, "cluster_spread": [0.5, 1.0], "sub_cluster_size": sub_size,
        "fine_noise": fine, "norm_lognormal_sigma": 0.15, "spectrum": "1/sqrt(i)",
        "queries": "fresh draws from the same mixture (cluster by Zipf weight, then one of its sub-clusters)"}


def catalogue(model_path: Path, num_queries: int, seed: int = 0):
    from tapestry.training.base import Recommender

    model = Recommender.load(model_path, device="cpu")
    items = model.item_embeddings().detach().cpu().float().numpy()
    rng = np.random.default_rng(seed)
    if hasattr(model, "user_embeddings"):
        users = model.user_embeddings().detach().cpu().float().numpy()[1:]
        return items, users[rng.choice(len(users), min(num_queries, len(users)), replace=False)], \
            {"queries": "the model's user vectors", "model": str(model_path)}
    picked = items[rng.integers(1, len(items), num_queries)]
    noise = rng.standard_normal(picked.shape).astype(np.float32) * items[1:].std(0)
    return items, (picked + 0.5 * noise).astype(np.float32), \
        {"queries": "random items + 0.5 x per-dim std Gaussian noise", "model": str(model_path)}


def _throughput(search, queries: np.ndarray, batch: int, max_seconds: float) -> tuple[float, np.ndarray, int]:
    """(queries/s, per-call latencies in ms, queries run): calls of `batch` rows until done or max_seconds."""
    threads = faiss.omp_get_max_threads()
    if batch == 1:   # serving runs FAISS single-threaded (triton_adapter); OpenMP on busy cores costs 10x at nq=1
        faiss.omp_set_num_threads(1)
    try:
        search(queries[:batch])                                           # warm-up (page in, allocate)
        lat, done, t0 = [], 0, time.perf_counter()
        while done < len(queries) and time.perf_counter() - t0 < max_seconds:
            t = time.perf_counter()
            search(queries[done:done + batch])
            lat.append(time.perf_counter() - t)
            done += len(queries[done:done + batch])
    finally:
        faiss.omp_set_num_threads(threads)
    return done / sum(lat), np.array(lat) * 1e3, done


def _measure(name: str, search, queries: np.ndarray, exact: np.ndarray, k: int, max_seconds: float) -> dict:
    _, ids = search(queries)
    qps1, lat, n1 = _throughput(search, queries, 1, max_seconds)
    qps64, _, n64 = _throughput(search, queries, 64, max_seconds)
    return {"factory": name, "recall": recall_at_k(ids, exact), "qps_batch1": qps1, "qps_batch64": qps64,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "timed_queries_batch1": n1, "timed_queries_batch64": n64,
            "min_id": int(ids.min()), "minus_one_ids": int((ids < 0).sum())}


def _manual_rerank(index: faiss.Index, items: np.ndarray, k: int):
    """Search the refine's base index for k * k_factor candidates, re-score them from `items` in numpy."""
    refine = faiss.downcast_index(faiss.downcast_index(index).index)
    base, kf = refine.base_index, int(refine.k_factor)

    def search(q: np.ndarray):
        q = np.ascontiguousarray(q)
        _, cand = base.search(q, k * kf)
        cand = np.where(cand >= 0, cand + 1, 0)                          # internal id i = item i + 1; 0 = none
        scores = np.einsum("qcd,qd->qc", items[cand], q)
        scores[cand == 0] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, 1).argsort(1)[:, ::-1]
        top = np.take_along_axis(top, order, 1)
        ids = np.take_along_axis(cand, top, 1)
        return np.take_along_axis(scores, top, 1), np.where(ids > 0, ids, -1)
    return search


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000, help="held-out queries: recall and timing")
    p.add_argument("--tune-queries", type=int, default=500, help="separate queries tune_index reads")
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--catalogue", choices=["ml-1m", "beauty"])
    p.add_argument("--model", type=Path, help="tapestry Recommender file whose item table is the catalogue")
    p.add_argument("--factories", nargs="+", default=DEFAULT_FACTORIES,
                   help="FAISS factory strings; {nlist} = default_nlist(items), {pq} = dim // 2")
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--tune-margin", type=float, default=0.005)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--max-seconds", type=float, default=20.0, help="cap on each throughput measurement")
    p.add_argument("--name")
    args = p.parse_args()

    t0 = time.perf_counter()
    if args.catalogue:
        if args.model is None or not args.model.exists():
            print(f"[ann] --catalogue {args.catalogue}: no trained model given (--model PATH): skipped")
            return
        items, queries, data_info = catalogue(args.model, args.queries + args.tune_queries)
        name = args.name or args.catalogue
    else:
        items, queries, data_info = synthetic(args.items, args.dim, args.queries + args.tune_queries, args.clusters)
        name = args.name or (f"synthetic-{args.items // 10**6}m" if args.items % 10**6 == 0
                             else f"synthetic-{args.items // 1000}k")
    tune_q, eval_q = queries[:args.tune_queries], queries[args.tune_queries:]
    n, dim = len(items) - 1, items.shape[1]
    exact_tune = exact_topk(items, tune_q, args.k)
    exact_eval = exact_topk(items, eval_q, args.k)
    print(f"[ann] {name}: {n:,} items x {dim}, {len(tune_q)} tuning + {len(eval_q)} eval queries, "
          f"{faiss.omp_get_max_threads()} FAISS threads (data + exact top-{args.k} {time.perf_counter() - t0:.1f}s)",
          flush=True)

    rows = []
    for template in args.factories:
        factory = template.format(nlist=default_nlist(n), pq=dim // 2)
        cfg = IndexConfig(factory=factory, ef_construction=args.ef_construction, target_recall=args.target)
        print(f"[ann] {factory}: building ...", flush=True)
        t = time.perf_counter()
        index = build_index(items, cfg)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        tuned = tune_index(index, items, tune_q, args.target + args.tune_margin, args.k, exact=exact_tune)
        tune_s = time.perf_counter() - t
        row = _measure(factory, lambda q: index.search(q, args.k), eval_q, exact_eval, args.k, args.max_seconds)
        row.update(build_s=build_s, tune_s=tune_s, param=tuned.param, value=tuned.value, tune_recall=tuned.recall,
                   reached=tuned.reached, tuned_extra=tuned.extra, params=get_params(index), tried=tuned.tried,
                   index_mb=faiss.serialize_index(index).nbytes / 2**20)
        rows.append(row)
        print(f"[ann] {factory:<22} build {build_s:6.1f}s tune {tune_s:5.1f}s {tuned.param}={tuned.value} "
              f"recall@{args.k} {row['recall']:.4f} | batch1 {row['qps_batch1']:8.0f} q/s "
              f"(p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms) | batch64 {row['qps_batch64']:8.0f} q/s",
              flush=True)
        if "k_factor_rf" in row["params"]:
            manual = _measure(factory + " +numpy rerank", _manual_rerank(index, items, args.k), eval_q, exact_eval,
                              args.k, args.max_seconds)
            manual.update(build_s=build_s, param=tuned.param, value=tuned.value, params=row["params"])
            rows.append(manual)
            print(f"[ann] {manual['factory']:<22} same index, numpy re-score: recall@{args.k} {manual['recall']:.4f}"
                  f" | batch1 {manual['qps_batch1']:8.0f} q/s | batch64 {manual['qps_batch64']:8.0f} q/s", flush=True)
        del index

    flat = next((r for r in rows if r["factory"] == "Flat"), None)
    for r in rows:
        r["ratio_batch1_vs_flat"] = r["qps_batch1"] / flat["qps_batch1"] if flat else None
        r["ratio_batch64_vs_flat"] = r["qps_batch64"] / flat["qps_batch64"] if flat else None
        r["meets_goal"] = bool(flat and r["recall"] >= args.target and r["ratio_batch1_vs_flat"] >= 10)
    report = {"benchmark": "ann", "name": name, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "items": n, "dim": dim, "k": args.k, "target_recall": args.target, "tune_margin": args.tune_margin,
              "eval_queries": len(eval_q), "tune_queries": len(tune_q), "data": data_info,
              "goal": f"recall@{args.k} >= {args.target} at >= 10x Flat's batch-1 queries/s",
              "machine": {"cpu_count": os.cpu_count(), "faiss_version": faiss.__version__,
                          "faiss_omp_threads": faiss.omp_get_max_threads(), "platform": platform.platform(),
                          "processor": platform.processor(), "loadavg": list(os.getloadavg())},
              "baseline": "Flat", "results": rows, "total_s": time.perf_counter() - t0}
    out = RESULTS / f"ann-{name}.json"
    atomic_write_json(out, report)
    print(f"\n{'factory':<24}{'param':>16}{'recall':>8}{'q/s b1':>10}{'x Flat':>8}{'q/s b64':>10}{'build s':>9}")
    for r in rows:
        ratio = f"{r['ratio_batch1_vs_flat']:.1f}" if flat else "-"
        param = f"{r['param']}={r['value']}" if r.get("param") else "-"
        print(f"{r['factory']:<24}{param:>16}{r['recall']:8.4f}{r['qps_batch1']:10.0f}{ratio:>8}"
              f"{r['qps_batch64']:10.0f}{r['build_s']:9.1f}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
