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

from tapestry.reporting.ablation import ablation_rows, format_ablation_table, plot_ablation

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


def _rows(report: dict) -> list[dict]:
    return ablation_rows(report["metrics"], report["dataset"], report["machine"]["device"])


def cmd_table(args) -> None:
    rows = [r for path in args.files for r in _rows(json.loads(Path(path).read_text()))]
    print(format_ablation_table(rows))
    out = Path(args.output)
    out.write_text(json.dumps(rows, indent=2))
    plot_ablation(rows, out.with_suffix(".png"))
    print(f"[ablation] {out} + {out.with_suffix('.png')}")


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
