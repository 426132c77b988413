"""The DLRM ranker against retrieval alone and today's feature reranker, on one tenant's trained retrievers.

    tapestry etl   --tenant ml1m --dataset ml-1m
    tapestry train --tenant ml1m                      # popularity, lightgcn, sasrec_lightgcn (+ feature reranker)
    python benchmarks/dlrm.py --tenant ml1m --dataset ml-1m [--configs '[{...}, {...}]']

Reads the latest models version (the served retriever, LightGCN, rerank.npz) and, in one run, writes
benchmarks/results/dlrm-<dataset>.json with:
- selection: every DLRM config in --configs (default: the DLRMConfig defaults) trained in one process, judged on
  its validation holdout (NDCG@10 of the target within the candidates, beside retrieval order on the same lists);
  the KG ablation (kg_weight 0 vs > 0) is one of these rows. Test data are not looked at here.
- quality: the best config on the holdout, then test NDCG@10 / Recall@10 once for the served path with
  retrieval only, with the feature reranker, and with the DLRM (same candidates, full-ranking protocol);
- throughput: the chosen config trained for `--epochs-throughput` epochs in one process and in 2 processes
  (torchrun, TorchRec-sharded tables, gloo): examples (request, candidate rows) per second;
- latency: rerank of 200 candidates per request, DLRM vs feature reranker, p50/p99 over the same requests.
Torch runs single-threaded (as in the Triton stage, and fair to the shared 2-core machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from tapestry.artifacts import atomic_write_json, latest_version
from tapestry.training import registry
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.evaluate import evaluate
from tapestry.training.pipeline import RERANK_FILE, trained_config
from tapestry.training.rerank_fit import _candidates, evaluate_reranked
from tapestry.inference.feature_reranker import FeatureReranker

RESULTS = Path(__file__).resolve().parent / "results"


def _fit(models: dict, data, params: dict, processes: int = 1):
    ranker = registry.build("dlrm", params, device="cpu", progress=True)
    ranker.processes = processes
    ranker.bind(models)
    t0 = time.perf_counter()
    ranker.fit(data)
    return ranker, time.perf_counter() - t0


def _latency(fn, requests, warmup: int = 20) -> dict:
    for r in requests[:warmup]:
        fn(*r)
    lat = []
    for r in requests:
        t0 = time.perf_counter()
        fn(*r)
        lat.append((time.perf_counter() - t0) * 1e3)
    a = np.array(lat)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "requests": len(lat)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tenant", default="ml1m")
    p.add_argument("--dataset", default="ml-1m", help="names the output file")
    p.add_argument("--root", type=Path)
    p.add_argument("--configs", default="[{}]", help="JSON list of DLRM param overrides to select among")
    p.add_argument("--epochs-throughput", type=int, default=2)
    p.add_argument("--latency-requests", type=int, default=300)
    p.add_argument("--skip", default="", help="comma list of parts to skip: throughput,latency")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    skip = set(filter(None, args.skip.split(",")))

    model_dir = latest_version(args.tenant, "models", args.root)
    cfg = trained_config(model_dir)
    data = InteractionData.load(Path((model_dir / "etl_version.txt").read_text().strip()))
    models: dict[str, Recommender] = {}
    for name in cfg["models"]:
        models[name] = Recommender.load(model_dir / registry.get(name).filename, device="cpu")
        models[name].bind(dict(models))
    served = cfg["serve"]
    reranker = FeatureReranker.load(model_dir / RERANK_FILE)
    n_cands = cfg.get("rerank", {}).get("num_candidates", 100)
    out = {"tenant": args.tenant, "dataset": args.dataset, "models_version": str(model_dir), "retriever": served,
           "num_candidates": n_cands, "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
           "selection": []}

    # ---- selection on the validation holdout ----------------------------------------------------------------
    best = None
    for params in json.loads(args.configs):
        params = {"retriever": served, "num_candidates": n_cands, **params}
        ranker, seconds = _fit(models, data, params)
        r = ranker.report
        row = {"params": params, "holdout_ndcg@10": r["holdout_final_ndcg@10"],
               "holdout_retrieval_ndcg@10": r["holdout_retrieval_ndcg@10"], "epochs": len(r["history"]),
               "task_mix": r["task_mix"], "temperature": r["temperature"], "fit_seconds": round(seconds, 1),
               "train_lists": r["train_lists"], "holdout_lists": r["holdout_lists"]}
        print(json.dumps(row), flush=True)
        out["selection"].append(row)
        if best is None or row["holdout_ndcg@10"] > best[0]["holdout_ndcg@10"]:
            best = (row, ranker)
    row, ranker = best
    out["chosen"] = row["params"]
    out["chosen_config"] = dataclasses.asdict(ranker.cfg)       # every resolved hyper-parameter

    # ---- quality: test, once, for the chosen config ---------------------------------------------------------
    k = 10
    quality = {"retrieval_only": evaluate(models[served], data, "test", k=k),
               "feature_reranker": evaluate_reranked(models[served], reranker, data, k=k, num_candidates=n_cands),
               "dlrm": evaluate(ranker, data, "test", k=k)}
    base = quality["retrieval_only"][f"ndcg@{k}"]
    for q in quality.values():
        q["relative_to_retrieval_only"] = q[f"ndcg@{k}"] / base - 1.0
    out["quality_test"] = quality
    print(json.dumps({k_: round(v[f"ndcg@{k}"], 4) for k_, v in quality.items()}), flush=True)

    # ---- training throughput: 1 process vs 2 sharded --------------------------------------------------------
    if "throughput" not in skip:
        params = {**row["params"], "epochs": args.epochs_throughput, "patience": args.epochs_throughput + 1}
        tp = {}
        for procs in (1, 2):
            r, seconds = _fit(models, data, params, processes=procs)
            tp[f"{procs}_process"] = {"examples_per_second": r.report["examples_per_second"],
                                      "train_seconds": r.report["train_seconds"], "fit_seconds": round(seconds, 1)}
        tp["ratio_2_over_1"] = tp["2_process"]["examples_per_second"] / tp["1_process"]["examples_per_second"]
        out["throughput"] = tp
        print(json.dumps(tp), flush=True)

    # ---- rerank latency, 200 candidates ---------------------------------------------------------------------
    if "latency" not in skip:
        hist = data.sequences(("train", "valid"))
        users = np.random.default_rng(0).choice(data.test["user_idx"].to_numpy(), args.latency_requests)
        attrs = reranker.tables.user_attrs
        reqs = [(c, s, h[-100:], attrs[u]) for u, h, c, s in _candidates(models[served], users, hist, 200)]
        dl = ranker.ranker
        out["latency_200_candidates"] = {
            "feature_reranker": _latency(lambda c, s, h, a: reranker.score(reranker.features(c, s, h, a)), reqs),
            "dlrm": _latency(lambda c, s, h, a: dl.score(dl.features(c, s, h, a)), reqs)}
        print(json.dumps(out["latency_200_candidates"]), flush=True)

    path = args.output or RESULTS / f"dlrm-{args.dataset}.json"
    atomic_write_json(path, json.loads(json.dumps(out, default=lambda o: dataclasses.asdict(o))))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
