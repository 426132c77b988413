"""Ablation report: model x data set x {overall, cold items, cold users}, with fit time and device.

    # train a line-up on one data set (ETL from ../shared/datasets, then tapestry's own train pipeline)
    python benchmarks/ablation.py run --dataset ml-1m --models popularity,lightgcn,sasrec,sasrec_lightgcn
    python benchmarks/ablation.py run --dataset gowalla --models popularity,lightgcn \
        --params '{"lightgcn": {"loss": "softmax", "num_layers": 3, "epochs": 30}}'
    # one table (printed + JSON) and one PNG from every run file
    python benchmarks/ablation.py table benchmarks/results/ablation-*.json

Each `run` writes benchmarks/results/ablation-<dataset>.json: the config, the machine, the ETL counts and the
metrics.json of the training run (valid and test, test slices). Metrics are @10 for leave-one-out data (ML-1M,
Amazon Beauty) and @20 for Gowalla's fixed split, as their papers report them.
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

RESULTS = Path(__file__).resolve().parent / "results"


def _machine() -> dict:
    import torch

    return {"device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}


def cmd_run(args) -> None:
    from tapestry.cli import load_tables
    from tapestry.config import RerankConfig, TrainConfig
    from tapestry.etl import run_etl
    from tapestry.training.pipeline import run_train

    root = Path(args.root or tempfile.mkdtemp(prefix="tapestry-ablation-"))
    tenant = args.dataset.replace(".", "-")
    ns = argparse.Namespace(events=None, items=None, users=None, dataset=args.dataset, data_dir=None, ratings=None)
    etl = run_etl(load_tables(ns), tenant, root)
    cfg = TrainConfig(models=tuple(args.models.split(",")), params=json.loads(args.params or "{}"),
                      serve=args.serve or "", rerank=RerankConfig(), device=args.device)
    t0 = time.perf_counter()
    result = run_train(tenant, root, cfg)
    out = Path(args.output or RESULTS / f"ablation-{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"dataset": args.dataset, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(sys.argv), "machine": _machine(), "etl_counts": etl.manifest["counts"],
              "num_users": etl.manifest["num_users"] - 1, "num_items": etl.manifest["num_items"] - 1,
              "config": json.loads((result.path / "config.json").read_text()),
              "train_seconds": round(time.perf_counter() - t0, 1), "metrics": result.metrics}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"[ablation] {out}")


def _rows(report: dict):
    for model, m in report["metrics"].items():
        k = next(key for key in m["test"] if key.startswith("recall@")).split("@")[1]
        slices = {"overall": m["test"], **m.get("slices", {})}
        for name, s in slices.items():
            yield {"dataset": report["dataset"], "model": model, "slice": name, "k": int(k),
                   "recall": s[f"recall@{k}"], "ndcg": s[f"ndcg@{k}"], "users": s["num_users"],
                   "valid_ndcg": m["valid"].get(f"ndcg@{k}") if name == "overall" else None,
                   "fit_s": m.get("fit_seconds"), "device": report["machine"]["device"]}


def cmd_table(args) -> None:
    rows = [r for path in args.files for r in _rows(json.loads(Path(path).read_text()))]
    header = f"{'dataset':<10}{'model':<28}{'slice':<12}{'users':>7}{'R@k':>8}{'N@k':>8}{'valid N@k':>10}{'fit s':>8}  device"
    print(header)
    for r in rows:
        valid = f"{r['valid_ndcg']:.4f}" if r["valid_ndcg"] is not None else ""
        fit = f"{r['fit_s']:.0f}" if r["fit_s"] is not None and r["slice"] == "overall" else ""
        print(f"{r['dataset']:<10}{r['model']:<28}{r['slice']:<12}{r['users']:>7}{r['recall']:>8.4f}{r['ndcg']:>8.4f}"
              f"{valid:>10}{fit:>8}  {r['device']}")
    out = Path(args.output)
    out.write_text(json.dumps(rows, indent=2))
    _plot(rows, out.with_suffix(".png"))
    print(f"[ablation] {out} + {out.with_suffix('.png')}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    slices = ["overall", "cold_items", "cold_users"]
    fig, axes = plt.subplots(len(datasets), len(slices), figsize=(4.2 * len(slices), 2.8 * len(datasets) + 0.6),
                             squeeze=False)
    for i, ds in enumerate(datasets):
        for j, sl in enumerate(slices):
            ax = axes[i][j]
            part = [r for r in rows if r["dataset"] == ds and r["slice"] == sl]
            ax.barh([r["model"] for r in part], [r["ndcg"] for r in part], color="#4C72B0")
            ax.invert_yaxis()
            ax.tick_params(labelsize=7)
            k = part[0]["k"] if part else 10
            n = part[0]["users"] if part else 0
            ax.set_title(f"{ds} - {sl} (n={n}) - NDCG@{k}", fontsize=9)
            if not n:
                ax.text(0.5, 0.5, "empty slice", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dataset", required=True)
    r.add_argument("--models", required=True, help="comma-separated registry names, in training order")
    r.add_argument("--params", help='JSON: {"model": {"hyper_parameter": value}}')
    r.add_argument("--serve", help="also fit + evaluate the reranker over this model's candidates")
    r.add_argument("--device", default="auto")
    r.add_argument("--root", help="artifact root (default: a temp dir)")
    r.add_argument("--output")
    r.set_defaults(fn=cmd_run)
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    t.add_argument("--output", default=str(RESULTS / "ablation.json"))
    t.set_defaults(fn=cmd_table)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
