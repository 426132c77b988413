"""Multi-source candidates, measured before they are served (issue 17 item 4): how many held-out targets reach a
reranker's list when retrieval merges several sources instead of one.

For one trained run (`tapestry train`, or a `benchmarks/leaderboard.py run --root DIR` seed) and each split, per
user (full ranking over all items, the user's history excluded, the standard leave-one-out targets):
- each source alone: Recall@N of its top-N (N = each budget);
- `union@N`: a list of N items merged round-robin by rank from every source (source 1's best, source 2's best,
  ..., duplicates skipped): the same budget as one source, so a gain is the union's, not a longer list;
- `union_full@N`: every source's whole top-N, de-duplicated (up to S×N items; its mean size is reported): what a
  reranker would score if the budget grew with the sources.

Sources are any trained models of the run: retrievers (`sasrec_lightgcn`, `two_tower`) and the closed-form graph
filter (`graph_filter`: item-to-item graph recall from the user's history, its `similar_items`).

    python benchmarks/multi_source.py --models-dir /tmp/lb-ml1m/ml-1m/models/v0001 \\
        --sources sasrec_lightgcn,two_tower,graph_filter --output benchmarks/results/multi_source-ml-1m.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


def top_lists(model, data, split: str, depth: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(users' top-`depth` unseen items [U, depth] in `data.<split>` row order, targets [U])."""
    from tapestry.training.evaluate import HISTORY_SPLITS

    frame = getattr(data, split)
    users, targets = frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy()
    histories = data.sequences(HISTORY_SPLITS[split])
    out = []
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            u = users[start:start + batch_size]
            hist = [histories[x] for x in u]
            scores = model.score(u, hist).float().clone()
            scores[:, 0] = -torch.inf                                    # padding
            for row, h in enumerate(hist):
                if len(h):
                    scores[row, torch.as_tensor(np.asarray(h, dtype=np.int64))] = -torch.inf
            out.append(torch.topk(scores, depth, dim=1).indices.cpu().numpy())
    return np.concatenate(out), targets


def served_graph_lists(model, data, split: str, depth: int, neighbours: int, recent: int) -> np.ndarray:
    """The graph filter's lists as `tapestry export --sources` serves them: each item's top-`neighbours` table
    (tapestry.ensembles.sources.neighbour_table), the neighbour scores of the `recent` newest distinct history items
    summed (tapestry.serving.multi_source.NeighbourSource); [U, depth], 0-padded where fewer items are reached."""
    from tapestry.ensembles.sources import neighbour_table
    from tapestry.serving.multi_source import NeighbourSource
    from tapestry.training.evaluate import HISTORY_SPLITS

    ids, scores = neighbour_table(model, neighbours)
    source = NeighbourSource("graph_filter", ids, scores, recent)
    users = getattr(data, split)["user_idx"].to_numpy()
    histories = data.sequences(HISTORY_SPLITS[split])
    out = np.zeros((len(users), depth), dtype=np.int64)
    for row, u in enumerate(users):
        h = np.asarray(histories[u], dtype=np.int64)
        items, _ = source.one(h, np.concatenate([h, [0]]), depth)
        out[row, :items.size] = items
    return out


def round_robin(lists: list[np.ndarray], budget: int) -> list[int]:
    """One merged list of `budget` distinct items: rank 1 of every source, then rank 2, ..., duplicates skipped."""
    merged, seen = [], set()
    for rank in range(max(len(x) for x in lists)):
        for x in lists:
            if rank < len(x) and x[rank] not in seen:
                seen.add(int(x[rank]))
                merged.append(int(x[rank]))
                if len(merged) == budget:
                    return merged
    return merged


def measure(tops: dict[str, np.ndarray], targets: np.ndarray, budgets: list[int]) -> dict:
    out: dict[str, dict] = {}
    names = list(tops)
    for n in budgets:
        row = {name: float(np.mean([t in set(top[:n].tolist()) for top, t in zip(tops[name], targets)]))
               for name in names}
        union, full, size = [], [], []
        for i, t in enumerate(targets):
            lists = [tops[name][i][:n] for name in names]
            union.append(t in set(round_robin(lists, n)))
            every = set(np.concatenate(lists).tolist())
            full.append(t in every)
            size.append(len(every))
        row["union"] = float(np.mean(union))
        row["union_full"] = float(np.mean(full))
        row["union_full_mean_size"] = float(np.mean(size))
        best = max(names, key=lambda name: row[name])
        row["best_single"] = best
        row["union_vs_best_single"] = round(row["union"] / row[best] - 1.0, 4) if row[best] else None
        out[f"recall@{n}"] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", required=True, help="a trained run: <root>/<tenant>/models/vNNNN")
    p.add_argument("--sources", default="sasrec_lightgcn,two_tower,graph_filter")
    p.add_argument("--budgets", default="100,200")
    p.add_argument("--splits", default="valid,test")
    p.add_argument("--output", default=str(RESULTS / "multi_source.json"))
    p.add_argument("--served-graph", metavar="M,R", help="graph_filter's lists as served (neighbour table of M per "
                   "item, the R newest history items summed) instead of its full filter scores, e.g. 100,20")
    args = p.parse_args()

    from tapestry.training import registry
    from tapestry.training.base import Recommender
    from tapestry.training.data import InteractionData
    from tapestry.training.evaluate import is_multi_target

    models_dir = Path(args.models_dir)
    etl_dir = Path((models_dir / "etl_version.txt").read_text().strip())
    data = InteractionData.load(etl_dir)
    budgets = [int(b) for b in args.budgets.split(",")]
    sources = [s for s in args.sources.split(",") if s]
    t0 = time.perf_counter()
    loaded = {}
    for name in sources:
        loaded[name] = Recommender.load(models_dir / registry.get(name).filename, device="cpu")
        if registry.get(name).role == "ranker":   # a ranker scores its retriever's candidates (load that first)
            loaded[name].bind(loaded)
    report = {"models_dir": str(models_dir), "etl": str(etl_dir), "sources": sources, "budgets": budgets,
              "served_graph": args.served_graph,
              "merge": "round-robin by rank, duplicates skipped (union@N: N items, the budget of one source)",
              "splits": {}}
    for split in args.splits.split(","):
        if getattr(data, split).height == 0 or is_multi_target(data, split):
            print(f"[multi_source] {split}: skipped (empty or several targets per user)", flush=True)
            continue
        tops, targets = {}, None
        for name, model in loaded.items():
            if name == "graph_filter" and args.served_graph:
                m, r = (int(x) for x in args.served_graph.split(","))
                tops[name] = served_graph_lists(model, data, split, max(budgets), m, r)
                targets = getattr(data, split)["item_idx"].to_numpy()
                continue
            tops[name], targets = top_lists(model, data, split, max(budgets))
        report["splits"][split] = measure(tops, targets, budgets)
        report["splits"][split]["num_users"] = int(len(targets))
        for key, row in report["splits"][split].items():
            if isinstance(row, dict):
                print(f"[multi_source] {split} {key}: " + ", ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    report["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"[multi_source] {out}", flush=True)


if __name__ == "__main__":
    main()
