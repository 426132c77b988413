"""Tenant cold start (issue 20 item 3): a global model pre-trained on ML-1M, fine-tuned on a new tenant (ML-100K,
its own item ids, 10 % of its training events) vs the same model trained from scratch on that 10 %.

    python benchmarks/cold_start.py --seeds 0,1,2          # -> benchmarks/results/cold_start.json

Setup (all in a temporary artifact root):
- tenant `ml1m` (the partial ML-1M in ../shared unless the full ratings file is found) opts in
  (share_for_global = on); tenant `ml100k` does NOT: `tapestry global train`'s input list is the opted-in tenants
  only, so the global model never sees ML-100K. ML-100K's ETL gives its own item ids; the two share only attribute
  names ("genre=Comedy") and title words, hashed (many ML-100K titles also appear in ML-1M: the content transfer
  this measures is mostly theirs; ids are never shared).
- the new tenant keeps, per user, 10 % (rounded up, at least 1) of its TRAINING events, the most recent ones
  (default) or a seeded random subset in time order (`--sample random`); its
  validation and test items (leave-one-out) are untouched, so both arms are scored on the same test users with the
  same protocol: full ranking over all ML-100K items (an item whose training events were all dropped is still
  ranked), history = the kept training events + the validation item, NDCG@10 / Recall@10.
- arms, per seed: `finetuned` (FoundationRecommender.from_global), `scratch` (the same FoundationRecommender, same
  config, epochs and patience on validation NDCG, random init), `zero_shot` (the global model untrained), and as
  references `finetuned_content` (only the content tables transfer, a fresh encoder) and `sasrec_ids` (plain
  ID-only SASRec from scratch). The global model is pre-trained once (seed 0) and shared by the seeds: the seeds
  vary the fine-tune / scratch initialisation and batch order, not the pre-training.
- statistics: mean and 95 % t-interval across seeds; Wilcoxon signed-rank on per-user NDCG@10 (averaged over seeds)
  of finetuned vs scratch, and a paired-bootstrap interval (tapestry.reporting.leaderboard).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tapestry.artifacts import atomic_write_json  # noqa: E402
from tapestry.reporting.leaderboard import across_seeds, paired_test  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def keep_recent_fraction(train: pl.DataFrame, fraction: float, sample: str = "recent", seed: int = 0
                         ) -> pl.DataFrame:
    """Per user, ceil(fraction * n) of the n training events (at least 1), in the split's order: the most recent
    ones (`sample="recent"`), or a uniform random subset of them (`"random"`, seeded: the same for every arm)."""
    if sample not in ("recent", "random"):
        raise ValueError(f"sample must be 'recent' or 'random', got {sample!r}")
    ranked = train.with_row_index("_order").with_columns(
        pl.Series("_key", np.random.default_rng(seed).permutation(train.height)) if sample == "random"
        else pl.col("_order").alias("_key"))
    ranked = ranked.with_columns(
        pl.col("_key").rank("ordinal", descending=True).over("user_idx").alias("_from_end"),
        pl.len().over("user_idx").alias("_n"))
    keep = (pl.col("_from_end") <= (pl.col("_n") * fraction).ceil().clip(lower_bound=1))
    return ranked.filter(keep).sort("_order").drop("_order", "_key", "_from_end", "_n")


def _etl(root: Path, quiet) -> dict:
    from tapestry.cli import ml1m_ratings_default
    from tapestry.etl import run_etl
    from tapestry.etl.datasets import locate
    from tapestry.etl.movielens import movielens_1m, movielens_100k
    from tapestry.tenant_settings import TenantSettings, save_settings

    ml1m_dir = locate("ml-1m")
    one = run_etl(movielens_1m(ml1m_dir, ml1m_ratings_default(ml1m_dir)), "ml1m", root=root, log=quiet)
    small = run_etl(movielens_100k(locate("ml-100k")), "ml100k", root=root, log=quiet)
    save_settings("ml1m", TenantSettings(share_for_global=True), root)
    save_settings("ml100k", TenantSettings(share_for_global=False), root)
    return {"ml1m": one, "ml100k": small}


class _Latest:
    """An ETL version already in --workdir, shaped like run_etl's result."""

    def __init__(self, path: Path):
        self.path, self.manifest = path, json.loads((path / "manifest.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--sample", choices=("recent", "random"), default="recent",
                   help="which of each user's training events the new tenant keeps: the most recent, or random ones")
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=100, help="fine-tune / scratch epochs at most (both arms)")
    p.add_argument("--patience", type=int, default=5, help="validation checks without gain (both arms)")
    p.add_argument("--lr", type=float, default=4e-3, help="both arms, and the pre-training")
    p.add_argument("--finetune-lr", type=float, help="the fine-tuned arm's lr (default --lr); pick it on validation")
    p.add_argument("--scratch-lr", type=float, help="the scratch arms' lr (default --lr); pick it on validation")
    p.add_argument("--no-reference", action="store_true", help="skip the ID-only SASRec reference arm")
    p.add_argument("--out", type=Path, default=RESULTS / "cold_start.json")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads: 1 on a shared machine (two "
                   "spinning threads per process made each step several times slower here under load)")
    p.add_argument("--pretrain-only", action="store_true", help="stop after the global model (with --workdir)")
    p.add_argument("--workdir", type=Path, help="keep the artifact root here and reuse its ETL and global model "
                                                "when present (default: a temporary directory)")
    args = p.parse_args()

    import torch

    from tapestry.training.data import InteractionData
    from tapestry.training.evaluate import per_user_metrics
    from tapestry.training.foundation import FoundationConfig, FoundationRecommender
    from tapestry.artifacts import latest_version
    from tapestry.training.global_model import global_dir, load_global, train_global
    from tapestry.training.sasrec import SASRecRecommender

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    quiet = lambda *a, **k: None  # noqa: E731
    t_start = time.perf_counter()
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    cfg = FoundationConfig(hidden_dim=args.hidden_dim, max_len=args.max_len, lr=args.lr)
    with tempfile.TemporaryDirectory(prefix="tapestry-cold-start-") as tmp:
        root = args.workdir or Path(tmp)
        etl = _etl(root, quiet) if not (root / "ml100k").exists() else {
            t: _Latest(latest_version(t, "etl", root)) for t in ("ml1m", "ml100k")}
        if not global_dir(root).exists():
            train_global(root, dataclasses.replace(cfg, epochs=args.pretrain_epochs, patience=3), device="cpu")
        if args.pretrain_only:
            return
        glob, manifest = load_global(root, "cpu")
        full = InteractionData.load(etl["ml100k"].path)
        data = dataclasses.replace(full, train=keep_recent_fraction(full.train, args.fraction, args.sample))
        arm_cfg = dict(epochs=args.epochs, patience=args.patience)
        finetune_lr, scratch_lr = args.finetune_lr or args.lr, args.scratch_lr or args.lr
        arms = {
            # The global model as it is, on the new tenant (no training: its ids stay 0, content alone scores).
            "zero_shot": lambda s: FoundationRecommender.from_global(glob, seed=s, epochs=0),
            "finetuned": lambda s: FoundationRecommender.from_global(glob, seed=s, lr=finetune_lr, **arm_cfg),
            # A variant: only the attribute and title tables transfer; positions and blocks start fresh.
            "finetuned_content": lambda s: FoundationRecommender.from_global(glob, transfer="content", seed=s,
                                                                             lr=finetune_lr, **arm_cfg),
            "scratch": lambda s: FoundationRecommender(dataclasses.replace(cfg, seed=s, lr=scratch_lr, **arm_cfg),
                                                       device="cpu"),
        }
        if not args.no_reference:
            arms["sasrec_ids"] = lambda s: SASRecRecommender(hidden_dim=args.hidden_dim, max_len=args.max_len,
                                                             lr=scratch_lr, seed=s, device="cpu", **arm_cfg)
        runs: dict[str, dict] = {a: {"ndcg@10": [], "recall@10": [], "best_epoch": [], "fit_seconds": [],
                                     "valid_ndcg@10": [], "per_user": []} for a in arms}
        for seed in seeds:
            for arm, make in arms.items():
                t0 = time.perf_counter()
                model = make(seed).fit(data)
                fit_s = round(time.perf_counter() - t0, 1)
                pu = per_user_metrics(model, data, "test")
                r = runs[arm]
                r["ndcg@10"].append(float(pu["ndcg@10"].mean()))
                r["recall@10"].append(float(pu["recall@10"].mean()))
                r["best_epoch"].append(model.best_epoch_)
                r["valid_ndcg@10"].append(max(model.valid_history_, default=None))
                r["fit_seconds"].append(fit_s)
                r["per_user"].append(pu["ndcg@10"])
                print(f"[cold_start] seed {seed} {arm}: test NDCG@10 {r['ndcg@10'][-1]:.4f} Recall@10 "
                      f"{r['recall@10'][-1]:.4f} (best epoch {model.best_epoch_}, {fit_s}s)", flush=True)
            # Written after every seed: a run cut short still leaves the seeds it finished.
            context = {"global": {"tenants": manifest["tenants"], "ratings": etl["ml1m"].manifest["sources"].get(
                           "ratings"), "train_events": manifest["train_events"], "best_epoch": manifest["best_epoch"],
                           "attribute_names": manifest["attribute_names"], "valid_history": manifest["valid_history"],
                           "fit_seconds": manifest["fit_seconds"], "config": manifest["config"]},
                       "new_tenant": {"dataset": "ml-100k", "opted_in": False, "fraction": args.fraction,
                                      "fraction_rule": f"per user, ceil(fraction * n) of the n training events "
                                                       f"(at least 1): {args.sample} ones",
                                      "train_events_full": full.train.height, "train_events_kept": data.train.height,
                                      "num_items": full.num_items - 1, "test_users": int(len(pu["users"]))},
                       "config": {**dataclasses.asdict(cfg), **arm_cfg, "finetune_lr": finetune_lr,
                                  "scratch_lr": scratch_lr}, "machine": machine,
                       "total_seconds": round(time.perf_counter() - t_start, 1)}
            _report(args.out, runs, seeds[:seeds.index(seed) + 1], context)


