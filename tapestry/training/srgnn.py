"""SR-GNN as a Recommender: a history (or an anonymous session) -> one vector scored against an item table.

Training (SR-GNN's augmentation): every prefix of every training sequence predicts the item that followed it,
with cross-entropy over ALL items (the paper's loss; the catalogue sizes here afford the full softmax). Inputs are
the last `max_len` items of each prefix: the session window. Adam with L2 `l2` and the reference's step decay
(lr x `lr_decay` every `lr_decay_every` epochs).

Long histories (ML-1M users have hundreds of events) would give hundreds of prefixes per user, mostly
overlapping windows of the same history; `max_prefixes_per_user` keeps each user's most recent ones (None = all,
which is the paper's setting for real sessions: see benchmarks/session.py).

`score(user_idx, histories)` ignores the user id: the last `max_len` items of the history are the session, so an
unknown or anonymous visitor is scored from their clicks alone.

`item_table_from` (a registry name, read in `bind`): the item table is that model's `item_embeddings()`, FROZEN
(e.g. the served `sasrec_lightgcn`'s fused table). The session encoder is then trained to point into the served
model's space, and serving answers anonymous sessions from the same FAISS index. Its width must equal hidden_dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tapestry.models.session.srgnn import SRGNN
from tapestry.training.base import Recommender, seeded, shuffled_epoch
from tapestry.training.loop import run_epochs
from tapestry.training.examples import PrefixExamples
from tapestry.inference.padding import trim_padding
from tapestry.training.sequential import SequentialRecommender


@dataclass
class SRGNNConfig:
    hidden_dim: int = 64          # must equal the upstream table's width with item_table_from
    num_steps: int = 1            # GNN propagation steps (the paper's best: 1)
    max_len: int = 50             # session window: the last max_len clicks of a prefix / history
    epochs: int = 10              # at most
    patience: int = 3             # validation checks without gain before stopping (0: run every epoch)
    batch_size: int = 100         # the reference's batch size
    lr: float = 1e-3              # the reference's Adam lr
    l2: float = 1e-5              # Adam weight decay (the reference's L2 penalty)
    lr_decay: float = 0.1         # the reference's step decay: lr x lr_decay ...
    lr_decay_every: int = 3       # ... every this many epochs
    item_table_from: str | None = None      # registry name of a model whose item_embeddings() are the frozen table
    max_prefixes_per_user: int | None = 20  # most recent training prefixes per sequence (None = every prefix)
    seed: int = 0


class SRGNNRecommender(SequentialRecommender):
    Config = SRGNNConfig
    parallelism = "data"            # shuffled_epoch: DDP under --distributed N

    def __init__(self, config: SRGNNConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self.item_table: torch.Tensor | None = None     # from bind(), with item_table_from
        self.model: SRGNN | None = None

    def bind(self, upstream: dict[str, Recommender]) -> None:
        source = self.cfg.item_table_from
        if source is None:
            return
        table = self.upstream_model(upstream, "item_table_from").item_embeddings().detach()
        if table.dim() != 2 or table.shape[-1] != self.cfg.hidden_dim:
            raise ValueError(f"srgnn item_table_from={source!r} gives item vectors of shape {tuple(table.shape)}, "
                             f"but hidden_dim is {self.cfg.hidden_dim}: set hidden_dim to the upstream width")
        self.item_table = table

    def _new_model(self, num_items: int, frozen: bool) -> SRGNN:
        c = self.cfg
        return SRGNN(num_items, c.hidden_dim, c.num_steps, c.max_len, frozen_item_table=frozen).to(self.device)

    def training_examples(self, sequences: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [P, W <= max_len] left-padded, targets [P]): every (or the last max_prefixes_per_user) prefix of
        every sequence -> the next item."""
        return PrefixExamples(sequences, self.cfg.max_len, self.cfg.max_prefixes_per_user or 0).all()

    def fit(self, data, graph=None) -> "SRGNNRecommender":
        return self.fit_sequences(data.sequences(("train",)), data.num_items, data)

    def fit_sequences(self, sequences: list[np.ndarray], num_items: int, data=None) -> "SRGNNRecommender":
        """Train on item-index sequences (user histories or sessions, time order); num_items includes padding 0.
        With `data` (an InteractionData) it stops early on its validation split (`patience`)."""
        c = self.cfg
        if c.item_table_from is not None and self.item_table is None:
            raise RuntimeError(f"srgnn item_table_from={c.item_table_from!r}: call bind() before fit()")
        if self.item_table is not None and self.item_table.shape[0] != num_items:
            raise ValueError(f"the bound item table has {self.item_table.shape[0]} rows but the data has "
                             f"{num_items} items")
        self.num_items = num_items
        inputs, targets = self.training_examples(sequences)
        with seeded(self.device, c.seed):
            self.model = model = self._new_model(num_items, frozen=self.item_table is not None)
            if self.item_table is not None:
                model.set_item_table(self.item_table.float())
            opt = torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.l2)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=c.lr_decay_every, gamma=c.lr_decay)

            def epoch(beat):
                loss = self._train_epoch(model, opt, inputs, targets, beat)
                sched.step()
                return loss

            run_epochs(self, model, c.epochs, "srgnn", epoch, data, c.patience)
        return self

    def _train_epoch(self, model: SRGNN, opt: torch.optim.Optimizer, inputs: torch.Tensor,
                     targets: torch.Tensor, beat=None) -> float:
        """One pass over the prefixes in random order; returns the mean loss per prefix."""
        def batch_loss(idx):
            batch = trim_padding(inputs[idx].to(self.device))   # the session graph is [B, L, L]: worth trimming
            # Full softmax over real items 1..N-1 (index 0 is padding, never a target).
            logits = model.encode(batch) @ model.item_embeddings()[1:].T
            return F.cross_entropy(logits, targets[idx].to(self.device) - 1), len(idx)

        return shuffled_epoch(model, opt, inputs.shape[0], self.cfg.batch_size, batch_loss, beat)

    def _get_state(self):
        return {"num_items": self.num_items, "frozen_item_table": self.model.frozen_item_table,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def _set_state(self, state):
        self.num_items = int(state["num_items"])
        # The frozen table is a buffer in the state dict: loading needs no upstream model.
        self.model = self._new_model(self.num_items, bool(state["frozen_item_table"]))
        self.model.load_state_dict(state["model"])
        self.model.eval()
