"""SASRec training speed: tapestry's SASRec (full-softmax CE) vs RecTools' SASRecModel (softmax loss), side by side.

Same data (the leave-one-out TRAIN split of a data set), same sequence length, same embedding size, blocks, heads,
dropout, batch size and optimiser (Adam, lr 1e-3); one thread each, in one process, the order alternating between
sequence lengths. Both train on each user's last `max_len + 1` training items. An EPOCH is one pass over the
training users: tapestry's is timed around its epoch function, RecTools' by a Lightning callback around its
epoch (neither includes validation). Reports seconds per epoch (median of the timed epochs) and the ratio
tapestry / RecTools (the issue's target is <= 0.5) for each tapestry variant: `tapestry_reference` (the loss as
it was: F.cross_entropy over the materialised logits), `tapestry` (the fused chunked softmax, float32: the
default) and `tapestry_bf16` (its bfloat16 products, SASRecConfig.softmax_dtype).

    python benchmarks/sasrec_speed.py --dataset ml-1m --epochs 3 --max-lens 50,200

Writes benchmarks/results/sasrec_speed-<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"


def _data(dataset: str):
    from tapestry.cli import load_tables
    from tapestry.etl import run_etl
    from tapestry.training.data import InteractionData

    ns = argparse.Namespace(events=None, items=None, users=None, dataset=dataset, data_dir=None, ratings=None)
    etl = run_etl(load_tables(ns), dataset.replace(".", "-"), Path(tempfile.mkdtemp()), log=lambda *_: None)
    return InteractionData.load(etl.path)


# tapestry variants: the loss as it was before the fused softmax (F.cross_entropy over the materialised logits),
# the fused chunked softmax in float32 (the default) and in bfloat16 (SASRecConfig.softmax_dtype).
VARIANTS = {"tapestry_reference": None, "tapestry": "float32", "tapestry_bf16": "bfloat16"}


def _reference_ce(h, table, targets, chunk=None, dtype=None):
    import torch.nn.functional as F

    return F.cross_entropy(h @ table.T, targets)


def time_tapestry(data, max_len: int, args, variant: str = "tapestry") -> list[float]:
    """Seconds of each epoch of tapestry's SASRec training loop (the function `fit` calls once per epoch)."""
    from tapestry.training import sasrec as sasrec_module
    from tapestry.training.sasrec import SASRecConfig, SASRecRecommender

    dtype = VARIANTS[variant]
    cfg = SASRecConfig(hidden_dim=args.dim, num_blocks=args.blocks, num_heads=args.heads, max_len=max_len,
                       dropout=args.dropout, batch_size=args.batch_size, lr=args.lr, loss="softmax", seed=0,
                       softmax_dtype=dtype or "float32")
    rec = SASRecRecommender(cfg)
    rec.num_items = data.num_items
    windows = rec._training_windows(data.sequences(("train",)))
    torch.manual_seed(0)
    model = rec._new_model(data.num_items)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    rec.loss_used_ = "softmax"
    times = []
    fused = sasrec_module.full_softmax_ce
    if dtype is None:           # the pre-fusion loss, swapped in for this measurement only
        sasrec_module.full_softmax_ce = _reference_ce
    try:
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            rec._train_epoch(model, opt, windows)
            times.append(time.perf_counter() - t0)
    finally:
        sasrec_module.full_softmax_ce = fused
    return times


def time_rectools(data, max_len: int, args) -> list[float]:
    """Seconds of each epoch of RecTools' SASRecModel.fit (a Lightning callback around each training epoch)."""
    from pytorch_lightning import Callback, Trainer, seed_everything
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet

    from peers.rectools_sasrec import _frame

    times: list[float] = []

    class EpochTimer(Callback):
        def on_train_epoch_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            times.append(time.perf_counter() - self.t0)

    def trainer():
        return Trainer(max_epochs=args.epochs, min_epochs=args.epochs, deterministic=False, accelerator="cpu",
                       devices=1, enable_progress_bar=False, enable_model_summary=False, logger=False,
                       enable_checkpointing=False, callbacks=[EpochTimer()])

    seed_everything(0)
    model = SASRecModel(n_factors=args.dim, n_blocks=args.blocks, n_heads=args.heads, dropout_rate=args.dropout,
                        session_max_len=max_len, loss="softmax", lr=args.lr, batch_size=args.batch_size,
                        epochs=args.epochs, item_net_block_types=(IdEmbeddingsItemNet,), get_trainer_func=trainer)
    model.fit(Dataset.construct(_frame([data.train])))
    return times


def summary(times: list[float]) -> dict:
    return {"seconds_per_epoch": round(statistics.median(times), 3), "epochs": [round(t, 3) for t in times]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-lens", default="50,200")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--variants", default="tapestry_reference,tapestry,tapestry_bf16",
                   help=f"tapestry variants timed beside RecTools: {', '.join(VARIANTS)}")
    p.add_argument("--output")
    p.add_argument("--label", default="", help="note stored in the JSON (e.g. 'after the fix')")
    args = p.parse_args()
    torch.set_num_threads(1)
    load = [round(x, 2) for x in os.getloadavg()]
    data = _data(args.dataset)
    rows = {}
    names = ["rectools", *args.variants.split(",")]
    for i, max_len in enumerate(int(x) for x in args.max_lens.split(",")):
        order = names if i % 2 == 0 else names[::-1]     # alternate: the machine's load drifts
        row = {"order": list(order)}
        for name in order:
            times = time_rectools(data, max_len, args) if name == "rectools" else time_tapestry(data, max_len, args,
                                                                                              name)
            row[name] = summary(times)
            print(f"[sasrec_speed] max_len {max_len} {name}: {row[name]}", flush=True)
        row["ratio_over_rectools"] = {n: round(row[n]["seconds_per_epoch"] / row["rectools"]["seconds_per_epoch"], 4)
                                      for n in names[1:]}
        rows[str(max_len)] = row
        print(f"[sasrec_speed] max_len {max_len}: ratios {row['ratio_over_rectools']}", flush=True)
    import rectools

    report = {"dataset": args.dataset, "split": "leave-one-out train split",
              "train_users": int(sum(1 for s in data.sequences(("train",)) if len(s) >= 2)),
              "num_items": int(data.num_items - 1), "label": args.label,
              "config": {"dim": args.dim, "blocks": args.blocks, "heads": args.heads, "dropout": args.dropout,
                         "batch_size": args.batch_size, "lr": args.lr, "optimizer": "adam", "loss": "full softmax CE",
                         "epochs_timed": args.epochs},
              "variants": {"tapestry_reference": "F.cross_entropy over the materialised logits (the loss before the fused one)",
                           "tapestry": "fused chunked full softmax, float32 (the default)",
                           "tapestry_bf16": "fused chunked full softmax, bfloat16 products (softmax_dtype)"},
              "by_max_len": rows, "target": "tapestry / rectools <= 0.5",
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_average_at_start": load, "python": platform.python_version(),
                          "torch": torch.__version__, "rectools": rectools.__version__},
              "command": " ".join(sys.argv), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.output or RESULTS / f"sasrec_speed-{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"[sasrec_speed] {out}", flush=True)


if __name__ == "__main__":
    main()
