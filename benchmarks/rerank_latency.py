"""The rerank stage's latency for 200 candidates at batch 1: the feature reranker, the DLRM and the fusion reranker
side by side in one run, on one tenant's trained models.

    tapestry train --tenant ml1m --models popularity,lightgcn,sasrec_lightgcn,dlrm,fusion
    python benchmarks/rerank_latency.py --tenant ml1m --dataset ml-1m

What is timed: one in-process call of the rerank stage (tapestry.serving.rerank.Rerank, exactly what Triton's
python stub runs per request: input checks, the reranker's features, its batched score over one row, the top K,
ids and titles) with the served retriever's top `--candidates` unseen items of a real test user, history = every
event before the test item. Candidates are computed beforehand (not timed). The rankers take turns request by
request (a rotating order), so a burst of load on this shared machine hits all of them alike. Torch runs one
intra-op thread, as in the Triton stages (tapestry/serving/triton_adapter.py). Rankers the run did not train are
left out. Writes benchmarks/results/rerank_latency-<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from tapestry.artifacts import atomic_write_json, latest_version
from tapestry.inference.feature_reranker import FeatureReranker
from tapestry.inference.padding import left_pad_one
from tapestry.serving.rerank import Rerank
from tapestry.serving.stage import bytes_array
from tapestry.training import registry
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.fusion import topk_unseen

RESULTS = Path(__file__).resolve().parent / "results"


def _summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "max_ms": round(float(a.max()), 3), "requests": len(a)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tenant", default="ml1m")
    p.add_argument("--dataset", default="ml-1m", help="names the output file")
    p.add_argument("--root", type=Path)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--requests", type=int, default=500, help="timed requests per reranker")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--retriever", help="whose candidates and rankers to time (default: the run's served model); "
                                       "the feature reranker (rerank.npz) is timed on the same candidates")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)

    model_dir = latest_version(args.tenant, "models", args.root)
    cfg = json.loads((model_dir / "config.json").read_text())
    data = InteractionData.load(Path((model_dir / "etl_version.txt").read_text().strip()))
    served = args.retriever or cfg["serve"]
    models: dict[str, Recommender] = {}
    for name in cfg["models"]:
        models[name] = Recommender.load(model_dir / registry.get(name).filename, device="cpu")
        models[name].bind(dict(models))
    rerankers = {"feature": FeatureReranker.load(model_dir / "rerank.npz")}
    for name in registry.rankers_of(served, cfg["models"], cfg.get("resolved", {})):
        rerankers[name] = models[name].ranker
    retriever = models[served]
    max_len = int(retriever.cfg.max_len)

    # Requests: real test users, the served retriever's top candidates given everything before the test item.
    hist = data.sequences(("train", "valid"))
    users = data.test["user_idx"].to_numpy()[: args.requests + args.warmup]
    users = np.resize(users, args.requests + args.warmup)
    attrs = rerankers["feature"].tables.user_attrs
    requests = []
    for (cands, scores), u in zip(topk_unseen(retriever, users, [hist[u] for u in users], args.candidates), users):
        requests.append({"TENANT": bytes_array([args.tenant]), "FILTERED": cands.astype(np.int64),
                         "FILTERED_SCORES": scores.astype(np.float32),
                         "HISTORY": left_pad_one(hist[u], max_len), "SEEN": hist[u].astype(np.int64),
                         "USER_ATTRS": attrs[u].astype(np.float32), "USER_KIND": np.array([1], np.int32),
                         "K": np.array([args.k], np.int32)})

    ids = [str(i) for i in range(data.num_items)]
    stages = {name: Rerank(args.tenant, r, ids, ids, max_k=100, max_len=max_len) for name, r in rerankers.items()}
    names = list(stages)
    timings = {name: [] for name in names}
    for i, req in enumerate(requests):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            t0 = time.perf_counter()
            out = stages[name](req)
            ms = (time.perf_counter() - t0) * 1e3
            assert len(out["ITEM_IDS"]) == args.k
            if i >= args.warmup:
                timings[name].append(ms)

    result = {"tenant": args.tenant, "dataset": args.dataset, "models_version": str(model_dir), "retriever": served,
              "candidates": args.candidates, "batch": 1, "k": args.k,
              "what": "one in-process call of the rerank stage (checks, features, score, top-K), 1 torch thread",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average "
                         f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
              "rerankers": {name: {"kind": type(r).__name__, **_summary(timings[name])}
                            for name, r in rerankers.items()}}
    out = args.output or RESULTS / f"rerank_latency-{args.dataset}.json"
    atomic_write_json(out, result)
    for name, row in result["rerankers"].items():
        print(f"{name:>8} ({row['kind']}): p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
              f"mean {row['mean_ms']:.2f} ms over {row['requests']} requests")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
