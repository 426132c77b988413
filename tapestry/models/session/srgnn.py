"""SR-GNN (Wu et al., AAAI 2019): a session's clicks as a small directed item graph, a gated GNN over it, and a
soft-attention readout that mixes the last click (short-term intent) with the whole session (long-term intent).

Per session s = [x_1 .. x_n] (time order):
1. Graph. Nodes are the DISTINCT items of s; each consecutive pair (x_t, x_t+1) is a directed edge (an edge is
   there or not: a repeated transition counts once, as in the reference code). Two row-normalised matrices:
   A_in[v, u] = 1 / indeg(v) for every edge u -> v, and A_out[u, v] = 1 / outdeg(u).
2. Gated GNN, `num_steps` times (paper: 1):  a_v = [A_in (W_in h + b) + b_in ; A_out (W_out h + b) + b_out],
   h_v <- GRU(a_v, h_v), starting from h_v = the item's embedding.
3. Readout over the session's CLICKS (a repeated item counts at each of its positions, as in the reference code,
   whose formula sums over i = 1..n): v_n = the last click's node vector,
   alpha_i = q^T sigmoid(W1 v_n + W2 v_i + c) (un-normalised, as in the paper), s_global = sum_i alpha_i v_i,
   s = W3 [v_n ; s_global].
4. Scores = s . item_table[j]: the same table is the GNN's input, so a session vector lives in the item space.

Batched without Python loops: the input is the serving contract's LEFT-padded [B, L] id matrix. Each position
is mapped to the FIRST position holding the same item (`alias`, from an [B, L, L] equality matrix); first
occurrences are the graph's active nodes, every other position is an inactive node (no edges, zeroed state).
Edges alias[t] -> alias[t + 1] are scattered into [B, L, L] adjacency matrices. Node order differs from the
reference (which sorts items by id), which a GNN cannot see: the outputs are the same up to a permutation.

Padding is masked everywhere, so the output does not depend on the padded width or on the other rows of the
batch, and an all-padding row encodes to the zero vector (it scores every item 0: defined, never NaN).

Item table: trainable (`frozen_item_table=False`) or a FROZEN buffer (`frozen_item_table=True`, filled by
`set_item_table`), e.g. the served SASRec's fused table: then anonymous sessions are encoded into exactly the
space the served FAISS index holds, and can be answered by it without a second index. A registered buffer, so
`type(m)(**m.init_args)` + `load_state_dict` rebuilds the module without the upstream model.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def session_graph(seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded [B, L] item ids -> (alias [B, L], active [B, L], A_in [B, L, L], A_out [B, L, L]).

    alias[b, t]: the first position of row b holding the same item as position t (t itself for padding);
    active[b, t]: position t is a real item's first occurrence (a graph node). Node j of row b is position j.
    """
    b, length = seqs.shape
    valid = seqs > 0
    pos = torch.arange(length, device=seqs.device)
    same = (seqs.unsqueeze(2) == seqs.unsqueeze(1)) & valid.unsqueeze(1)              # [B, L(t), L(j)]
    first = torch.where(same, pos, length).min(dim=2).values                           # L where none (padding)
    alias = torch.where(valid, first, pos.expand(b, length))
    active = valid & (alias == pos)
    # Consecutive clicks -> edge alias[t] -> alias[t + 1]. scatter_add then clamp: a repeated transition is one
    # edge, and the result does not depend on the (nondeterministic) order duplicates are written in.
    ok = (valid[:, :-1] & valid[:, 1:]).to(torch.float32)
    flat = alias[:, :-1] * length + alias[:, 1:]
    adj = torch.zeros(b, length * length, device=seqs.device).scatter_add_(1, flat, ok)
    adj = adj.view(b, length, length).clamp_max(1.0)                                    # adj[b, u, v]: edge u -> v
    in_deg = adj.sum(dim=1).clamp_min(1.0)                                               # [B, L] per target v
    out_deg = adj.sum(dim=2).clamp_min(1.0)                                              # [B, L] per source u
    a_in = adj.transpose(1, 2) / in_deg.unsqueeze(2)
    a_out = adj / out_deg.unsqueeze(2)
    return alias, active, a_in, a_out


