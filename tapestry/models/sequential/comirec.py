"""ComiRec-SA (Cen et al., KDD 2020, "Controllable Multi-Interest Framework for Recommendation"): a user is K
vectors, not one, so a history mixing westerns and cartoons retrieves both instead of their blurred average.

Self-attentive extraction, as in the paper: H [L, D] are the history's item vectors plus learned positional
embeddings, and

    A = softmax(W2 tanh(W1 H^T))    [K, L], the softmax over the history (padding masked out)
    V = A E                          [K, D], E = the history's item vectors WITHOUT positions

so each interest is a convex mix of item vectors and lives in the item space it is scored against (what the
authors' code does: positions steer the attention, they are not part of the values). W1 is [attn_dim, D] with
attn_dim = 4 D by default (the authors' choice; the trainer's Config picks a narrower one, measured faster and no
worse); W2 has no bias because a per-interest constant cancels in the softmax over time.

Training (the trainer's job, tapestry.training.comirec) uses the paper's hard read-out: of the K interests, the one
with the largest inner product with the target item is the one the loss trains (`readout`). Serving scores an
item by its best interest, max_k <v_k, e_i>, so exact inner-product retrieval over K queries per user reproduces it.

Input convention as SASRec's (tapestry.models.sequential.sasrec): LEFT-padded with 0, newest item last, positions
counted from the right edge of the `max_len` window, so any padding width gives the same output. Padded items get
exactly zero attention weight; an all-padding row encodes to K zero vectors (finite, scores every item 0).
Plain tensor code, so `torch.jit.script(model)` works, as SASRec's.

Graph fusion (`side_dim > 0`): frozen side item vectors projected and ADDED to the ID table (id + W side, SASRec's
`fusion="add"`, sharing its helpers), the fused table being both the values and the output embeddings.
"""
from __future__ import annotations

import torch
from torch import nn

from tapestry.models.sequential.sasrec import add_side_table, set_side_embeddings, zero_padding_row


class ComiRecSA(nn.Module):
    def __init__(self, num_items: int, hidden_dim: int = 64, num_interests: int = 4, max_len: int = 50,
                 dropout: float = 0.1, side_dim: int = 0, attn_dim: int = 0):
        super().__init__()
        if num_interests < 1:
            raise ValueError(f"num_interests must be >= 1, got {num_interests}")
        # The constructor arguments, so serving rebuilds the module from init_args + state_dict.
        self.init_args = dict(num_items=num_items, hidden_dim=hidden_dim, num_interests=num_interests,
                              max_len=max_len, dropout=dropout, side_dim=side_dim, attn_dim=attn_dim)
        self.num_items, self.hidden_dim, self.max_len = num_items, hidden_dim, max_len
        self.num_interests = num_interests
        attn_dim = attn_dim or 4 * hidden_dim
        self.item_emb = nn.Embedding(num_items, hidden_dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.w1 = nn.Linear(hidden_dim, attn_dim)
        self.w2 = nn.Linear(attn_dim, num_interests, bias=False)
        # Xavier-normal like SASRec's tables: small vectors, so the first full-softmax steps are well conditioned.
        nn.init.xavier_normal_(self.item_emb.weight)
        nn.init.xavier_normal_(self.pos_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        add_side_table(self, num_items, side_dim, hidden_dim)

    def item_table(self) -> torch.Tensor:
        """[num_items, D]: the ID table, plus the projected side vectors when fused; row 0 (padding) is zero."""
        if self.side_dim == 0:
            return self.item_emb.weight
        return zero_padding_row(self.item_emb.weight + self.side_proj(self.side_emb))

    def item_rows(self, seqs: torch.Tensor) -> torch.Tensor:
        """`item_table()[seqs]` without projecting every item's side vector."""
        rows = self.item_emb(seqs)
        if self.side_dim == 0:
            return rows
        return (rows + self.side_proj(self.side_emb[seqs])) * (seqs > 0).unsqueeze(-1).to(rows.dtype)

    def set_side_embeddings(self, side: torch.Tensor) -> None:
        """Install the frozen side vectors [num_items, side_dim] (row 0 is forced to zero)."""
        set_side_embeddings(self, side)

    def attention(self, seqs: torch.Tensor, table: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [B, K, L], E [B, L, D]): the interests' attention over the history and the history's item vectors."""
        seqs = seqs[:, -self.max_len:]
        length = seqs.shape[1]
        # Only the history's rows of the fused table (row-wise fusion), unless the caller built the table anyway.
        rows = self.item_rows(seqs) if table is None else table[seqs]
        values = self.drop(rows)                                                     # zero rows at padding
        pos = torch.arange(self.max_len - length, self.max_len, device=seqs.device)
        logits = self.w2(torch.tanh(self.w1(values + self.pos_emb(pos)))).transpose(1, 2)  # [B, K, L]
        # Padding gets weight exactly 0 (-inf), except in an all-padding row: masking everything there would
        # softmax to NaN, so nothing is masked and the uniform weights average zero vectors (a zero interest).
        pad = (seqs == 0) & (seqs > 0).any(dim=1, keepdim=True)
        logits = logits.masked_fill(pad.unsqueeze(1), float("-inf"))
        return torch.softmax(logits, dim=-1), values

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs [B, L] item indices, left-padded with 0 -> interest vectors [B, K, D]."""
        attn, values = self.attention(seqs)
        return attn @ values

    @torch.jit.export
    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """The K interest vectors [B, K, D] a user is retrieved with (score = max over K of inner products)."""
        return self.forward(seqs)

    @torch.jit.export
    def item_embeddings(self) -> torch.Tensor:
        """[num_items, D], the input/output item table (row 0 = padding = zeros)."""
        return self.item_table()

    @staticmethod
    def readout(interests: torch.Tensor, target_vectors: torch.Tensor) -> torch.Tensor:
        """The paper's training read-out: per row, the interest [B, D] closest (inner product) to the target's
        vector [B, D]. The choice is an argmax (no gradient through it); the chosen vector keeps its gradient."""
        best = torch.einsum("bkd,bd->bk", interests, target_vectors).argmax(dim=1)
        return interests[torch.arange(interests.shape[0], device=interests.device), best]
