"""PinSage's importance pooling: an item's vector plus a learned summary of its walk neighbours, each neighbour
weighted by its share of the walk visits (tapestry.graph.walks).

    pooled = sum_t w_t * relu(Q x_t + q)          # w [n, T], rows sum to 1 (all 0: no neighbourhood)
    out    = x + W pooled                          # W has no bias: an item without neighbours keeps x exactly

The residual form (rather than PinSage's concat + dense) keeps an item with no walks (an item never seen in
training, e.g. SAGERecommender.embed_items) on exactly the path of the plain encoder.
"""
from __future__ import annotations

import torch
from torch import nn

from tapestry.models.graph.sage import SAGEEncoder


class ImportancePooling(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.transform = nn.Linear(dim, dim)
        self.combine = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.combine.weight)      # starts as the plain encoder; training grows the walk term

    def forward(self, x: torch.Tensor, neighbours: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [n, D] the items' own vectors, neighbours [n, T, D] their walk neighbours' vectors, weights [n, T]."""
        pooled = (weights.unsqueeze(-1) * self.transform(neighbours).relu()).sum(1)
        return x + self.combine(pooled)


class WalkSAGEEncoder(SAGEEncoder):
    """SAGEEncoder whose layer-0 item vectors also pool the items' walk neighbourhoods (SAGEConfig.neighbourhood
    = "walks"); the bipartite SAGE layers run on top unchanged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.walk_pool = ImportancePooling(self.item_id.embedding_dim)

    def pooled_item_inputs(self, x_item: torch.Tensor, x_neighbours: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
        """x_item [n, D] (item_inputs), x_neighbours [n, T, D] (item_inputs of the walk neighbours), weights [n, T]."""
        return self.walk_pool(x_item, x_neighbours, weights)