def _report(out: Path, runs: dict, seeds: list[int], context: dict) -> None:
    per_user = {a: np.mean(r["per_user"], axis=0) for a, r in runs.items()}
    summary = {a: {"ndcg@10": across_seeds(r["ndcg@10"]), "recall@10": across_seeds(r["recall@10"]),
                   "best_epoch": r["best_epoch"], "valid_ndcg@10": r["valid_ndcg@10"], "fit_seconds": r["fit_seconds"]}
               for a, r in runs.items()}
    paired = paired_test(per_user["finetuned"], per_user["scratch"])
    gain = summary["finetuned"]["ndcg@10"]["mean"] / summary["scratch"]["ndcg@10"]["mean"] - 1.0
    report = {
        "benchmark": "cold_start", "issue": "20 item 3",
        "protocol": "leave-one-out, full ranking over all ML-100K items, history = kept train + valid; "
                    "per-user NDCG@10 paired over the same test users",
        "seeds": seeds, "arms": summary,
        "finetuned_vs_scratch": {"relative_ndcg@10": round(gain, 4), "paired_ndcg@10": paired,
                                 "target": ">= +10 % NDCG@10", "target_met": bool(gain >= 0.10)},
        # Every other arm against scratch, the same way (the references are not the target's comparison).
        "vs_scratch": {a: paired_test(per_user[a], per_user["scratch"]) for a in runs if a != "scratch"},
        **context,
    }
    atomic_write_json(out, report)
    print(f"[cold_start] seeds {seeds}: " + ", ".join(f"{a} {s['ndcg@10']['mean']:.4f} ± {s['ndcg@10']['ci95']:.4f}"
                                                      for a, s in summary.items())
          + f"; finetuned vs scratch {gain:+.1%} NDCG@10 (p {paired['p_value']:.2g}) -> {out}", flush=True)


if __name__ == "__main__":
    main()
