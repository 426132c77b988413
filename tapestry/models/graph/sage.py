"""GraphSAGE / PinSage-style inductive encoder over the bipartite user-item graph.

    x_item = mean(entity-value embeddings of the item) + keep_id * item-ID embedding
    x_user = mean(entity-value embeddings of the user) + keep_id * user-ID embedding
    layer l:  h_item <- SAGEConv((h_user, h_item))   (mean over the item's users, plus a root weight)
              h_user <- SAGEConv((h_item, h_user))   (mean over the user's items, plus a root weight)

Why inductive: an item's input is built from what it *is* (genre, brand, ... : shared, learned value
embeddings) and, once it has interactions, from its neighbours; the ID embedding is only a correction for items
the training graph knew (`keep_id` = 0 for the others, and randomly 0 during training, so the model learns to do
without it). An item never seen in training therefore still gets a finite vector from its attributes; an item
with no edges at all reduces to bias + root weights applied to its attribute mean (`forward` with no edges).

Entity values arrive as a padded index matrix [n, M] per node (0 = padding), built by the caller from
InteractionData's long entity tables; the module holds only parameters. The loop lives in tapestry.training.sage.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import SAGEConv


class EntityMean(nn.Module):
    """Mean of learned embeddings over each node's entity values; a node without values gets zeros."""

    def __init__(self, num_values: int, dim: int):
        super().__init__()
        # Row 0 = padding (no value): zero and never updated, so it drops out of the sum.
        self.embedding = nn.Embedding(num_values + 1, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values [n, M] (0 = padding) -> [n, D]."""
        count = (values > 0).sum(-1, keepdim=True).clamp_min(1)
        return self.embedding(values).sum(1) / count


class SAGEEncoder(nn.Module):
    """Bipartite GraphSAGE with attribute + (optional) ID inputs; returns (user vectors, item vectors)."""

    def __init__(self, num_users: int, num_items: int, num_user_values: int, num_item_values: int,
                 embedding_dim: int = 64, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.num_layers, self.dropout = num_layers, dropout
        self.user_values = EntityMean(num_user_values, embedding_dim)
        self.item_values = EntityMean(num_item_values, embedding_dim)
        self.user_id = nn.Embedding(num_users, embedding_dim)
        self.item_id = nn.Embedding(num_items, embedding_dim)
        # Same scale as the value embeddings, so neither input swamps the other at the start.
        nn.init.normal_(self.user_id.weight, std=0.1)
        nn.init.normal_(self.item_id.weight, std=0.1)
        dims = (embedding_dim, embedding_dim)
        self.item_convs = nn.ModuleList(SAGEConv(dims, embedding_dim) for _ in range(num_layers))   # user -> item
        self.user_convs = nn.ModuleList(SAGEConv(dims, embedding_dim) for _ in range(num_layers))   # item -> user

    def user_inputs(self, user_ids: torch.Tensor, values: torch.Tensor, keep_id: torch.Tensor) -> torch.Tensor:
        """Layer-0 user vectors [n, D]: attribute mean + keep_id (0/1, [n]) * ID embedding."""
        return self.user_values(values) + keep_id.unsqueeze(-1) * self.user_id(user_ids)

    def item_inputs(self, item_ids: torch.Tensor, values: torch.Tensor, keep_id: torch.Tensor) -> torch.Tensor:
        """Layer-0 item vectors [n, D]: attribute mean + keep_id (0/1, [n]) * ID embedding."""
        return self.item_values(values) + keep_id.unsqueeze(-1) * self.item_id(item_ids)

    def forward(self, x_user: torch.Tensor, x_item: torch.Tensor, user_to_item: torch.Tensor,
                item_to_user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_* [n_*, D]; user_to_item [2, E] (row 0 user, row 1 item), item_to_user [2, E'] (item, user).

        Local indices into x_user / x_item (a sampled subgraph or the whole graph). Every node is updated at
        every layer, PyG's mini-batch convention: the seed nodes' outputs are exact for their sampled
        neighbourhood, the outer hops are only intermediate values.
        """
        h_user, h_item = x_user, x_item
        for layer in range(self.num_layers):
            new_item = self.item_convs[layer]((h_user, h_item), user_to_item)
            new_user = self.user_convs[layer]((h_item, h_user), item_to_user)
            if layer < self.num_layers - 1:
                new_item = F.dropout(new_item.relu(), self.dropout, self.training)
                new_user = F.dropout(new_user.relu(), self.dropout, self.training)
            h_user, h_item = new_user, new_item
        return h_user, h_item

    def isolated_items(self, x_item: torch.Tensor) -> torch.Tensor:
        """Final vectors of items with no interaction edges (e.g. just published): the same layers, no neighbours."""
        empty = torch.zeros(2, 0, dtype=torch.long, device=x_item.device)
        no_users = x_item.new_zeros(0, x_item.shape[-1])
        return self(no_users, x_item, empty, empty)[1]
