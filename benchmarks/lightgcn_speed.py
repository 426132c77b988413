"""LightGCN training speed: our CSR propagation vs PyG's `torch_geometric.nn.models.LightGCN`, side by side.

Same graph, same batch size, same BPR loss and optimiser; both run the standard recipe of one full propagation
per mini-batch. PyG's model is used as its docs show it (edge_index input, normalisation inside LGConv).
Reports seconds per training step and the ratio (PyG / ours) measured in the same process.

    python benchmarks/lightgcn_speed.py --dataset ml-1m --steps 10
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _graph(dataset: str):
    from tapestry.cli import load_tables
    from tapestry.etl import run_etl
    from tapestry.graph.hetero import build_hetero_graph, homogeneous_view
    from tapestry.training.data import InteractionData

    ns = argparse.Namespace(events=None, items=None, users=None, dataset=dataset, data_dir=None, ratings=None)
    etl = run_etl(load_tables(ns), "bench", Path(tempfile.mkdtemp()), log=lambda *_: None)
    data = InteractionData.load(etl.path)
    g = build_hetero_graph(data)
    return data, g, homogeneous_view(g)


def _time_steps(step, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    args = p.parse_args()

    from torch_geometric.nn.models import LightGCN as PyGLightGCN

    from tapestry.graph.hetero import INTERACTS
    from tapestry.models.graph.lightgcn import LightGCN
    from tapestry.nn.propagation import normalized_adjacency
    from tapestry.training.losses import bpr_loss

    data, g, view = _graph(args.dataset)
    ei = g[INTERACTS].edge_index
    users, items = ei[0] + view.offsets["user"], ei[1] + view.offsets["item"]
    n, i_off = data.num_items, view.offsets["item"]
    gen = torch.Generator().manual_seed(0)

    def batch():
        idx = torch.randint(0, users.numel(), (args.batch_size,), generator=gen)
        return users[idx], items[idx], torch.randint(1, n, (args.batch_size,), generator=gen) + i_off

    t0 = time.perf_counter()
    adj = normalized_adjacency(view.edge_index, view.num_nodes)
    setup_s = time.perf_counter() - t0
    ours = LightGCN(view.num_nodes, args.dim, args.layers)
    opt_a = torch.optim.Adam(ours.parameters(), lr=1e-3)

    def step_ours():
        u, i, j = batch()
        emb = ours(adj)
        loss = bpr_loss((emb[u] * emb[i]).sum(-1), (emb[u] * emb[j]).sum(-1))
        opt_a.zero_grad()
        loss.backward()
        opt_a.step()

    pyg = PyGLightGCN(view.num_nodes, args.dim, args.layers)
    opt_b = torch.optim.Adam(pyg.parameters(), lr=1e-3)
    edge_index = view.edge_index

    def step_pyg():
        u, i, j = batch()
        emb = pyg.get_embedding(edge_index)
        loss = bpr_loss((emb[u] * emb[i]).sum(-1), (emb[u] * emb[j]).sum(-1))
        opt_b.zero_grad()
        loss.backward()
        opt_b.step()

    ours_s = _time_steps(step_ours, args.steps)
    pyg_s = _time_steps(step_pyg, args.steps)
    steps_per_epoch = -(-users.numel() // args.batch_size)
    result = {"benchmark": "lightgcn_speed", "dataset": args.dataset, "nodes": view.num_nodes,
              "directed_edges": int(view.edge_index.shape[1]), "layers": args.layers, "dim": args.dim,
              "batch_size": args.batch_size, "steps_per_epoch": steps_per_epoch,
              "device": "cpu", "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "ours_s_per_step": round(ours_s, 4), "pyg_s_per_step": round(pyg_s, 4),
              "ours_epoch_s": round(ours_s * steps_per_epoch, 1), "pyg_epoch_s": round(pyg_s * steps_per_epoch, 1),
              "adjacency_build_s": round(setup_s, 3), "speedup_pyg_over_ours": round(pyg_s / ours_s, 2)}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"lightgcn_speed-{args.dataset}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
