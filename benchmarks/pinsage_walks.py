"""PinSage-style neighbourhoods in the GraphSAGE trainer (issue 19 item 4): the same `sage` model with uniform
neighbour sampling only, with walk neighbourhoods importance-pooled into the item inputs, and with walk hard
negatives on top, on MovieLens 100K with tapestry's full-ranking evaluation.

    python benchmarks/pinsage_walks.py --epochs 1           # 1 seed, ~6 min on 2 shared CPU cores (~100 s/epoch)
    python benchmarks/pinsage_walks.py --seeds 0,1,2        # SAGEConfig's 10 epochs: ~1 h per seed on 2 cores

Variants (everything else = the registry's sage defaults, SAGEConfig):
- `uniform`: neighbourhood="uniform" (PyG's uniform neighbour sampling, the default);
- `walks`: neighbourhood="walks" (item->user->item walks, top-T visited items pooled by visit share);
- `walks_hard`: `walks` + hard_negative_ratio (negatives from walk ranks `hard_window`, the user's items excluded).
Metrics: NDCG@10 / Recall@10 on valid and test per seed, the mean across seeds, and a paired Wilcoxon test of
per-user test NDCG@10 of each walks variant against `uniform` (tapestry.reporting.leaderboard).
Result: benchmarks/results/pinsage_walks-ml-100k.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "uniform": {},
    "walks": dict(neighbourhood="walks"),
    "walks_hard": dict(neighbourhood="walks", hard_negative_ratio=0.3),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, help="override SAGEConfig.epochs (default 10)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--output-dir", default=str(RESULTS))
    p.add_argument("--suffix", default="", help="appended to the result file's name (another setting's run)")
    p.add_argument("--progress", action="store_true", help="per-epoch progress lines")
    args = p.parse_args()

    import torch

    from tapestry.etl import run_etl
    from tapestry.etl.datasets import locate
    from tapestry.etl.movielens import movielens_100k
    from tapestry.reporting.leaderboard import paired_test
    from tapestry.training import registry
    from tapestry.training.data import InteractionData
    from tapestry.training.evaluate import evaluate, per_user_metrics

    t_all = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="tapestry-pinsage-"))
    etl = run_etl(movielens_100k(locate("ml-100k")), "ml100k", root=root, log=lambda *a: None)
    data = InteractionData.load(etl.path)
    print(f"[pinsage] ETL {time.perf_counter() - t_all:.0f}s", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = {"epochs": args.epochs} if args.epochs else {}
    runs: dict = {}
    per_user: dict = {}
    for variant in args.variants.split(","):
        for seed in seeds:
            model = registry.build("sage", {**base, **VARIANTS[variant], "seed": seed}, device="cpu", progress=args.progress)
            t0 = time.perf_counter()
            model.fit(data)
            fit_s = time.perf_counter() - t0
            pu = per_user_metrics(model, data, "test", k=10)
            r = {"fit_seconds": round(fit_s, 1), "valid": evaluate(model, data, "valid", k=10),
                 "test": evaluate(model, data, "test", k=10)}
            runs.setdefault(variant, {})[str(seed)] = r
            per_user.setdefault(variant, []).append(np.asarray(pu["ndcg@10"]))
            print(f"[pinsage] {variant} seed={seed}: test ndcg@10 {r['test']['ndcg@10']:.4f} recall@10 "
                  f"{r['test']['recall@10']:.4f} (valid ndcg@10 {r['valid']['ndcg@10']:.4f}; fit {fit_s:.0f}s)",
                  flush=True)
    mean = {v: {f"{split}_{m}": float(np.mean([r[split][m] for r in by_seed.values()]))
                for split in ("valid", "test") for m in ("ndcg@10", "recall@10")}
            | {"fit_seconds": float(np.mean([r["fit_seconds"] for r in by_seed.values()]))}
            for v, by_seed in runs.items()}
    paired = {f"{v}_vs_uniform": paired_test(np.mean(per_user[v], 0), np.mean(per_user["uniform"], 0))
              for v in per_user if v != "uniform" and "uniform" in per_user}
    report = {"dataset": "ml-100k", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(sys.argv), "machine": {"device": "cpu", "cpu_count": os.cpu_count(),
                                                         "torch_threads": torch.get_num_threads(),
                                                         "torch": torch.__version__},
              "seeds": seeds, "variants": {v: VARIANTS[v] for v in runs}, "base_params": base,
              "mean": mean, "paired_test_ndcg@10": paired, "runs": runs,
              "total_seconds": round(time.perf_counter() - t_all, 1)}
    out = Path(args.output_dir) / f"pinsage_walks-ml-100k{args.suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float))
    os.replace(tmp, out)
    for name, res in paired.items():
        print(f"[pinsage] {name}: relative {res['relative']}, p = {res['p_value']:.3g}", flush=True)
    print(f"[pinsage] {out} ({report['total_seconds']}s)", flush=True)


if __name__ == "__main__":
    main()
