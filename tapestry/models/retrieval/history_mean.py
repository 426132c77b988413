"""A user encoder with no weights of its own: the (recency-weighted) mean of the history's vectors in a FROZEN item
table, normalised. Served like any sequential encoder (tapestry/inference/encoders.py's contract).

Why: a graph item encoder (lightgcn_content) gives every catalogue item a vector, cold items included (from their
content and brand/category neighbours), but its user vectors are per-user rows, and the served user encoder reads
only a history. This module turns a history into a query in the same space, so FAISS retrieval over that table can
return an item nobody has touched yet, for a user whose history is like it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HistoryMeanEncoder(nn.Module):
    def __init__(self, num_items: int, embedding_dim: int, max_len: int = 50, recency_decay: float = 1.0):
        super().__init__()
        if not 0.0 < recency_decay <= 1.0:
            raise ValueError(f"recency_decay must be in (0, 1], got {recency_decay}")
        self.init_args = dict(num_items=num_items, embedding_dim=embedding_dim, max_len=max_len,
                              recency_decay=recency_decay)
        self.num_items, self.max_len, self.recency_decay = num_items, max_len, recency_decay
        # A buffer, not a parameter: the table belongs to the item encoder that produced it (frozen here).
        self.register_buffer("table", torch.zeros(num_items, embedding_dim))

    def item_embeddings(self) -> torch.Tensor:
        return self.table

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """[B, D] from LEFT-padded histories [B, L] (0 = padding; the newest item in the last column; L > max_len
        keeps the newest). The j-th newest item weighs recency_decay**j; an empty history gives zeros."""
        seqs = seqs[:, -self.max_len:]
        known = ((seqs > 0) & (seqs < self.num_items)).to(self.table.dtype)
        age = torch.arange(seqs.shape[1] - 1, -1, -1, device=seqs.device, dtype=self.table.dtype)
        weights = known * self.recency_decay ** age                                   # [B, L]
        vectors = self.table[seqs.clamp(0, self.num_items - 1)]                      # [B, L, D]
        return F.normalize((weights.unsqueeze(-1) * vectors).sum(1), dim=-1)
