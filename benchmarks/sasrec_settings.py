"""The leaderboard's SASRec settings vs the published SASRec-CE recipe, chosen on VALIDATION (issue 17 item 6).

Arms (both the leaderboard's model, `sasrec_lightgcn`: SASRec + frozen LightGCN item vectors fused by a projection;
the LightGCN is fitted once per seed and shared; full-softmax CE; early stopping on validation NDCG@10 with
SASRecConfig's patience):
- `leaderboard`: SASRecConfig's defaults (max_len 100, Adam beta2 0.98, no weight decay), what the leaderboard runs;
- `anchor`: the published SASRec-CE settings: max_len 200 and AdamW with decoupled weight decay (0.01, PyTorch's
  AdamW default; the other fields as in `leaderboard`).

Leave-one-out full ranking over all items (history masked), NDCG@10 / Recall@10. The arm with the higher mean
validation NDCG@10 is chosen; its TEST metrics are read once, after the choice (the other arm's test is not read).

    python benchmarks/sasrec_settings.py --dataset ml-1m --seeds 0

Writes benchmarks/results/sasrec_settings-<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = {"leaderboard": {},
        "anchor": {"max_len": 200, "optimizer": "adamw", "weight_decay": 0.01},
        # the anchor with a longer budget: on ML-1M it still chose epoch 23-26 of the 26 allowed
        "anchor_long": {"max_len": 200, "optimizer": "adamw", "weight_decay": 0.01, "epochs": 60, "patience": 5}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--seeds", default="0")
    p.add_argument("--arms", default="leaderboard,anchor")
    p.add_argument("--epochs", type=int, help="override SASRecConfig.epochs (a smoke run; not for results)")
    p.add_argument("--output")
    args = p.parse_args()
    override = {"epochs": args.epochs} if args.epochs else {}

    import torch

    from sasrec_speed import _data
    from tapestry.training.evaluate import evaluate
    from tapestry.training.lightgcn import LightGCNRecommender
    from tapestry.training.sasrec import SASRecConfig, SASRecRecommender

    load = [round(x, 2) for x in os.getloadavg()]
    t_start = time.perf_counter()
    data = _data(args.dataset)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",")
    runs: dict = {arm: {} for arm in arms}
    models: dict = {}
    for seed in seeds:
        t = time.perf_counter()
        graph = LightGCNRecommender(seed=seed, progress=False).fit(data)
        print(f"[sasrec_settings] seed {seed}: lightgcn {time.perf_counter() - t:.0f}s", flush=True)
        for arm in arms:
            t = time.perf_counter()
            rec = SASRecRecommender(graph_from="lightgcn", fusion="add", seed=seed, progress=False, **ARMS[arm],
                                    **override)
            rec.bind({"lightgcn": graph})
            rec.fit(data)
            valid = evaluate(rec, data, "valid", k=10)
            runs[arm][str(seed)] = {"valid": {m: round(float(valid[m]), 6) for m in ("ndcg@10", "recall@10")},
                                    "best_epoch": rec.best_epoch_, "valid_history": rec.valid_history_,
                                    "fit_seconds": round(time.perf_counter() - t, 1),
                                    "epoch_seconds_mean": round(sum(rec.epoch_seconds_) / len(rec.epoch_seconds_), 3)}
            models[(arm, seed)] = rec
            print(f"[sasrec_settings] seed {seed} {arm}: {runs[arm][str(seed)]}", flush=True)
    mean = lambda arm, m: round(sum(runs[arm][str(s)]["valid"][m] for s in seeds) / len(seeds), 6)  # noqa: E731
    summary = {arm: {f"valid_{m}": mean(arm, m) for m in ("ndcg@10", "recall@10")} for arm in arms}
    chosen = max(arms, key=lambda arm: summary[arm]["valid_ndcg@10"])
    test = {}
    for seed in seeds:     # test read once, for the configuration chosen on validation
        r = evaluate(models[(chosen, seed)], data, "test", k=10)
        test[str(seed)] = {m: round(float(r[m]), 6) for m in ("ndcg@10", "recall@10")}
    summary[chosen].update({f"test_{m}": round(sum(test[str(s)][m] for s in seeds) / len(seeds), 6)
                            for m in ("ndcg@10", "recall@10")})
    if "leaderboard" in arms:
        for arm in arms:
            summary[arm]["valid_ndcg@10_vs_leaderboard"] = round(summary[arm]["valid_ndcg@10"]
                                                                 / summary["leaderboard"]["valid_ndcg@10"], 4)
    defaults = {k: v for k, v in vars(SASRecConfig()).items() if k in ("max_len", "optimizer", "weight_decay", "lr",
                                                                         "epochs", "patience", "hidden_dim")}
    report = {"dataset": args.dataset, "model": "sasrec_lightgcn (graph_from=lightgcn, fusion=add)",
              "protocol": "leave-one-out, full ranking; choice on validation NDCG@10, test read once for it",
              "seeds": seeds, "sasrec_defaults": defaults, "override": override, "arms": {a: ARMS[a] for a in arms},
              "summary": summary,
              "chosen_on_validation": chosen, "test_of_chosen": test, "runs": runs,
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_average_at_start": load, "python": platform.python_version(),
                          "torch": torch.__version__},
              "seconds": round(time.perf_counter() - t_start, 1), "command": " ".join(sys.argv),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.output or RESULTS / f"sasrec_settings-{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"[sasrec_settings] {json.dumps(summary)} chosen: {chosen}\n[sasrec_settings] {out}", flush=True)


if __name__ == "__main__":
    main()
