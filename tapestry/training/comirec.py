"""ComiRec-SA as a Recommender: K interest vectors per user, trained on (history prefix -> next item) pairs.

Training examples: every position t >= 1 of a user's training sequence is a pair (the up to `max_len` items
before t -> item t). ML-1M has ~160 positions per user and, unlike SASRec's causal encoder, the interests of
one prefix do not come out of another's forward pass, so each epoch draws `positions_per_user` of them afresh per
user (all of them for shorter users): every user weighs alike, as in the paper's sampler, and an epoch stays
under ~30 s on 2 CPU cores for ML-1M.

Loss: the paper's argmax read-out (the interest closest to the target is trained), then cross-entropy over ALL
items, as SASRec trains (tapestry.training.sasrec). The full softmax is not the bottleneck here: per example the
attention MLP over the window costs more than the [D] x [D, num_items] output product. Measured on ML-1M's 3.6k
items, one thread, batches of 256 x 50: 62 ms per step with the full softmax vs 50 ms with B shared sampled
negatives (attn_dim 64; 88 vs 81 ms at attn_dim 256), too little to trade for a biased, slower-converging loss.

Serving: score(item) = max over the K interests of <v_k, e_item>, which is exactly what exact inner-product
retrieval returns when each of the K vectors queries the index and the hits are merged by score.

`graph_from`: a graph model's item vectors (its registry name, trained earlier in the same run) are fused into the
item table FROZEN, id + W side, as in SASRec's `fusion="add"`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tapestry.models.sequential.comirec import ComiRecSA
from tapestry.training.base import Recommender, seeded, shuffled_epoch
from tapestry.training.loop import run_epochs
from tapestry.inference.padding import trim_padding
from tapestry.training.sequential import SequentialRecommender


@dataclass
class ComiRecConfig:
    # Chosen on ML-1M's VALID split (10-epoch runs, NDCG@10): lr 2e-3 -> 5e-3 took 0.072 -> 0.109; attn_dim 256
    # (the authors' 4 * hidden) gave 0.081 at 1.4x the time; 32 positions per user instead of 16 gave 0.107.
    hidden_dim: int = 64
    num_interests: int = 4        # K: vectors per user (the paper's default)
    max_len: int = 50             # history window (the paper uses 20-50)
    attn_dim: int = 64            # width of the attention MLP (W1); 0 = 4 * hidden_dim, the authors' code
    positions_per_user: int = 16  # (prefix -> next item) examples drawn per user and epoch; 0 = all positions
    epochs: int = 15              # ~9 s/epoch on ML-1M (one CPU thread); the loss flattens after ~10
    patience: int = 3             # validation checks without gain before stopping (0: run every epoch)
    batch_size: int = 256
    lr: float = 5e-3
    dropout: float = 0.1          # on the history's item vectors
    graph_from: str | None = None  # registry name of a model whose item_embeddings() are fused in, frozen
    seed: int = 0


def prefix_examples(sequences: list[np.ndarray], max_len: int, per_user: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(windows [E, max_len] left-padded, targets [E]): for each user, up to `per_user` (0 = all) positions t >= 1
    drawn without replacement, the window being the up to `max_len` items before t."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.concatenate(sequences) if len(sequences) else np.zeros(0, dtype=np.int64)
    users, positions = [], []
    for u in np.flatnonzero(lengths >= 2):
        n = int(lengths[u]) - 1                                    # candidate targets: positions 1..n
        t = np.arange(1, n + 1) if per_user <= 0 or n <= per_user else rng.choice(n, per_user, replace=False) + 1
        users.append(np.full(len(t), u))
        positions.append(t)
    if not users:
        return np.zeros((0, max_len), dtype=np.int64), np.zeros(0, dtype=np.int64)
    users, positions = np.concatenate(users), np.concatenate(positions)
    begin = starts[users] + positions                               # flat index of each target
    idx = begin[:, None] - max_len + np.arange(max_len)[None, :]    # the window before it
    windows = np.where(idx >= starts[users][:, None], flat[np.clip(idx, 0, None)], 0)
    return windows.astype(np.int64), flat[begin].astype(np.int64)


class ComiRecRecommender(SequentialRecommender):
    Config = ComiRecConfig
    parallelism = "data"            # shuffled_epoch: DDP under --distributed N (every rank draws the same examples)

    def __init__(self, config: ComiRecConfig | None = None, *, side: torch.Tensor | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self.side = side
        self.model: ComiRecSA | None = None

    def bind(self, upstream: dict[str, Recommender]) -> None:
        if self.cfg.graph_from is not None:
            self.side = self.upstream_model(upstream, "graph_from").item_embeddings().detach()

    def _new_model(self, num_items: int, side_dim: int = 0) -> ComiRecSA:
        c = self.cfg
        return ComiRecSA(num_items, c.hidden_dim, c.num_interests, c.max_len, c.dropout, side_dim=side_dim,
                         attn_dim=c.attn_dim).to(self.device)

    def fit(self, data, graph=None) -> "ComiRecRecommender":
        c = self.cfg
        self.num_items = data.num_items
        sequences = data.sequences(("train",))
        rng = np.random.default_rng(c.seed)
        with seeded(self.device, c.seed):
            self.model = model = self._new_model(self.num_items, int(self.side.shape[-1]) if self.side is not None
                                                 else 0)
            if self.side is not None:
                model.set_side_embeddings(self.side.float())
            opt = torch.optim.Adam(model.parameters(), lr=c.lr)

            def epoch(beat):
                windows, targets = prefix_examples(sequences, c.max_len, c.positions_per_user, rng)
                return self._train_epoch(model, opt, torch.from_numpy(windows), torch.from_numpy(targets), beat)

            run_epochs(self, model, c.epochs, "comirec", epoch, data, c.patience)
        return self

    def _train_epoch(self, model: ComiRecSA, opt: torch.optim.Optimizer, windows: torch.Tensor,
                     targets: torch.Tensor, beat=None) -> float:
        """One pass over the examples in random order; returns the mean loss per example."""
        def batch_loss(rows):
            batch, target = trim_padding(windows[rows].to(self.device)), targets[rows].to(self.device)
            table = model.item_table()
            attn, values = model.attention(batch, table)
            chosen = model.readout(attn @ values, table[target])                     # [B, D]
            # Full softmax over real items 1..N-1 (index 0 is padding, never a target).
            return F.cross_entropy(chosen @ table[1:].T, target - 1), len(rows)

        return shuffled_epoch(model, opt, windows.shape[0], self.cfg.batch_size, batch_loss, beat)

    def encode_interests(self, histories: list[np.ndarray], batch_size: int = 512) -> torch.Tensor:
        """Interest vectors [B, K, D] from item histories (time order); an empty history gives zeros."""
        return self.encode(histories, batch_size)

    def _get_state(self):
        return {"num_items": self.num_items, "side_dim": self.model.side_dim,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def _set_state(self, state):
        self.num_items = int(state["num_items"])
        self.model = self._new_model(self.num_items, int(state["side_dim"]))
        self.model.load_state_dict(state["model"])
        self.model.eval()
