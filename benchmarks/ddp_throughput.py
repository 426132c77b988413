"""Data-parallel training throughput: training examples per second for one process vs N under torchrun (DDP).

Each model trains with its registry defaults (the same global batch either way), `--epochs` epochs without
validation. The time is the epoch loop's own (Recommender.epoch_seconds_, measured by rank 0 under torchrun), so
torchrun's start-up and the imports are left out; the first epoch (DDP's construction, warm-up) is dropped and the
median of the others kept. Three settings, on the same cores:
  1 process with N threads (torch's default on N cores), 1 process with 1 thread, N processes with 1 thread each.
Examples are what one epoch iterates: sequences (SASRec, BERT4Rec), (prefix -> next item) pairs (two-tower,
SR-GNN, ComiRec), training edges (LightGCN) or positive edges (SAGE, relational SAGE, HGT: each process samples its
share's subgraphs), or candidate lists (the fusion reranker, over popularity's lists here).

    python benchmarks/ddp_throughput.py                                   # ML-100K, sasrec two_tower lightgcn
    python benchmarks/ddp_throughput.py --models sasrec,bert4rec,comirec,srgnn,two_tower,lightgcn --epochs 3
    python benchmarks/ddp_throughput.py --models lightgcn,sage,rsage,hgt,fusion --output \
        benchmarks/results/ddp_throughput-ml-100k-gnn.json   # the sampled GNNs and the reranker
    python benchmarks/ddp_throughput.py --max-users 100 --epochs 2 --output /tmp/ddp.json   # a quick check

Writes benchmarks/results/ddp_throughput-<dataset>.json (or --output): per model the epoch seconds and examples/s
of each setting, the ratios, and the machine's load average around each measurement.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
NOTE = ("Throughput on this machine's {cores} CPU cores, shared with whatever else runs here (load averages "
        "recorded). N processes on N cores compete with each other and with every other job for the same cores, "
        "and pay a gradient all-reduce (gloo) per step: the ratio is what it is on this machine, not a scaling law. "
        "On busy shared cores one process with {cores} threads can be slower than with 1 (its fork/join waits for the "
        "busy core: tests/conftest.py), hence both single-process settings. Data parallelism pays off with a core "
        "set (or GPU) per process and large per-process batches.")


# The fusion reranker over popularity's candidate lists: its own training, not a retriever chain's; patience above
# the epochs (its early stopping counts from 0), validation still runs every epoch (rank 0) but is not timed.
BENCH_PARAMS = {"fusion": dict(retriever="popularity", graph_from=None, cross_fit=False, item_init=False,
                               patience=1000)}


def _data(dataset: str, max_users: int):
    import polars as pl

    from tapestry.cli import load_tables
    from tapestry.etl import run_etl
    from tapestry.training.data import InteractionData

    ns = argparse.Namespace(events=None, items=None, users=None, dataset=dataset, data_dir=None, ratings=None)
    tables = load_tables(ns)
    if max_users:
        tables = dataclasses.replace(tables, events=tables.events.filter(
            pl.col("user_id").cast(pl.Int64, strict=False) <= max_users))
    etl = run_etl(tables, "bench", Path(tempfile.mkdtemp(prefix="ddp-bench-")), log=lambda *_: None)
    return InteractionData.load(etl.path)


def examples_per_epoch(rec, data, graph) -> int:
    """How many examples one epoch of `rec.fit` iterates (the shared minibatch loop's num_examples)."""
    from tapestry.graph.hetero import INTERACTS
    from tapestry.training.examples import PrefixExamples

    c, seqs = rec.cfg, data.sequences(("train",))
    kind = type(rec).__name__
    if kind in ("SASRecRecommender", "BERT4RecRecommender"):
        return sum(len(s) >= 2 for s in seqs)
    if kind == "TwoTowerRecommender":
        return len(PrefixExamples(seqs, c.max_len, c.max_examples_per_user))
    if kind == "SRGNNRecommender":
        return len(PrefixExamples(seqs, c.max_len, c.max_prefixes_per_user or 0))
    if kind == "ComiRecRecommender":
        per = c.positions_per_user
        return sum(len(s) - 1 if per <= 0 else min(len(s) - 1, per) for s in seqs if len(s) >= 2)
    if kind == "LightGCNRecommender":
        return int(graph[INTERACTS].edge_index.shape[1])
    if kind == "SAGERecommender":                   # positive edges (each user-item pair once)
        from tapestry.training.sage import interaction_graph
        return int(interaction_graph(graph)[INTERACTS].edge_index.shape[1])
    if kind in ("RSAGERecommender", "HGTRecommender"):
        from tapestry.graph.typed import supervision_pairs
        if kind == "HGTRecommender" and c.graph == "given" and not c.target_events:
            return int(graph[INTERACTS].edge_index.shape[1])
        pairs = supervision_pairs(data, tuple(c.target_events))
        return int((torch.unique(pairs, dim=1) if kind == "RSAGERecommender" else pairs).shape[1])
    if kind == "FusionRecommender":                 # candidate lists
        return int(rec.report["train_lists"])
    raise ValueError(f"no example count for {kind}")


def _measure(name: str, data, graph, epochs: int, processes: int, threads: int) -> dict:
    from tapestry.training import data_parallel, registry

    # No validation (patience 0) where a model has early stopping; the sampled GNNs have none.
    fields = {f.name for f in dataclasses.fields(registry.get(name).recommender_class().Config)}
    params = {"epochs": epochs, **({"patience": 0} if "patience" in fields else {}), **BENCH_PARAMS.get(name, {})}
    rec = registry.build(name, params, device="cpu", progress=False)
    if name in BENCH_PARAMS:                        # the reranker reranks popularity's lists (closed-form upstream)
        rec.bind({"popularity": registry.build("popularity", None, device="cpu").fit(data)})
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    if processes > 1:
        os.environ["OMP_NUM_THREADS"] = str(threads)          # each torchrun worker's intra-op threads
        data_parallel.fit(rec, data, graph, processes)
    else:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            rec.fit(data, graph)
        finally:
            torch.set_num_threads(previous)
    wall = time.perf_counter() - t0
    steady = rec.epoch_seconds_[1:] or rec.epoch_seconds_
    epoch_s = statistics.median(steady)
    n = examples_per_epoch(rec, data, graph)
    return {"processes": processes, "threads_per_process": threads, "epoch_seconds": rec.epoch_seconds_,
            "epoch_s": round(epoch_s, 4), "examples_per_epoch": n, "examples_per_s": round(n / epoch_s, 1),
            "fit_wall_s": round(wall, 2), "final_loss": round(float(rec.loss_history_[-1]), 5),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--models", default="sasrec,two_tower,lightgcn",
                   help="registry names of data-parallel models (comma-separated)")
    p.add_argument("--epochs", type=int, default=3, help="per fit; the first is dropped as warm-up")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--max-users", type=int, default=0, help="keep users with id <= this (0: all): a quick check")
    p.add_argument("--output", type=Path, help="JSON path (default: benchmarks/results/ddp_throughput-<dataset>.json)")
    p.add_argument("--single-thread-only", action="store_true",
                   help="leave out the 1-process-N-threads setting (on loaded shared cores it can take 10x longer)")
    p.add_argument("--note", default="", help="appended to the JSON's note (e.g. the machine's load)")
    args = p.parse_args()

    from tapestry.graph.hetero import build_hetero_graph

    data = _data(args.dataset, args.max_users)
    graph = build_hetero_graph(data)
    cores, n = os.cpu_count(), args.processes
    result = {"benchmark": "ddp_throughput", "dataset": args.dataset, "max_users": args.max_users or None,
              "train_events": data.train.height, "epochs": args.epochs, "cpu_count": cores, "device": "cpu",
              "backend": "gloo", "torch": torch.__version__, "loadavg_start": [round(x, 2) for x in os.getloadavg()],
              "note": NOTE.format(cores=cores) + (" " + args.note if args.note else ""), "models": {}}
    out = args.output or RESULTS / f"ddp_throughput-{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        runs = {} if args.single_thread_only else {
            f"1proc_{n}threads": _measure(name, data, graph, args.epochs, 1, n)}
        runs.update({"1proc_1thread": _measure(name, data, graph, args.epochs, 1, 1),
                     f"{n}proc_1thread": _measure(name, data, graph, args.epochs, n, 1)})
        eps = {k: v["examples_per_s"] for k, v in runs.items()}
        if not args.single_thread_only:
            runs["ratio_vs_1proc_same_cores"] = round(eps[f"{n}proc_1thread"] / eps[f"1proc_{n}threads"], 3)
        runs["ratio_vs_1proc_1thread"] = round(eps[f"{n}proc_1thread"] / eps["1proc_1thread"], 3)
        result["models"][name] = runs
        print(f"{name}: examples/s " + ", ".join(f"{k} {v}" for k, v in eps.items())
              + f"; {n} processes / 1 process (1 thread) = {runs['ratio_vs_1proc_1thread']}", flush=True)
        result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        # Rewritten after every model (temp + rename): a run stopped by a time limit keeps what it measured.
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
