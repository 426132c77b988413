"""Cold items on the SERVED path (issue 19): the user encoder the export serves (`content_history`, a history's
mean vector over lightgcn_content's table) vs lightgcn_content's own per-user vectors (what benchmarks/cold_items.py
measures), both over a catalogue whose cold items have ids (ETLConfig.cold_items), in the same run.

Protocol (benchmarks/cold_items.py's): a random 5 % of the items with events lose all their events before the ETL;
the ETL (cold_items=True) gives them, and the catalogue items that never had events, ids after the warm ones and
writes the content table (ML-1M: title + genre, Beauty: attribute ids, as the adapters declare). lightgcn_content
is fitted (with and without content), content_history reads its table. Each user who had a held-out event is
scored over the whole catalogue, own history excluded:
- served: the content_history query of the user's whole history (train + valid + test, as the export's
  users.parquet holds it) against the table, exactly what the exported FAISS index computes;
- offline: lightgcn_content's user vector for that user (transductive; not servable from a history).
Metrics: cold_recall@k (held-out items in the whole-catalogue top-k), cold_only_recall@k (ranked among the cold
items), and warm test NDCG@10 / Recall@10 (ETL leave-one-out test split, full ranking). Ratios: served / offline.
Single seed; heavy (run it through /tmp/cpurun on the shared machine).

    python benchmarks/cold_items_served.py --dataset ml-1m
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_items import K, hold_out, raw_tables  # noqa: E402

from tapestry.artifacts import atomic_write_json  # noqa: E402
from tapestry.config import ETLConfig  # noqa: E402
from tapestry.etl import run_etl  # noqa: E402
from tapestry.inference.padding import left_pad  # noqa: E402
from tapestry.training.content_history import ContentHistoryRecommender  # noqa: E402
from tapestry.training.data import InteractionData  # noqa: E402
from tapestry.training.evaluate import evaluate  # noqa: E402
from tapestry.training.lightgcn_content import LightGCNContentRecommender  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"content": {}, "no_content": {"content": False}}


def _targets(data, held: pl.DataFrame) -> pl.DataFrame:
    """(user_idx, rows: the held-out items' indices) for users with held-out events on items the ETL indexed."""
    users = pl.read_parquet(data.path / "user_map.parquet")
    items = pl.read_parquet(data.path / "items.parquet").select("item_id", "item_idx")
    return (held.join(users, on="user_id").join(items, on="item_id").group_by("user_idx")
            .agg(pl.col("item_idx").unique().alias("rows")).sort("user_idx"))


def cold_recall(user_vectors: torch.Tensor, table: torch.Tensor, targets: pl.DataFrame, seen: list[np.ndarray],
                num_warm: int) -> dict:
    cold_rows = torch.arange(num_warm, table.shape[0])
    hits = {f"{m}@{k}": [] for m in ("cold_recall", "cold_only_recall") for k in K}
    users = targets["user_idx"].to_numpy()
    for start in range(0, len(users), 512):
        batch = users[start:start + 512]
        scores = user_vectors[start:start + 512] @ table.T
        scores[:, 0] = -torch.inf
        for b, u in enumerate(batch):
            if len(seen[u]):
                scores[b, torch.as_tensor(seen[u])] = -torch.inf
        top_all = torch.topk(scores, max(K), dim=1).indices.numpy()
        top_cold = cold_rows[torch.topk(scores[:, cold_rows], min(max(K), len(cold_rows)), dim=1).indices].numpy()
        for b, rows in enumerate(targets["rows"][start:start + 512].to_list()):
            t = set(rows)
            for k in K:
                hits[f"cold_recall@{k}"].append(len(t & set(top_all[b, :k].tolist())) / len(t))
                hits[f"cold_only_recall@{k}"].append(len(t & set(top_cold[b, :k].tolist())) / len(t))
    return {name: round(float(np.mean(v)), 4) for name, v in hits.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "beauty"])
    ap.add_argument("--holdout", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="content,no_content")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    load_at_start = os.getloadavg()
    torch.set_num_threads(1)

    tables, categories, text = raw_tables(args.dataset)
    held = hold_out(tables, args.holdout, args.seed)
    results = {}
    with tempfile.TemporaryDirectory(prefix="cold-served-") as root:
        t0 = time.perf_counter()
        etl = run_etl(tables, "cold", root=Path(root), cfg=ETLConfig(cold_items=True), log=lambda *a: None)
        etl_s = time.perf_counter() - t0
        data = InteractionData.load(etl.path)
        num_warm = etl.manifest["num_items_with_events"]
        targets = _targets(data, held)
        seen = data.sequences(("train", "valid", "test"))
        for name in args.variants.split(","):
            t = time.perf_counter()
            graph = LightGCNContentRecommender(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                                               device="cpu", progress=False, **VARIANTS[name]).fit(data)
            fit_s = time.perf_counter() - t
            served = ContentHistoryRecommender(device="cpu", max_len=50)
            served.bind({"lightgcn_content": graph})
            served.fit(data)
            table = served.serving_module().item_embeddings()
            histories = [seen[u] for u in targets["user_idx"].to_list()]
            queries = served.serving_module().encode(torch.from_numpy(left_pad(histories, 50)))
            offline_vectors = graph.user_embeddings()[torch.as_tensor(targets["user_idx"].to_numpy().copy())]
            row = {"params": VARIANTS[name], "fit_seconds": round(fit_s, 1), "best_epoch": graph.best_epoch_}
            for who, model, vectors in (("served", served, queries), ("offline", graph, offline_vectors)):
                warm = evaluate(model, data, "test", k=10)
                row[who] = {"warm_test_ndcg@10": round(float(warm["ndcg@10"]), 4),
                            "warm_test_recall@10": round(float(warm["recall@10"]), 4),
                            **cold_recall(vectors, table, targets, seen, num_warm)}
            row["served/offline"] = {m: round(row["served"][m] / row["offline"][m], 3) if row["offline"][m] else None
                                     for m in ("cold_recall@20", "cold_only_recall@20", "warm_test_ndcg@10")}
            results[name] = row
            print(name, json.dumps(row), flush=True)
    report = {
        "benchmark": "cold_items_served", "dataset": args.dataset, "holdout_fraction": args.holdout,
        "epochs_max": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "num_items": etl.manifest["num_items"], "num_items_with_events": num_warm,
        "cold_items": etl.manifest["num_items"] - num_warm, "users_scored": int(targets.height),
        "random_cold_only_recall@20": round(min(1.0, 20 / (etl.manifest["num_items"] - num_warm)), 4),
        "etl_seconds": round(etl_s, 1), "cpu_seconds": round(time.process_time(), 1),
        "sources": tables.sources, "results": results,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    out = Path(args.out) if args.out else RESULTS / f"cold_items_served-{args.dataset}.json"
    atomic_write_json(out, report)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
