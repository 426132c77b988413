"""SASRec with and without event-type inputs (issue 19, behaviour-aware sequences) on MovieLens with two behaviours.

    .venv/bin/python benchmarks/behaviour_sasrec.py [--dataset ml-1m] [--seeds 0] [--epochs 12] [--arms off,on,on+head]

The ratings become events labelled `like` (rating >= 4) or `view` (below): movielens_1m(like_at=4) /
the same rule applied to ML-100K. Arms: `off` = plain SASRec; `on` = behaviour=True (event-type embeddings added to
the item embeddings); `on+head` = also the auxiliary next-event-type loss (behaviour_head=0.5). Same config, seed and
early stopping on validation NDCG@10 otherwise. Metrics: leave-one-out full ranking (every item, history masked),
NDCG@10 / Recall@10 on validation and test. Result: benchmarks/results/behaviour_sasrec-<dataset>.json, with the
ratios of each arm to `off` from the same run.
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

ARMS = {"off": {}, "on": {"behaviour": True}, "on+head": {"behaviour": True, "behaviour_head": 0.5}}


def load(dataset: str, root: Path):
    from tapestry.config import ETLConfig
    from tapestry.etl import run_etl
    from tapestry.etl.datasets import locate
    from tapestry.training.data import InteractionData

    directory = locate(dataset)
    if dataset == "ml-1m":
        from tapestry.cli import ml1m_ratings_default
        from tapestry.etl.movielens import movielens_1m

        tables = movielens_1m(directory, ml1m_ratings_default(directory), like_at=4)
    elif dataset == "ml-100k":
        from tapestry.etl.movielens import movielens_100k

        tables = movielens_100k(directory, like_at=4)
    else:
        raise ValueError(f"unknown data set {dataset!r}: use ml-1m or ml-100k")
    result = run_etl(tables, dataset, root, ETLConfig(), log=lambda *a, **k: None)
    data = InteractionData.load(result.path)
    types = dict(data.train.group_by("event_type").len().iter_rows())
    return data, result.manifest, {str(k): int(v) for k, v in types.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--arms", default="off,on,on+head")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    import torch

    from tapestry.training.evaluate import evaluate
    from tapestry.training.sasrec import SASRecRecommender

    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data, manifest, type_counts = load(args.dataset, Path(tmp))
    print(f"[behaviour] {args.dataset}: {data.num_users - 1} users, {data.num_items - 1} items, train types "
          f"{type_counts} ({time.perf_counter() - t0:.0f}s)", flush=True)
    params = dict(epochs=args.epochs, patience=3)
    runs: dict = {}
    for seed in seeds:
        for arm in arms:
            t = time.perf_counter()
            model = SASRecRecommender(**params, **ARMS[arm], seed=seed, progress=False).fit(data)
            fit_s = time.perf_counter() - t
            r = {split: {k: round(float(v), 5) for k, v in evaluate(model, data, split, k=10).items()
                         if k in ("ndcg@10", "recall@10")} for split in ("valid", "test")}
            r.update(fit_seconds=round(fit_s, 1), best_epoch=model.best_epoch_, valid_history=model.valid_history_)
            runs.setdefault(arm, {})[str(seed)] = r
            print(f"[behaviour] seed {seed} {arm}: valid {r['valid']} test {r['test']} "
                  f"(best epoch {r['best_epoch']}, {fit_s:.0f}s)", flush=True)
    mean = lambda arm, split, m: sum(runs[arm][str(s)][split][m] for s in seeds) / len(seeds)  # noqa: E731
    summary = {arm: {f"{split}_{m}": round(mean(arm, split, m), 5) for split in ("valid", "test")
                     for m in ("ndcg@10", "recall@10")} for arm in arms}
    if "off" in arms:
        for arm in arms:
            for split in ("valid", "test"):
                summary[arm][f"{split}_ndcg@10_vs_off"] = round(summary[arm][f"{split}_ndcg@10"]
                                                                / summary["off"][f"{split}_ndcg@10"], 4)
    report = {"dataset": args.dataset, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(sys.argv), "labelling": "rating >= 4 -> like, else view",
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "etl": {"sources": manifest["sources"], "split": manifest["split"], "counts": manifest["counts"]},
              "train_event_types": type_counts, "seeds": seeds, "params": params, "arms": {a: ARMS[a] for a in arms},
              "summary": summary, "runs": runs, "total_seconds": round(time.perf_counter() - t0, 1)}
    out = Path(args.output_dir) / f"behaviour_sasrec-{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(report, indent=2, default=float))
    os.replace(tmp_out, out)
    print(f"[behaviour] {json.dumps(summary)}\n[behaviour] {out} ({report['total_seconds']}s)")


if __name__ == "__main__":
    main()
