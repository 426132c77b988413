"""Statistics of a link loader's batches, to compare two samplers that should draw alike (cuGraph-PyG on CUDA vs
PyG on the CPU, in `make gpu-check`): sampling is random, so two samplers agree in distribution, not batch by batch.

Per pass over (up to `max_batches` of) a loader: seeds per batch, nodes and edges per seed, the largest sampled
in-degree of a node per edge type (a node is expanded once, so it never exceeds the largest fan-out), and the
full-graph degree of the sampled neighbours (uniform neighbour sampling reaches a node in proportion to its
degree: a sampler that drew differently shows here first), as a mean of log2(1 + degree) and a histogram over
log2 buckets.
"""
from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import HeteroData

from tapestry.training.sampler_contract import check_batch

DEGREE_BUCKETS = 24                    # log2 buckets: degree 0, 1, 2-3, 4-7, ... up to 2^22+


def edge_key(et) -> str:
    """A JSON key for an edge type: "user__interacts__item"."""
    return "__".join(et)


def _log2_bucket(deg: torch.Tensor) -> torch.Tensor:
    return torch.floor(torch.log2(deg.double() + 1)).long().clamp(max=DEGREE_BUCKETS - 1)


def sampling_stats(loader, graph: HeteroData, num_neighbors, batch_size: int,
                   max_batches: int | None = None) -> dict:
    """JSON-able statistics of `loader`'s batches over `graph` (the full graph it samples; only node counts and
    edge lists are read). Every batch is checked against the sampler contract on the way."""
    num_nodes = {nt: int(graph[nt].num_nodes) for nt in graph.node_types}
    out_degree = {et: torch.bincount(graph[et].edge_index[0], minlength=num_nodes[et[0]])
                  for et in graph.edge_types}
    seeds, batches, negatives = 0, 0, 0
    nodes = {nt: 0 for nt in graph.node_types}
    edges = {et: 0 for et in graph.edge_types}
    max_in = {et: 0 for et in graph.edge_types}
    log_deg_sum = {et: 0.0 for et in graph.edge_types}
    hist = {et: torch.zeros(DEGREE_BUCKETS, dtype=torch.long) for et in graph.edge_types}
    for batch in loader:
        sizes = check_batch(batch, num_nodes, batch_size)
        batches, seeds, negatives = batches + 1, seeds + sizes.seeds, sizes.negatives_per_seed
        for nt, n in sizes.nodes.items():
            nodes[nt] = nodes.get(nt, 0) + n
        for et in sizes.edges:
            ei = batch[et].edge_index.cpu()
            edges[et] = edges.get(et, 0) + int(ei.size(1))
            if not ei.size(1) or et not in out_degree:
                continue
            max_in[et] = max(max_in[et], int(torch.bincount(ei[1]).max()))
            neighbours = batch[et[0]].n_id.cpu()[ei[0]]
            deg = out_degree[et][neighbours]
            log_deg_sum[et] += float(torch.log2(deg.double() + 1).sum())
            hist[et] += torch.bincount(_log2_bucket(deg), minlength=DEGREE_BUCKETS)
        if max_batches is not None and batches >= max_batches:
            break
    if not batches:
        raise ValueError("the loader yielded no batch")
    fanout = max(max(v) for v in num_neighbors.values()) if isinstance(num_neighbors, dict) else max(num_neighbors)
    return {
        "batches": batches, "seeds": seeds, "seeds_per_batch": seeds / batches, "negatives_per_seed": negatives,
        "fanout_max": int(fanout),
        "nodes_per_seed": {nt: n / seeds for nt, n in nodes.items()},
        "edges_per_seed": {edge_key(et): e / seeds for et, e in edges.items()},
        "max_in_degree": {edge_key(et): m for et, m in max_in.items()},
        "neighbour_log2_degree_mean": {edge_key(et): (log_deg_sum[et] / edges[et] if edges[et] else 0.0)
                                       for et in graph.edge_types},
        "neighbour_degree_hist": {edge_key(et): (h / max(int(h.sum()), 1)).tolist() for et, h in hist.items()},
    }


def _rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def compare_sampling_stats(reference: dict, other: dict, rel_tol: float = 0.15, tv_tol: float = 0.1) -> dict:
    """{"ok", "checks": [...]}: `other` (e.g. cuGraph) against `reference` (e.g. PyG on the CPU). Means per seed
    within `rel_tol` (relative), degree histograms within `tv_tol` (total variation distance), the same seeds
    and negatives per batch, and neither over its fan-out."""
    checks = []

    def add(name, a, b, ok):
        checks.append({"check": name, "reference": a, "other": b, "ok": bool(ok)})

    add("seeds_per_batch", reference["seeds_per_batch"], other["seeds_per_batch"],
        _rel_diff(reference["seeds_per_batch"], other["seeds_per_batch"]) <= 0.01)
    add("negatives_per_seed", reference["negatives_per_seed"], other["negatives_per_seed"],
        reference["negatives_per_seed"] == other["negatives_per_seed"])
    for group in ("nodes_per_seed", "edges_per_seed", "neighbour_log2_degree_mean"):
        for key, a in reference[group].items():
            b = other[group].get(key, 0.0)
            add(f"{group}[{key}]", a, b, _rel_diff(a, b) <= rel_tol)
    for key, a in reference["neighbour_degree_hist"].items():
        b = other["neighbour_degree_hist"].get(key, [0.0] * len(a))
        tv = 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())
        add(f"degree_hist_tv[{key}]", 0.0, round(tv, 4), tv <= tv_tol)
    for stats, who in ((reference, "reference"), (other, "other")):
        worst = max(stats["max_in_degree"].values(), default=0)
        add(f"fanout_respected[{who}]", stats["fanout_max"], worst, worst <= stats["fanout_max"])
    return {"ok": all(c["ok"] for c in checks), "rel_tol": rel_tol, "tv_tol": tv_tol, "checks": checks}


def skewed_interaction_graph(num_users: int, num_items: int, num_edges: int, seed: int = 0,
                             zipf: float = 1.1) -> HeteroData:
    """A user-item graph with Zipf-popular items (degrees spread over several log2 buckets), both directions;
    node 0 of each type is left edgeless, as the ETL's padding / OOV row is."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, num_items, dtype=np.float64)
    p = ranks ** -zipf
    users = rng.integers(1, num_users, num_edges)
    items = rng.choice(np.arange(1, num_items), size=num_edges, p=p / p.sum())
    pairs = np.unique(np.stack([users, items]), axis=1)
    g = HeteroData()
    g["user"].num_nodes, g["item"].num_nodes = num_users, num_items
    ei = torch.from_numpy(pairs).long()
    g["user", "interacts", "item"].edge_index = ei
    g["item", "rev_interacts", "user"].edge_index = ei.flip(0)
    return g
