"""BERT4Rec (Sun et al., CIKM 2019): a BIDIRECTIONAL transformer over a user's items, trained as a Cloze task.

Training hides random items behind a [MASK] token and predicts them from both sides; each sequence then yields
many differently-masked training problems, which is the model's answer to over-fitting a left-to-right objective.
At inference the history (its last `max_len - 1` items) gets one [MASK] appended and the hidden state there,
which sees the whole history, is the user vector.

Choices:
- [MASK] is item index `num_items`, an extra row of the input table; it is never a candidate: `item_embeddings()`
  returns rows 0..num_items-1, which the output layer shares with the input (weight tying, as in the paper).
- The paper's output layer is softmax(GELU(h W + b) E^T + b_item). The transform GELU(h W + b) is part of
  `encode`; the per-item bias b_item is left out so the score is exactly `encode(seqs) @ item_embeddings().T`
  (what an inner-product index retrieves) without widening the vectors.
- The transformer blocks are SASRec's (tapestry.models.sequential.sasrec.CausalSelfAttentionBlock: pre-LN,
  residual dropout). They take the attention mask as an argument, so the same block runs bidirectionally here:
  the mask only hides padding keys. Positions, padding and scaling follow SASRec's conventions: left padding with
  0, positions counted from the right edge (any padding width gives the same output), item vectors scaled by
  sqrt(D), padded positions output zeros.
- An all-padding history encodes to the zero vector (scores every item 0, never NaN), as SASRec does, though
  the [MASK] alone would give a popularity-like vector: serving treats empty histories as cold users anyway.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tapestry.models.sequential.sasrec import CausalSelfAttentionBlock


class BERT4Rec(nn.Module):
    def __init__(self, num_items: int, hidden_dim: int = 64, num_blocks: int = 2, num_heads: int = 2,
                 max_len: int = 100, dropout: float = 0.2):
        super().__init__()
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (history + [MASK]), got {max_len}")
        # The constructor arguments, so serving rebuilds the module from init_args + state_dict.
        self.init_args = dict(num_items=num_items, hidden_dim=hidden_dim, num_blocks=num_blocks,
                              num_heads=num_heads, max_len=max_len, dropout=dropout)
        self.num_items, self.hidden_dim, self.max_len = num_items, hidden_dim, max_len
        self.mask_token = num_items
        self.scale = math.sqrt(hidden_dim)
        self.item_emb = nn.Embedding(num_items + 1, hidden_dim, padding_idx=0)     # + the [MASK] row
        self.pos_emb = nn.Embedding(max_len, hidden_dim)
        self.emb_drop = nn.Dropout(dropout)
        # "Causal" names SASRec's use; the block applies whatever mask it is given (here: padding only).
        self.blocks = nn.ModuleList([CausalSelfAttentionBlock(hidden_dim, num_heads, dropout)
                                     for _ in range(num_blocks)])
        self.final_ln = nn.LayerNorm(hidden_dim)
        self.out_transform = nn.Linear(hidden_dim, hidden_dim)     # the paper's GELU(h W + b) before E^T
        nn.init.xavier_normal_(self.item_emb.weight)
        nn.init.xavier_normal_(self.pos_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs [B, L] item indices (may hold the [MASK] index), left-padded with 0 -> output vectors [B, L, D],
        ready for the inner product with `item_embeddings()` (zeros at padding)."""
        seqs = seqs[:, -self.max_len:]
        length = seqs.shape[1]
        real = seqs > 0
        valid = real.unsqueeze(-1)
        pos = torch.arange(self.max_len - length, self.max_len, device=seqs.device)
        x = self.emb_drop(self.item_emb(seqs) * self.scale + self.pos_emb(pos).unsqueeze(0)) * valid
        # Every query sees every real key, before or after it. The diagonal is always allowed so a padded query
        # never has an empty row (softmax over nothing = NaN); its output is zeroed anyway.
        eye = torch.eye(length, dtype=torch.bool, device=seqs.device)
        attn_mask = (real.unsqueeze(1) | eye.unsqueeze(0)).unsqueeze(1)              # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, attn_mask) * valid
        return F.gelu(self.out_transform(self.final_ln(x))) * valid

    @torch.jit.export
    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """The user vector [B, D]: the output at a [MASK] appended after the last `max_len - 1` items."""
        seqs = seqs[:, -(self.max_len - 1):]
        mask = torch.full((seqs.shape[0], 1), self.mask_token, dtype=seqs.dtype, device=seqs.device)
        out = self.forward(torch.cat([seqs, mask], dim=1))[:, -1]
        return out * (seqs > 0).any(dim=1, keepdim=True)           # an empty history encodes to zeros

    @torch.jit.export
    def item_embeddings(self) -> torch.Tensor:
        """[num_items, D], the tied output table without the [MASK] row (row 0 = padding = zeros)."""
        return self.item_emb.weight[:self.num_items]
