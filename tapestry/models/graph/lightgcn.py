"""LightGCN (He et al. 2020): ID embeddings smoothed over the graph by parameter-free propagation.

    e^(0) = embedding table;  e^(l+1) = A_hat e^(l);  output = mean over l = 0..L of e^(l)

Built from its layer (tapestry.nn.propagation) like PyG's `models/lightgcn.py`; the node space may hold users,
items and entity nodes (genre, brand, ...) flattened into one index range, so rare items borrow signal from
their attributes. The loss and the loop live in tapestry.training.lightgcn.
"""
from __future__ import annotations

import torch
from torch import nn

from tapestry.nn.propagation import SymmetricPropagation


class LightGCN(nn.Module):
    def __init__(self, num_nodes: int, embedding_dim: int = 64, num_layers: int = 3):
        super().__init__()
        self.num_layers = num_layers
        self.embedding = nn.Embedding(num_nodes, embedding_dim)
        self.propagate = SymmetricPropagation()
        # Xavier-uniform, as PyG's LightGCN (the defaults in tapestry.training.lightgcn were tuned with it);
        # layer weights are uniform, alpha_l = 1 / (L + 1), as in the paper.
        nn.init.xavier_uniform_(self.embedding.weight)

    def forward(self, adj: torch.Tensor) -> torch.Tensor:
        """adj: normalised sparse adjacency [N, N] -> final node embeddings [N, D]."""
        x = self.embedding.weight
        out = x
        for _ in range(self.num_layers):
            x = self.propagate(x, adj)
            out = out + x
        return out / (self.num_layers + 1)
