"""SASRec (Kang & McAuley 2018): a causal self-attention encoder over a user's item sequence.

Input convention (shared with serving): sequences are LEFT-padded with 0 to at most `max_len` columns, the most
recent item in the last column. Positions are counted from the right edge of the `max_len` window, so a
sequence gives the same outputs whether it arrives padded to `max_len` or to any shorter width, and padded keys
are masked out of attention: outputs at real positions depend only on the real items before them.

Defined behaviour for padding: every padded position outputs the zero vector. An all-padding sequence therefore
encodes to zeros, which scores every item 0 (no preference, never NaN); serving treats empty histories as cold
users and never relies on that vector.

Graph fusion (`side_dim > 0`): a FROZEN table of side item vectors (from a graph encoder: LightGCN, GraphSAGE,
HGT) is projected into the model's space and fused with the trainable ID table; the fused table is then both
the input and the output embedding (what FAISS indexes). `fusion="add"`: id + W side; `fusion="gate"`: a
per-item sigmoid gate g(id, side) mixes id and W side. Frozen, because the graph vectors carry structure the
next-item loss would otherwise overwrite within an epoch; the projection (and gate) learn how much to use.

Plain tensor code only (no Python-side data structures in `forward`), so `torch.jit.script(model)` works and the
module runs unchanged inside Triton's python backend.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + FFN(LN(x)), dropout on both branches.

    No dropout on the attention probabilities themselves: on CPU it doubles the attention cost (measured
    0.04 s -> 0.09 s per block and batch of 128 x 200) for no gain we could measure next to residual dropout.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.ln_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln_ffn = nn.LayerNorm(dim)
        # SASRec's point-wise feed-forward keeps the hidden width (no 4x expansion): cheap and enough here.
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]; with `last_only`, only the last position's output [B, 1, D] (keys and values
        still come from every position): what a user's vector needs from the final block, for a fraction of the
        work (the projection, the feed-forward and the attention rows of the other L - 1 queries are skipped)."""
        b, length, dim = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).chunk(3, dim=-1)
        if last_only:
            q, x, attn_mask = q[:, -1:], x[:, -1:], attn_mask[:, :, -1:]
        queries = q.shape[1]
        q = q.reshape(b, queries, self.num_heads, dim // self.num_heads).transpose(1, 2)
        k = k.reshape(b, length, self.num_heads, dim // self.num_heads).transpose(1, 2)
        v = v.reshape(b, length, self.num_heads, dim // self.num_heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, queries, dim)))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class SASRec(nn.Module):
    def __init__(self, num_items: int, hidden_dim: int = 64, num_blocks: int = 2, num_heads: int = 1,
                 max_len: int = 100, dropout: float = 0.2, side_dim: int = 0, fusion: str = "add"):
        super().__init__()
        if fusion not in ("add", "gate"):
            raise ValueError(f"fusion must be 'add' or 'gate', got {fusion!r}")
        # The constructor arguments, so serving rebuilds the module from a file (tapestry.inference.encoders).
        self.init_args = dict(num_items=num_items, hidden_dim=hidden_dim, num_blocks=num_blocks, num_heads=num_heads,
                              max_len=max_len, dropout=dropout, side_dim=side_dim, fusion=fusion)
        self.num_items = num_items
        self.hidden_dim = hidden_dim
        self.max_len = max_len
        self.scale = math.sqrt(hidden_dim)    # as in the paper: item vectors are scaled before adding positions
        # One table for input and output: the score of item i is <h, item_emb[i]> (weight tying, as in SASRec).
        self.item_emb = nn.Embedding(num_items, hidden_dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden_dim)
        self.emb_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([CausalSelfAttentionBlock(hidden_dim, num_heads, dropout)
                                     for _ in range(num_blocks)])
        self.final_ln = nn.LayerNorm(hidden_dim)
        # Xavier-normal embeddings, the original implementation's choice (std ~0.02 for thousands of items).
        nn.init.xavier_normal_(self.item_emb.weight)
        nn.init.xavier_normal_(self.pos_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.fusion = fusion
        add_side_table(self, num_items, side_dim, hidden_dim)
        self.gate = nn.Linear(2 * hidden_dim, 1)

    def item_table(self) -> torch.Tensor:
        """The (fused) item table [num_items, D] used for inputs and scores; row 0 (padding) is zero."""
        table = self.item_emb.weight
        if self.side_dim == 0:
            return table
        side = self.side_proj(self.side_emb)
        if self.fusion == "gate":
            g = torch.sigmoid(self.gate(torch.cat([table, side], dim=-1)))
            fused = g * table + (1.0 - g) * side
        else:
            fused = table + side
        return zero_padding_row(fused)

    def item_rows(self, seqs: torch.Tensor) -> torch.Tensor:
        """`item_table()[seqs]` without building the whole table (the fusion is row-wise): encoding one user must
        not cost a projection of every item's side vector (1,000x the work for a 100-item history at 100k items)."""
        rows = self.item_emb(seqs)
        if self.side_dim == 0:
            return rows
        side = self.side_proj(self.side_emb[seqs])
        if self.fusion == "gate":
            g = torch.sigmoid(self.gate(torch.cat([rows, side], dim=-1)))
            fused = g * rows + (1.0 - g) * side
        else:
            fused = rows + side
        return fused * (seqs > 0).unsqueeze(-1).to(fused.dtype)

    def set_side_embeddings(self, side: torch.Tensor) -> None:
        """Install the frozen side vectors [num_items, side_dim] (row 0 is forced to zero)."""
        set_side_embeddings(self, side)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs [B, L] item indices, left-padded with 0 -> hidden states [B, L, D] (zeros at padding)."""
        return self._hidden(seqs, False)

    def _hidden(self, seqs: torch.Tensor, last_only: bool) -> torch.Tensor:
        seqs = seqs[:, -self.max_len:]
        return self._blocks(seqs, self.item_rows(seqs) * self.scale, last_only)

    def _blocks(self, seqs: torch.Tensor, tokens: torch.Tensor, last_only: bool) -> torch.Tensor:
        """Positions, masking and the transformer blocks over per-position input vectors `tokens` [B, L, D]
        (the scaled item rows; a behaviour-aware subclass adds its event-type vectors first)."""
        length = seqs.shape[1]
        valid = (seqs > 0).unsqueeze(-1)                                            # [B, L, 1]
        pos = torch.arange(self.max_len - length, self.max_len, device=seqs.device)
        x = tokens + self.pos_emb(pos).unsqueeze(0)
        x = self.emb_drop(x) * valid
        # Query i may attend to key j <= i that is a real item. The diagonal is always allowed so a padded query
        # never has an empty row (softmax over nothing = NaN); its output is zeroed below anyway.
        causal = torch.ones(length, length, dtype=torch.bool, device=seqs.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=seqs.device)
        key_ok = (seqs > 0).unsqueeze(1) | eye.unsqueeze(0)                          # [B, L(query), L(key)]
        attn_mask = (causal.unsqueeze(0) & key_ok).unsqueeze(1)                      # [B, 1, L, L]
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if last_only and i == last:
                valid = valid[:, -1:]
                x = block(x, attn_mask, True) * valid
            else:
                x = block(x, attn_mask, False) * valid
        return self.final_ln(x) * valid

    @torch.jit.export
    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """The user vector [B, D]: the hidden state at the last (most recent) position (only that position runs
        through the final block: the same numbers as forward(seqs)[:, -1], tested)."""
        return self._hidden(seqs, True)[:, -1, :]

    @torch.jit.export
    def item_embeddings(self) -> torch.Tensor:
        """[num_items, D], the shared input/output table (row 0 = padding = zeros)."""
        return self.item_table()

    def init_item_embeddings(self, weights: torch.Tensor) -> None:
        """Start from given item vectors (e.g. LightGCN's). Copied as is; row 0 stays zero (padding)."""
        if tuple(weights.shape) != tuple(self.item_emb.weight.shape):
            raise ValueError(f"item init has shape {tuple(weights.shape)}, "
                             f"expected {tuple(self.item_emb.weight.shape)} (num_items, hidden_dim)")
        with torch.no_grad():
            self.item_emb.weight.copy_(weights.to(self.item_emb.weight))
            self.item_emb.weight[0].zero_()


def add_side_table(module: nn.Module, num_items: int, side_dim: int, hidden_dim: int) -> None:
    """Give `module` the frozen side table of graph fusion: `side_dim`, a buffer `side_emb` [num_items, side_dim]
    and a projection `side_proj` into the hidden space, zero-initialised so the model starts as its ID-only self.

    Shared by the sequential encoders that fuse graph item vectors (SASRec, ComiRec). The buffer is always
    registered (empty without side vectors) so TorchScript and state_dicts see the same attributes either way.
    """
    module.side_dim = side_dim
    module.register_buffer("side_emb", torch.zeros(num_items if side_dim else 0, side_dim))
    module.side_proj = nn.Linear(max(side_dim, 1), hidden_dim, bias=False)
    if side_dim:
        nn.init.zeros_(module.side_proj.weight)   # the projection learns its share from zero


def set_side_embeddings(module: nn.Module, side: torch.Tensor) -> None:
    """Copy frozen side vectors [num_items, side_dim] into `module.side_emb` (row 0, padding, forced to zero)."""
    if tuple(side.shape) != tuple(module.side_emb.shape):
        raise ValueError(f"side embeddings have shape {tuple(side.shape)}, expected {tuple(module.side_emb.shape)}")
    with torch.no_grad():
        module.side_emb.copy_(side.to(module.side_emb))
        module.side_emb[0].zero_()


def zero_padding_row(table: torch.Tensor) -> torch.Tensor:
    """`table` with row 0 (padding) zeroed, differentiably (a fused table's row 0 is not zero by itself)."""
    pad = torch.ones(table.shape[0], 1, device=table.device, dtype=table.dtype)
    pad[0] = 0.0
    return table * pad
