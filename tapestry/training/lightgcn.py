"""LightGCN as a Recommender: the training loop over tapestry.models.graph.lightgcn.LightGCN.

The node space is the whole heterogeneous graph flattened (users, items and entity nodes), so items with few
interactions still receive signal through their attribute nodes. One full propagation per mini-batch (the
standard LightGCN recipe; see tapestry.nn.propagation for why that is cheap on CPU).

Two losses:
- "bpr" (the paper's): one uniform negative item per positive edge, L2 on the batch's layer-0 embeddings.
  Needs hundreds of epochs to converge on Gowalla.
- "softmax": cosine sampled softmax against `num_negatives` uniform items shared by the batch, with a
  temperature (the SSM / SimpleX recipe). Converges in tens of epochs, which is what makes the standard
  protocols reachable on a 2-core CPU. Scores are then cosine similarities (vectors are L2-normalised).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tapestry.graph.hetero import INTERACTS, build_hetero_graph, homogeneous_view
from tapestry.models.graph.lightgcn import LightGCN
from tapestry.nn.propagation import normalized_adjacency
from tapestry.training import data_parallel
from tapestry.training.base import Recommender, seeded, shuffled_epoch
from tapestry.training.loop import run_epochs
from tapestry.training.losses import bpr_loss, sampled_softmax_loss


@dataclass
class LightGCNConfig:
    """Defaults tuned for the demo budget (ML-1M users 1-2999, 2 CPU cores: ~45 s). One full-graph propagation
    per batch, so fewer, larger batches with a higher lr beat the paper's 2048 / 1e-3 within minutes."""
    embedding_dim: int = 64
    num_layers: int = 2
    epochs: int = 20                  # at most
    patience: int = 3                 # validation checks without gain before stopping (0: every epoch)
    batch_size: int = 8192
    lr: float = 2e-2
    weight_decay: float = 1e-4        # "bpr": L2 on the batch's layer-0 embeddings (the paper's regulariser)
    loss: str = "bpr"                 # "bpr" or "softmax" (see the module docstring)
    num_negatives: int = 2048         # "softmax": uniform negative items shared by a batch
    temperature: float = 0.1          # "softmax": cosine / temperature
    entity_nodes: bool = True         # propagate over entity nodes too (False: the plain user-item graph)
    seed: int = 0


class LightGCNRecommender(Recommender):
    Config = LightGCNConfig
    parallelism = "data"            # shuffled_epoch: DDP under --distributed N (full propagation on every rank)

    def __init__(self, config: LightGCNConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        if self.cfg.loss not in ("bpr", "softmax"):
            raise ValueError(f"LightGCN loss must be 'bpr' or 'softmax', got {self.cfg.loss!r}")
        self.num_users: int | None = None
        self._user_emb: torch.Tensor | None = None
        self._item_emb: torch.Tensor | None = None

    def fit(self, data, graph=None) -> "LightGCNRecommender":
        c = self.cfg
        graph = graph if graph is not None else build_hetero_graph(data)
        view = homogeneous_view(graph if c.entity_nodes else graph.edge_type_subgraph(
            [INTERACTS, ("item", "rev_interacts", "user")]))
        u_off, i_off = view.offsets["user"], view.offsets["item"]
        self.num_users, self.num_items = view.sizes["user"], view.sizes["item"]
        adj = normalized_adjacency(view.edge_index, view.num_nodes).to(self.device)
        ei = graph[INTERACTS].edge_index
        users, items = (ei[0] + u_off).to(self.device), (ei[1] + i_off).to(self.device)
        n_edges = users.numel()

        with seeded(self.device, c.seed):
            model = LightGCN(view.num_nodes, c.embedding_dim, c.num_layers).to(self.device)
            opt = torch.optim.Adam(model.parameters(), lr=c.lr)

            def batch_loss(idx):
                idx = idx.to(self.device)
                u, i = users[idx], items[idx]
                emb = model(adj)
                if c.loss == "bpr":
                    # Uniform negatives over real items (1..num_items-1); a rare accidental positive is harmless.
                    # Drawn for the whole global batch, then this process's share: data-parallel runs draw the
                    # same negatives as one process.
                    share, total = data_parallel.step_share() if data_parallel.active() else (slice(None), len(idx))
                    j = (torch.randint(1, self.num_items, (total,), device=self.device) + i_off)[share]
                    eu = emb[u]
                    loss = bpr_loss((eu * emb[i]).sum(-1), (eu * emb[j]).sum(-1),
                                    model.embedding.weight[torch.cat([u, i, j])], c.weight_decay)
                else:
                    j = torch.randint(1, self.num_items, (c.num_negatives,), device=self.device) + i_off
                    loss = sampled_softmax_loss(emb[u], emb[i], emb[j], c.temperature)
                return loss, 1, len(idx)          # the epoch's loss: a mean per step; the loss: per edge

            def epoch(beat):
                return shuffled_epoch(model, opt, n_edges, c.batch_size, batch_loss, beat)

            def refresh():
                """The propagated tables `score` reads, from the current weights."""
                with torch.no_grad():
                    emb = model(adj)
                    if c.loss == "softmax":
                        emb = torch.nn.functional.normalize(emb, dim=-1)   # trained on cosine: score on cosine
                self._user_emb = emb[view.slice("user")].clone()
                self._item_emb = emb[view.slice("item")].clone()
                # Row 0 is the isolated OOV/padding node: its vector is untrained noise, so define it as zero.
                self._user_emb[0] = 0.0
                self._item_emb[0] = 0.0

            run_epochs(self, model, c.epochs, "lightgcn", epoch, data, c.patience, refresh=refresh)
        return self

    def user_embeddings(self) -> torch.Tensor:
        """Final propagated user vectors [num_users, D] (row 0 = OOV = zeros)."""
        return self._user_emb

    def item_embeddings(self) -> torch.Tensor:
        """Final propagated item vectors [num_items, D] incl. row 0 (zeros); input for SASRec and FAISS."""
        return self._item_emb

    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        # Transductive: users are scored from their trained vector, histories are not used. Unknown users
        # (index 0 or out of range) get the zero vector, i.e. flat scores: serve them with popularity instead.
        u = torch.from_numpy(np.array(user_idx, dtype=np.int64)).to(self.device)
        u = torch.where((u > 0) & (u < self.num_users), u, torch.zeros_like(u))
        scores = self._user_emb[u] @ self._item_emb.T
        return self._mask_padding(scores)

    def _get_state(self):
        return {"num_users": self.num_users, "num_items": self.num_items,
                "user_emb": self._user_emb.cpu(), "item_emb": self._item_emb.cpu()}

    def _set_state(self, state):
        self.num_users, self.num_items = int(state["num_users"]), int(state["num_items"])
        self._user_emb = state["user_emb"].to(self.device)
        self._item_emb = state["item_emb"].to(self.device)
