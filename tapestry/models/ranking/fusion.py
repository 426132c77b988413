"""The fusion-transformer reranker ("Head B"): each candidate attends to the user's recent history.

Per list (one user, one request) the module reads
  cands     [B, N]     candidate item indices (0 = padding column)
  dense     [B, N, F]  per-candidate dense features (retrieval score z-normalised within the list, rank, ...)
  history   [B, L]     the recent history, LEFT-padded with 0, newest item in the last column
  user_attrs[B, U]     the user's attribute ids (1..num_user_attrs, 0 = padding)
and returns one logit per candidate [B, N]. Padding candidates get a logit too; the caller masks them.

Tokens. An item is `item_emb[i] + W_g graph[i] + mean(attr_emb[attrs of i])`: its id vector (started from the
retriever's item table by the trainer), an optional frozen graph vector (LightGCN's) and its attribute / entity
values (genres, brands). A history token adds a recency embedding counted from the newest item, so the same
history gives the same tokens whatever its left padding.

Target attention (DIN-style, multi-head): the candidate is the query, the history tokens keys and values; padded
slots are masked out, a history with no real item attends to nothing (a zero vector, not NaN). An MLP over
[candidate, attended history, their product, user-attribute context, dense features] plus a linear term on the
dense features (so the retrieval score is usable from the first step) gives the logit.

Every candidate is scored from its own tokens and the shared history only: its logit does not depend on the other
candidates of its list (list-level normalisation, e.g. the z-score, happens outside, in the features).
Plain tensor code with plain constructor arguments; the tables the trainer fills (attributes, graph vectors) are
buffers, so a state_dict carries everything and `tapestry.inference.fusion_ranker` rebuilds it from a file.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class FusionRanker(nn.Module):
    def __init__(self, num_items: int, dim: int = 64, num_heads: int = 2, max_history: int = 50,
                 num_attr_values: int = 0, attr_width: int = 0, graph_dim: int = 0, num_user_attrs: int = 0,
                 num_dense: int = 4, mlp: tuple[int, ...] = (128, 64), dropout: float = 0.1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        # The constructor arguments, so inference rebuilds the module from a file (plain Python values).
        self.init_args = dict(num_items=num_items, dim=dim, num_heads=num_heads, max_history=max_history,
                              num_attr_values=num_attr_values, attr_width=attr_width, graph_dim=graph_dim,
                              num_user_attrs=num_user_attrs, num_dense=num_dense, mlp=tuple(mlp), dropout=dropout)
        self.dim, self.num_heads, self.max_history = dim, num_heads, max_history
        self.item_emb = nn.Embedding(num_items, dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=dim ** -0.5)
        # Item attributes: [num_items, attr_width] value ids (0 = none), filled by `set_item_tables`.
        self.register_buffer("item_attrs", torch.zeros(num_items, attr_width, dtype=torch.long))
        self.attr_emb = nn.Embedding(num_attr_values + 1, dim, padding_idx=0)
        nn.init.normal_(self.attr_emb.weight, std=0.1 * dim ** -0.5)
        # Frozen graph vectors (always registered, empty without them, so state_dicts look alike either way).
        self.graph_dim = graph_dim
        self.register_buffer("graph", torch.zeros(num_items if graph_dim else 0, graph_dim))
        self.graph_proj = nn.Linear(max(graph_dim, 1), dim, bias=False)
        nn.init.zeros_(self.graph_proj.weight)           # learns its share from zero, as SASRec's fusion does
        self.recency = nn.Embedding(max_history, dim)
        nn.init.normal_(self.recency.weight, std=0.1 * dim ** -0.5)
        self.user_attr_emb = nn.Embedding(num_user_attrs + 1, dim, padding_idx=0)
        nn.init.normal_(self.user_attr_emb.weight, std=0.1 * dim ** -0.5)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        layers: list[nn.Module] = []
        width = 4 * dim + num_dense
        for h in mlp:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        # A listwise softmax is blind to a per-list shift, so the wide term needs no bias.
        self.wide = nn.Linear(num_dense, 1, bias=False)
        nn.init.zeros_(self.wide.weight)

    def set_item_tables(self, item_init: torch.Tensor | None = None, item_attrs: torch.Tensor | None = None,
                        graph: torch.Tensor | None = None) -> None:
        """Fill the id table (row 0 stays zero), the attribute ids and the frozen graph vectors."""
        with torch.no_grad():
            if item_init is not None:
                self.item_emb.weight.copy_(item_init.to(self.item_emb.weight))
                self.item_emb.weight[0].zero_()
            if item_attrs is not None:
                if tuple(item_attrs.shape) != tuple(self.item_attrs.shape):
                    raise ValueError(f"item_attrs {tuple(item_attrs.shape)}, expected {tuple(self.item_attrs.shape)}")
                self.item_attrs.copy_(item_attrs)
            if graph is not None:
                if tuple(graph.shape) != tuple(self.graph.shape):
                    raise ValueError(f"graph {tuple(graph.shape)}, expected {tuple(self.graph.shape)}")
                self.graph.copy_(graph)
                self.graph[0].zero_()

    def items(self, idx: torch.Tensor) -> torch.Tensor:
        """Item tokens [..., dim] for item indices of any shape (padding rows are not zeroed here: callers mask)."""
        x = self.item_emb(idx)
        if self.item_attrs.shape[1]:
            attrs = self.item_attrs[idx]                                          # [..., A]
            x = x + masked_mean(self.attr_emb(attrs), attrs > 0)
        if self.graph_dim:
            x = x + self.graph_proj(self.graph[idx])
        return x

    def history_tokens(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, L, dim], real-slot mask [B, L]) of a left-padded history, trimmed to `max_history`."""
        history = history[:, -self.max_history:]
        length = history.shape[1]
        recency = torch.arange(length - 1, -1, -1, device=history.device)       # 0 = the newest (last column)
        return self.items(history) + self.recency(recency).unsqueeze(0), history > 0

    def attend(self, cand: torch.Tensor, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Multi-head target attention: [B, N, dim] candidates over [B, L, dim] tokens -> [B, N, dim]."""
        b, n, d = cand.shape
        h, dh = self.num_heads, d // self.num_heads
        q = self.q(cand).view(b, n, h, dh).transpose(1, 2)                        # [B, H, N, dh]
        k = self.k(tokens).view(b, -1, h, dh).transpose(1, 2)                     # [B, H, L, dh]
        v = self.v(tokens).view(b, -1, h, dh).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(dh)                          # [B, H, N, L]
        mask = real[:, None, None, :]
        # -1e9, not -inf: a history with no real slot softmaxes to uniform weights (no NaN, no NaN gradient),
        # which the mask then zeroes; with a real slot, exp(-1e9) is exactly 0 in float32.
        weights = torch.softmax(logits.masked_fill(~mask, -1e9), dim=-1) * mask.to(logits.dtype)
        out = (weights @ v).transpose(1, 2).reshape(b, n, d)
        return self.o(out)

    def forward(self, cands: torch.Tensor, dense: torch.Tensor, history: torch.Tensor,
                user_attrs: torch.Tensor) -> torch.Tensor:
        cand = self.items(cands)                                                  # [B, N, dim]
        tokens, real = self.history_tokens(history)
        attended = self.attend(cand, tokens, real)
        user = masked_mean(self.user_attr_emb(user_attrs), user_attrs > 0).unsqueeze(1).expand_as(cand)
        x = torch.cat([cand, attended, cand * attended, user, dense], dim=-1)
        return self.mlp(x).squeeze(-1) + self.wide(dense).squeeze(-1)


def masked_mean(vectors: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over dim -2 of `vectors` [..., A, D] where `real` [..., A]; zeros where nothing is real. The padding
    id's row is never read, whatever it holds."""
    weights = real.to(vectors.dtype).unsqueeze(-1)
    return (vectors * weights).sum(-2) / weights.sum(-2).clamp_min(1.0)


def listwise_loss(logits: torch.Tensor, cands: torch.Tensor, positive: torch.Tensor,
                  ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy of each list's target among its real candidates (cands > 0), mean over lists;
    `ignore` [B, N] (optional) leaves candidates out of the softmax (neither target nor negative)."""
    out = cands <= 0 if ignore is None else (cands <= 0) | ignore
    logp = torch.log_softmax(logits.masked_fill(out, float("-inf")), dim=1)
    return -logp[torch.arange(len(positive), device=logits.device), positive].mean()