class SRGNN(nn.Module):
    def __init__(self, num_items: int, hidden_dim: int = 64, num_steps: int = 1, max_len: int = 50,
                 frozen_item_table: bool = False):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_items, self.hidden_dim, self.num_steps, self.max_len = num_items, hidden_dim, num_steps, max_len
        self.frozen_item_table = frozen_item_table
        self.init_args = dict(num_items=num_items, hidden_dim=hidden_dim, num_steps=num_steps, max_len=max_len,
                              frozen_item_table=frozen_item_table)
        if frozen_item_table:
            self.register_buffer("item_table", torch.zeros(num_items, hidden_dim))
        else:
            self.item_emb = nn.Embedding(num_items, hidden_dim, padding_idx=0)
        # Gated GNN. The reference has a bias inside each edge projection AND one after the propagation; kept.
        self.edge_in = nn.Linear(hidden_dim, hidden_dim)
        self.edge_out = nn.Linear(hidden_dim, hidden_dim)
        self.bias_in = nn.Parameter(torch.zeros(hidden_dim))
        self.bias_out = nn.Parameter(torch.zeros(hidden_dim))
        self.gru = nn.GRUCell(2 * hidden_dim, hidden_dim)     # = the reference's hand-written GRU update
        # Readout: alpha_i = q^T sigmoid(W1 v_n + W2 v_i + c) (c = W2's bias), s = W3 [v_n ; s_global].
        self.att_last = nn.Linear(hidden_dim, hidden_dim)
        self.att_node = nn.Linear(hidden_dim, hidden_dim)
        self.att_q = nn.Linear(hidden_dim, 1, bias=False)
        self.transform = nn.Linear(2 * hidden_dim, hidden_dim)
        # The reference initialises every parameter U(-1/sqrt(D), 1/sqrt(D)); the padding row stays zero.
        bound = 1.0 / math.sqrt(hidden_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)
            if not frozen_item_table:
                self.item_emb.weight[0].zero_()

    def item_embeddings(self) -> torch.Tensor:
        """[num_items, D]: the GNN's input table and the scoring table (row 0 = padding = zeros)."""
        return self.item_table if self.frozen_item_table else self.item_emb.weight

    def set_item_table(self, table: torch.Tensor) -> None:
        """Install the frozen item table [num_items, hidden_dim] (row 0 is forced to zero)."""
        if not self.frozen_item_table:
            raise RuntimeError("this SRGNN has a trainable item table (frozen_item_table=False)")
        if tuple(table.shape) != tuple(self.item_table.shape):
            raise ValueError(f"item table has shape {tuple(table.shape)}, expected {tuple(self.item_table.shape)} "
                             "(num_items, hidden_dim)")
        with torch.no_grad():
            self.item_table.copy_(table.to(self.item_table))
            self.item_table[0].zero_()

    def _propagate(self, h: torch.Tensor, a_in: torch.Tensor, a_out: torch.Tensor) -> torch.Tensor:
        b, length, dim = h.shape
        msg = torch.cat([a_in @ self.edge_in(h) + self.bias_in, a_out @ self.edge_out(h) + self.bias_out], dim=-1)
        return self.gru(msg.reshape(b * length, 2 * dim), h.reshape(b * length, dim)).view(b, length, dim)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        return self.encode(seqs)

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """Left-padded [B, L] item ids (newest last, any L; the last max_len are used) -> session vectors [B, D]."""
        seqs = seqs[:, -self.max_len:]
        valid = seqs > 0
        alias, active, a_in, a_out = session_graph(seqs)
        node_mask = active.unsqueeze(-1).to(torch.float32)
        h = self.item_embeddings()[seqs] * node_mask
        for _ in range(self.num_steps):
            # Inactive nodes have no edges, so they never reach an active one; zeroing them keeps outputs clean.
            h = self._propagate(h, a_in, a_out) * node_mask
        click = h.gather(1, alias.unsqueeze(-1).expand(-1, -1, self.hidden_dim))   # [B, L, D], per position
        click = click * valid.unsqueeze(-1).to(click.dtype)
        last = click[:, -1]                                                          # left-padded: newest last
        alpha = self.att_q(torch.sigmoid(self.att_last(last).unsqueeze(1) + self.att_node(click)))   # [B, L, 1]
        glob = (alpha * click).sum(dim=1)          # padding rows of `click` are zero: they add nothing
        s = self.transform(torch.cat([last, glob], dim=-1))
        return s * valid.any(dim=1, keepdim=True).to(s.dtype)                         # all padding -> zeros

    def scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """[B, num_items] = encode(seqs) @ item_embeddings().T (column 0, padding, is left to the caller)."""
        return self.encode(seqs) @ self.item_embeddings().T
