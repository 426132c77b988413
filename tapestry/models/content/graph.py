"""LightGCN with content: layer-0 item vectors = ID embedding + content encoder output, then the usual
parameter-free propagation (tapestry.models.graph.lightgcn).

Cold items (catalogue items without events) are nodes too: their ID rows are masked to zero (no event ever
trains them, so they would be random noise), so their layer-0 vector is their content alone, and propagation
adds their brand/category neighbours. The encoder trains jointly with the ID table through the warm items.
"""
from __future__ import annotations

import torch
from torch import nn

from tapestry.nn.propagation import SymmetricPropagation


class ContentLightGCN(nn.Module):
    def __init__(self, num_nodes: int, item_slice: slice, id_mask: torch.Tensor, encoder: nn.Module | None,
                 embedding_dim: int = 64, num_layers: int = 2, id_dropout: float = 0.0):
        """`item_slice`: the catalogue items' node range (catalogue index r = node item_slice.start + r);
        `id_mask` [num_nodes] is 1 where a node's ID row is trained, 0 for padding and cold items; `encoder` None
        gives plain LightGCN over the same nodes (the no-content ablation). `id_dropout`: in training, the share of
        items whose ID row is dropped for a step (DropoutNet's recipe), so the content vector alone must score
        them: that is the situation of every cold item at serving time."""
        super().__init__()
        self.num_layers, self.item_slice, self.encoder, self.id_dropout = num_layers, item_slice, encoder, id_dropout
        self.embedding = nn.Embedding(num_nodes, embedding_dim)
        nn.init.xavier_uniform_(self.embedding.weight)
        self.register_buffer("id_mask", id_mask.float().unsqueeze(1))
        self.propagate = SymmetricPropagation()

    def layer0(self, features: dict[str, torch.Tensor] | None) -> torch.Tensor:
        mask = self.id_mask
        if self.encoder is None:
            return self.embedding.weight * mask
        if self.training and self.id_dropout > 0:
            keep = torch.ones_like(mask)
            items = keep[self.item_slice]
            keep[self.item_slice] = (torch.rand_like(items) >= self.id_dropout).float()
            mask = mask * keep
        x = self.embedding.weight * mask
        content = torch.zeros_like(x)
        content[self.item_slice] = self.encoder(features)
        return x + content

    def forward(self, adj: torch.Tensor, features: dict[str, torch.Tensor] | None) -> torch.Tensor:
        x = self.layer0(features)
        out = x
        for _ in range(self.num_layers):
            x = self.propagate(x, adj)
            out = out + x
        return out / (self.num_layers + 1)
