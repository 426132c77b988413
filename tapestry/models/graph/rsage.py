"""Relational GraphSAGE over a typed graph (R-GCN-style weights per relation, GraphSAGE's mean aggregator).

    x_t        = ID embedding of each node of type t (or of its category: sessions, mediated events)
    layer l:   h_t <- AGG_{relations r = (s, rel, t)} SAGEConv_r((h_s, h_t))
               SAGEConv_r = W_r * mean(neighbours over r) + R_r * h_t   (its own weights per relation)

One SAGEConv per relation inside a PyG HeteroConv (what `to_hetero(GraphSAGE)` builds, written out): a purchase,
a view, a friend, a tag value and a session each speak through their own weights, and AGG (`aggr`, default the
mean over the relations a node type receives) keeps the scale independent of how many relations there are. A node
type that receives no message in a (sampled) subgraph keeps its previous vector. With no edges at all the layers
reduce to the root weights applied to the ID embeddings: the ablation's "no graph" model.

`keep` (user / item: 1 for nodes with training interactions) zeroes the ID embedding of nodes the training graph
never linked to an interaction, so that an item seen only through its attributes is described by them, not by an
untrained random row. The module holds parameters only; the loop lives in tapestry.training.rsage.
"""
from __future__ import annotations

import warnings

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import HeteroConv, SAGEConv
from torch_geometric.typing import EdgeType, Metadata, NodeType


class RelationalSAGE(nn.Module):
    """ID (or category) embeddings per node type -> `num_layers` HeteroConv(SAGEConv per relation).

    Args:
        num_nodes: node type -> embedding rows (nodes, or categories for the types in `categories`).
        metadata: (node types, edge types) as `HeteroData.metadata()` gives them.
        dim: embedding and layer width.  num_layers: message-passing layers (= sampling hops).
        dropout: between layers.  aggr: how a node type combines its relations ("mean", "sum", "max").
        categories: node type -> [num nodes] long, the embedding row of each node, for types embedded by category.
    """

    def __init__(self, num_nodes: dict[NodeType, int], metadata: Metadata, dim: int = 64, num_layers: int = 2,
                 dropout: float = 0.0, aggr: str = "mean", categories: dict[NodeType, Tensor] | None = None):
        super().__init__()
        self.num_layers, self.dropout = num_layers, dropout
        self.embeddings = nn.ModuleDict({nt: nn.Embedding(n, dim) for nt, n in num_nodes.items()})
        for emb in self.embeddings.values():
            nn.init.normal_(emb.weight, std=0.1)      # as the other graph encoders' ID tables
        self.categorical = sorted(categories or {})
        for nt in self.categorical:     # buffers: they follow .to(device); derived from the graph, not saved
            self.register_buffer(f"category_{nt}", categories[nt].long(), persistent=False)
        with warnings.catch_warnings():   # "node types ... do not get updated": sources-only types keep their input
            warnings.simplefilter("ignore", UserWarning)
            self.convs = nn.ModuleList(
                HeteroConv({et: SAGEConv((dim, dim), dim) for et in metadata[1]}, aggr=aggr)
                for _ in range(num_layers))

    def inputs(self, n_id_dict: dict[NodeType, Tensor], keep: dict[NodeType, Tensor] | None = None
               ) -> dict[NodeType, Tensor]:
        """Layer-0 vectors of the nodes `n_id_dict` lists (global ids per type); `keep` [num nodes] 0/1 per type."""
        x = {}
        for nt, n_id in n_id_dict.items():
            rows = getattr(self, f"category_{nt}")[n_id] if nt in self.categorical else n_id
            h = self.embeddings[nt](rows)
            if keep is not None and nt in keep:
                h = h * keep[nt][n_id].unsqueeze(-1)
            x[nt] = h
        return x

    def forward(self, n_id_dict: dict[NodeType, Tensor], edge_index_dict: dict[EdgeType, Tensor],
                keep: dict[NodeType, Tensor] | None = None) -> dict[NodeType, Tensor]:
        """{"user": [U, dim], "item": [I, dim]} for the listed nodes; `edge_index_dict` is local to them (a sampled
        subgraph, or the whole graph with n_id = arange). Every listed node is updated at every layer (PyG's
        mini-batch convention: the seeds' outputs are exact for their sampled neighbourhood)."""
        x = self.inputs(n_id_dict, keep)
        for i, conv in enumerate(self.convs):
            out = {nt: h for nt, h in conv(x, edge_index_dict).items() if h is not None}
            if i < self.num_layers - 1:
                out = {nt: F.dropout(h.relu(), self.dropout, self.training) for nt, h in out.items()}
            x = {**x, **out}
        return {"user": x["user"], "item": x["item"]}
