"""SASRec as a Recommender: next-item training with a full softmax, optionally started from graph item vectors.

Training: for every user with >= 2 training events, the last `max_len + 1` items give `max_len` (input, next
item) pairs; the loss is cross-entropy over ALL items at every real position. On CPU that is a [positions, D] x
[D, num_items] product per batch; padded positions are dropped before it, so the cost follows the number of
real events, not batch * max_len. A full softmax converges in far fewer epochs than the paper's BCE with one
sampled negative, which is what fits a useful model into a few CPU minutes.

`item_init` (e.g. LightGCNRecommender.item_embeddings()) is the GNN -> transformer hybrid: the item table starts
from collaborative/graph structure instead of noise. The vectors are rescaled to the table's default init scale
(their directions are what carry the information; LightGCN's magnitudes would otherwise swamp the positional
embeddings after SASRec's sqrt(D) input scaling).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tapestry.training.base import Recommender
from tapestry.training.lightgcn import _rng_devices
from tapestry.training.sasrec import SASRec, left_pad


class SASRecRecommender(Recommender):
    # Defaults = tapestry.config.SASRecConfig's.
    def __init__(self, hidden_dim: int = 64, num_blocks: int = 2, num_heads: int = 1, max_len: int = 100,
                 dropout: float = 0.2, epochs: int = 26, batch_size: int = 128, lr: float = 4e-3, seed: int = 0,
                 item_init: torch.Tensor | None = None, device: str = "auto", progress: bool | None = None):
        super().__init__(device, progress)
        self.hidden_dim, self.num_blocks, self.num_heads, self.max_len = hidden_dim, num_blocks, num_heads, max_len
        self.dropout, self.epochs, self.batch_size, self.lr, self.seed = dropout, epochs, batch_size, lr, seed
        if item_init is not None and item_init.shape[-1] != hidden_dim:
            raise ValueError(f"item_init has dimension {item_init.shape[-1]} but hidden_dim is {hidden_dim}")
        self.item_init = item_init
        self.initialised_from_graph = False
        self.model: SASRec | None = None

    def _init_kwargs(self):
        return {"hidden_dim": self.hidden_dim, "num_blocks": self.num_blocks, "num_heads": self.num_heads,
                "max_len": self.max_len, "dropout": self.dropout, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed}

    def _new_model(self, num_items: int) -> SASRec:
        return SASRec(num_items, self.hidden_dim, self.num_blocks, self.num_heads, self.max_len,
                      self.dropout).to(self.device)

    def _training_windows(self, sequences: list[np.ndarray]) -> torch.Tensor:
        """[U, max_len + 1]: each trainable user's last max_len + 1 training items, left-padded."""
        usable = [s for s in sequences if len(s) >= 2]
        return torch.from_numpy(left_pad(usable, self.max_len + 1, self.max_len + 1))

    def fit(self, data, graph=None) -> "SASRecRecommender":
        self.num_items = data.num_items
        windows = self._training_windows(data.sequences(("train",)))
        with torch.random.fork_rng(devices=_rng_devices(self.device)):
            torch.manual_seed(self.seed)
            self.model = model = self._new_model(self.num_items)
            if self.item_init is not None:
                init = self.item_init.detach().float().to(self.device)
                real = init[1:]
                target_std = float(model.item_emb.weight[1:].detach().std())
                model.init_item_embeddings(init * (target_std / float(real.std().clamp_min(1e-12))))
                self.initialised_from_graph = True
            # Adam with beta2 = 0.98 as in the SASRec paper; no weight decay (dropout regularises).
            opt = torch.optim.Adam(model.parameters(), lr=self.lr, betas=(0.9, 0.98))
            model.train()
            bar = self._epoch_bar(self.epochs, "sasrec")
            for _ in bar:
                self.loss_history_.append(self._train_epoch(model, opt, windows))
                bar.set_postfix(loss=f"{self.loss_history_[-1]:.4f}")
        model.eval()
        return self

    def _train_epoch(self, model: SASRec, opt: torch.optim.Optimizer, windows: torch.Tensor) -> float:
        """One pass over the users in random order; returns the mean loss per predicted position."""
        model.train()
        perm = torch.randperm(windows.shape[0])
        total, count = 0.0, 0
        for start in range(0, windows.shape[0], self.batch_size):
            batch = windows[perm[start:start + self.batch_size]].to(self.device)
            # Trim columns that are padding for the whole batch: less work, identical outputs.
            first = int((batch > 0).int().argmax(1).min())
            batch = batch[:, first:]
            inputs, targets = batch[:, :-1], batch[:, 1:]
            hidden = model(inputs)
            real = targets > 0
            h = hidden[real]                                                      # [P, D]
            # Full softmax over real items 1..N-1 (index 0 is padding, never a target).
            logits = h @ model.item_emb.weight[1:].T
            loss = F.cross_entropy(logits, targets[real] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * h.shape[0], count + h.shape[0]
        return total / max(count, 1)

    def item_embeddings(self) -> torch.Tensor:
        return self.model.item_embeddings().detach()

    @torch.no_grad()
    def encode(self, histories: list[np.ndarray], batch_size: int = 512) -> torch.Tensor:
        """User vectors [B, D] from item histories (time order); an empty history gives zeros."""
        self.model.eval()
        out = [self.model.encode(torch.from_numpy(left_pad(histories[s:s + batch_size], self.max_len))
                                 .to(self.device)) for s in range(0, len(histories), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.hidden_dim, device=self.device)

    @torch.no_grad()
    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        # Inductive: only the history matters (a user unseen in training is scored from their events alone).
        scores = self.encode(histories) @ self.model.item_emb.weight.T
        return self._mask_padding(scores)

    def _get_state(self):
        return {"num_items": self.num_items, "initialised_from_graph": self.initialised_from_graph,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def _set_state(self, state):
        self.num_items = int(state["num_items"])
        self.initialised_from_graph = bool(state["initialised_from_graph"])
        self.model = self._new_model(self.num_items)
        self.model.load_state_dict(state["model"])
        self.model.eval()
