"""Heterogeneous temporal graph from the ETL artifacts.

Node types: `user`, `item`, and one per entity type (ML: `genre`, `gender`, `age_group`, `occupation`).
Edges: (user, interacts, item) from the TRAINING split only, with `time` (unix s) and `weight`; (item, has_<e>, <e>)
and (user, has_<e>, <e>) for entities; every edge type also in reverse (`rev_<rel>`), so messages flow both ways.
Node index 0 of user/item is the reserved OOV row: present, isolated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch_geometric.data import HeteroData

INTERACTS = ("user", "interacts", "item")
REV_INTERACTS = ("item", "rev_interacts", "user")


def _edge(src: np.ndarray, dst: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([src, dst]).astype(np.int64))


def _add_entities(g: HeteroData, owner: str, entities: pl.DataFrame) -> None:
    idx_col = f"{owner}_idx"
    for (etype,), part in entities.group_by("entity_type", maintain_order=True):
        if etype in ("user", "item"):
            raise ValueError(f"entity type {etype!r} clashes with a core node type; rename the column")
        values = sorted(part["entity_value"].unique().to_list())
        # Entity node types can be shared between users and items (e.g. `city`): extend, never renumber.
        existing = list(getattr(g[etype], "entity_values", [])) if etype in g.node_types else []
        for v in values:
            if v not in existing:
                existing.append(v)
        g[etype].entity_values = existing
        g[etype].num_nodes = len(existing)
        lookup = {v: i for i, v in enumerate(existing)}
        src = part[idx_col].to_numpy()
        dst = np.array([lookup[v] for v in part["entity_value"].to_list()], dtype=np.int64)
        rel = f"has_{etype}"
        g[owner, rel, etype].edge_index = _edge(src, dst)
        g[etype, f"rev_{rel}", owner].edge_index = _edge(dst, src)


def build_hetero_graph(data) -> HeteroData:
    """`data` is a tapestry.training.data.InteractionData. Only `data.train` contributes interaction edges."""
    g = HeteroData()
    g["user"].num_nodes = data.num_users
    g["item"].num_nodes = data.num_items
    tr = data.train
    src, dst = tr["user_idx"].to_numpy(), tr["item_idx"].to_numpy()
    g[INTERACTS].edge_index = _edge(src, dst)
    g[INTERACTS].time = torch.from_numpy(tr["timestamp"].to_numpy().astype(np.int64))
    g[INTERACTS].weight = torch.from_numpy(tr["weight"].to_numpy().astype(np.float32))
    rev = REV_INTERACTS
    g[rev].edge_index = _edge(dst, src)
    g[rev].time = g[INTERACTS].time.clone()
    g[rev].weight = g[INTERACTS].weight.clone()
    _add_entities(g, "item", data.item_entities)
    _add_entities(g, "user", data.user_entities)
    return g


@dataclass
class HomogeneousView:
    """All node types flattened into one index space (for LightGCN over users, items and entities)."""
    edge_index: torch.Tensor          # [2, E], undirected (both directions present)
    num_nodes: int
    offsets: dict[str, int]           # node type -> first global index
    sizes: dict[str, int]

    def slice(self, node_type: str) -> slice:
        start = self.offsets[node_type]
        return slice(start, start + self.sizes[node_type])


def homogeneous_view(g: HeteroData) -> HomogeneousView:
    offsets, sizes, start = {}, {}, 0
    for nt in g.node_types:
        offsets[nt], sizes[nt] = start, int(g[nt].num_nodes)
        start += sizes[nt]
    parts = []
    for (s, _, d), store in g.edge_items():
        ei = store.edge_index
        parts.append(torch.stack([ei[0] + offsets[s], ei[1] + offsets[d]]))
    edge_index = torch.cat(parts, dim=1) if parts else torch.empty(2, 0, dtype=torch.long)
    return HomogeneousView(edge_index, start, offsets, sizes)
