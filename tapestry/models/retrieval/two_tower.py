"""Two-tower retrieval (Covington et al. 2016; Yi et al. 2019): a user tower and an item tower, each ending in an
L2-normalised vector, scored by their inner product. The item vectors do not depend on the user, so the whole
catalogue is indexed once (FAISS, exact inner product) and a request costs one user-tower pass + one search.

Item tower: the item's ID embedding next to the mean of its attribute-value embeddings (genre, brand, ...: a
padded [num_items, A] index buffer, 0 = no value) -> 2-layer MLP -> L2-normalise. The attributes let items with
few interactions borrow strength from similar ones; the ID embedding keeps what is specific to the item.

User tower: the last `max_len` history items (LEFT-padded with 0, newest in the last column, the SASRec serving
convention) embedded with the item tower's ID table, pooled two ways — the plain mean over real positions, and an
attention pooling whose weight per item is a learned content score plus a learned recency bias (a position
counted from the right edge, so any padding width gives the same vector). Both start as the mean (zero init);
the attention learns to favour recent or telling items at the cost of 2D + max_len parameters, where a
transformer (SASRec) would cost far more per request. Optionally (`num_user_attrs > 0`) a linear projection of
the user's attribute multi-hot (age group, gender, ...) joins the pooled vectors -> MLP -> L2-normalise.

Why L2-normalised towers: the score is a cosine, bounded, so a softmax temperature sets how peaked the training
distribution is (Yi et al. 2019); popular items cannot win by growing their norm, and the vectors index
directly in FAISS. `temperature` only scales `logits` (the training softmax and distillation); `score` is the
plain inner product `encode(seqs) @ item_embeddings().T`, which ranks identically and is what inner-product
retrieval over the index reproduces.

Defined outputs: row 0 of `item_embeddings()` (padding) is zero; a user with neither history nor attributes
encodes to the zero vector (every item scores 0: no preference, never NaN); serving treats them as cold users.
Plain tensor code (no Python data structures), like the SASRec module: `torch.jit.script(model)` works.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class TwoTower(nn.Module):
    def __init__(self, num_items: int, embedding_dim: int = 64, max_len: int = 50, num_item_attrs: int = 1,
                 attrs_per_item: int = 1, num_user_attrs: int = 0, hidden_dim: int = 128, dropout: float = 0.0,
                 temperature: float = 0.05):
        """num_item_attrs: attribute vocabulary size incl. the padding index 0; attrs_per_item: the index
        buffer's width; num_user_attrs: width of the user attribute multi-hot (0 = history-only user tower)."""
        super().__init__()
        self.init_args = dict(num_items=num_items, embedding_dim=embedding_dim, max_len=max_len,
                              num_item_attrs=num_item_attrs, attrs_per_item=attrs_per_item,
                              num_user_attrs=num_user_attrs, hidden_dim=hidden_dim, dropout=dropout,
                              temperature=temperature)
        self.num_items, self.max_len, self.embedding_dim = num_items, max_len, embedding_dim
        self.num_user_attrs, self.temperature = num_user_attrs, temperature
        d = embedding_dim
        # N(0, 1/d): unit-scale vectors on average, the scale the MLPs' default init expects.
        self.item_emb = nn.Embedding(num_items, d, padding_idx=0)
        self.attr_emb = nn.Embedding(max(num_item_attrs, 1), d, padding_idx=0)
        for table in (self.item_emb, self.attr_emb):
            nn.init.normal_(table.weight, std=d ** -0.5)
            with torch.no_grad():
                table.weight[0].zero_()
        self.register_buffer("item_attrs", torch.zeros(num_items, max(attrs_per_item, 1), dtype=torch.long))
        self.item_mlp = _mlp(2 * d, hidden_dim, d)
        # Attention pooling: content score <h, query> / sqrt(d) + recency bias; zero init = start as the mean.
        self.attn_query = nn.Parameter(torch.zeros(d))
        self.recency = nn.Parameter(torch.zeros(max_len))
        self.user_attr_proj = nn.Linear(max(num_user_attrs, 1), d, bias=False)
        self.user_mlp = _mlp((3 if num_user_attrs else 2) * d, hidden_dim, d)
        self.drop = nn.Dropout(dropout)

    def set_item_attrs(self, attrs: torch.Tensor) -> None:
        """Install the [num_items, attrs_per_item] attribute index buffer (0 = no value; row 0 is ignored)."""
        if tuple(attrs.shape) != tuple(self.item_attrs.shape):
            raise ValueError(f"item attrs have shape {tuple(attrs.shape)}, expected {tuple(self.item_attrs.shape)}")
        if attrs.numel() and (int(attrs.min()) < 0 or int(attrs.max()) >= self.attr_emb.num_embeddings):
            raise ValueError(f"item attr indices must lie in [0, {self.attr_emb.num_embeddings})")
        self.item_attrs.copy_(attrs.to(self.item_attrs))

    # ---- item tower ----------------------------------------------------------------------------------------
    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """L2-normalised vectors [..., D] of item indices of any shape; index 0 (padding) gives zeros."""
        attrs = self.item_attrs[items]                                               # [..., A]
        has = (attrs > 0).unsqueeze(-1).to(self.attr_emb.weight.dtype)
        attr_mean = (self.attr_emb(attrs) * has).sum(-2) / has.sum(-2).clamp_min(1.0)
        v = self.item_mlp(torch.cat([self.item_emb(items), attr_mean], dim=-1))
        return F.normalize(v, dim=-1) * (items > 0).unsqueeze(-1).to(v.dtype)

    @torch.jit.export
    def item_embeddings(self) -> torch.Tensor:
        """[num_items, D], what the ANN index holds (row 0 = padding = zeros)."""
        return self.item_vectors(torch.arange(self.num_items, device=self.item_emb.weight.device))

    # ---- user tower ----------------------------------------------------------------------------------------
    @torch.jit.export
    def encode(self, seqs: torch.Tensor, user_attrs: Optional[torch.Tensor] = None) -> torch.Tensor:
        """User vectors [B, D] from LEFT-padded item histories [B, L] (L <= max_len; longer keeps the newest).

        `user_attrs` [B, num_user_attrs] (multi-hot, float) is read only when the model was built with user
        attributes; None there means "attributes unknown" (zeros), so `encode(seqs)` always works.
        """
        seqs = seqs[:, -self.max_len:]
        width = seqs.shape[1]
        real = seqs > 0                                                              # [B, L]
        h = self.item_emb(seqs)                                                      # zeros at padding
        m = real.to(h.dtype)
        count = m.sum(1, keepdim=True)                                               # [B, 1]
        pos = torch.arange(self.max_len - width, self.max_len, device=seqs.device)
        att = h @ self.attn_query / (self.embedding_dim ** 0.5) + self.recency[pos]
        # A finite fill (-1e4: far below any score, still finite in fp16), then a multiply by `real`: an
        # all-padding row gets weights 0 (no NaN, no NaN gradient).
        w = torch.softmax(att.masked_fill(~real, -1e4), dim=1) * m
        # Both poolings as one batched matmul [B, 2, L] x [B, L, D] (elementwise mul + sum was 3x slower on CPU).
        weights = torch.stack([m / count.clamp_min(1.0), w], dim=1)
        pooled = torch.bmm(weights, h).flatten(1)                                    # [B, 2D] = [mean, attention]
        has_input = count.squeeze(-1) > 0
        parts = [pooled]
        if self.num_user_attrs > 0:
            ua = user_attrs if user_attrs is not None else torch.zeros(
                seqs.shape[0], self.num_user_attrs, device=seqs.device, dtype=h.dtype)
            parts.append(self.user_attr_proj(ua.to(h.dtype)))
            has_input = has_input | (ua.abs().sum(-1) > 0)
        u = self.user_mlp(self.drop(torch.cat(parts, dim=-1)))
        return F.normalize(u, dim=-1) * has_input.unsqueeze(-1).to(u.dtype)

    # ---- scores --------------------------------------------------------------------------------------------
    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled inner products [B, N] of user vectors [B, D] and item vectors [N, D] (training)."""
        return users @ items.T / self.temperature

    def score(self, seqs: torch.Tensor, user_attrs: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, num_items] = encode(seqs, user_attrs) @ item_embeddings().T, the serving score (a cosine)."""
        return self.encode(seqs, user_attrs) @ self.item_embeddings().T
