"""The two-tower baseline as a Recommender: in-batch sampled softmax with the log-Q correction.

Training examples: every (history prefix -> next item) pair of the train split (the prefix = the previous
`max_len` items), optionally capped at the `max_examples_per_user` most recent per user. Stored as one flat
item array plus positions, so a batch's left-padded prefixes are gathered on the fly (ML-1M: ~480k examples
would take 190 MB as a padded matrix).

Loss (Yi et al. 2019, "Sampling-bias-corrected neural modeling for large corpus item recommendations"): the
other targets of the batch are the negatives. They arrive with probability ~ their frequency as a target, so
the plain in-batch softmax learns to down-rank popular items; subtracting log q(item) from every logit (q = the
item's share of training targets) makes it an unbiased estimate of the full softmax. A batch row holding the
SAME item as the positive is masked out of the denominator (it is not a negative), as in the paper's practice.
`logq=False` gives the uncorrected loss (tests compare both).

Scores are the plain inner product of the L2-normalised towers (see tapestry.models.retrieval.two_tower):
`score()` == `serving_module().encode(seqs) @ serving_module().item_embeddings().T`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from tapestry.models.retrieval.two_tower import TwoTower
from tapestry.inference.padding import left_pad
from tapestry.training import data_parallel
from tapestry.training.base import Recommender, seeded, shuffled_epoch
from tapestry.training.data_parallel import gather_batch
from tapestry.training.loop import run_epochs
from tapestry.training.examples import PrefixExamples  # noqa: F401 - re-exported (tests, distill)


@dataclass
class TwoTowerConfig:
    embedding_dim: int = 64
    hidden_dim: int = 128           # width of both towers' hidden MLP layer
    max_len: int = 50               # history items the user tower reads (the newest)
    temperature: float = 0.05       # softmax temperature on cosine scores (ML-1M valid NDCG@10 at 5 epochs:
                                    # 0.1735 at 0.05, 0.1723 at 0.1)
    dropout: float = 0.1            # on the user tower's pooled input
    epochs: int = 10                # ~480 steps, 22-45 s/epoch on ML-1M (2 shared CPU cores); valid NDCG@10
                                    # 0.1735 after 5, 0.1881 after 9, 0.1874 after 10 (flat from 9 on)
    patience: int = 3               # validation checks without gain before stopping (0: every epoch)
    batch_size: int = 1024          # = in-batch negatives per example: more negatives, a better softmax estimate
    lr: float = 2e-3                # Adam
    weight_decay: float = 0.0
    logq: bool = True               # subtract log q(item) from the in-batch logits (sampling-bias correction);
                                    # ML-1M valid NDCG@10 at 5 epochs: 0.1735 with, 0.1077 without
    use_user_attrs: bool = False    # add the user-attribute multi-hot to the user tower
    max_item_attrs: int = 16        # attribute values kept per item (the most common ones when it has more)
    max_examples_per_user: int = 0  # 0 = every prefix; else only the most recent N per user (long histories)
    seed: int = 0


# ---- features --------------------------------------------------------------------------------------------
def _value_keys(frame: pl.DataFrame) -> pl.Series:
    return frame.select(pl.concat_str(["entity_type", "entity_value"], separator="\x1f")).to_series()


def item_attribute_index(entities: pl.DataFrame, num_items: int, max_per_item: int) -> tuple[torch.Tensor, int]:
    """([num_items, A] long, vocab size incl. padding 0): each item's attribute values, contiguous ids from 1.

    Every (entity_type, entity_value) pair is one value; an item with more than `max_per_item` keeps the most
    common ones (they generalise; a rare one is nearly an ID).
    """
    if entities.height == 0:
        return torch.zeros(num_items, 1, dtype=torch.long), 1
    keys = _value_keys(entities)
    counts = keys.value_counts().sort(["count", keys.name], descending=[True, False])   # ties: by name
    vocab = {k: i + 1 for i, k in enumerate(counts[keys.name].to_list())}         # most common first
    rows: list[list[int]] = [[] for _ in range(num_items)]
    for item, key in zip(entities["item_idx"].to_list(), keys.to_list()):
        if 0 < item < num_items:
            rows[item].append(vocab[key])
    width = max(1, min(max_per_item, max(len(r) for r in rows)))
    out = torch.zeros(num_items, width, dtype=torch.long)
    for item, values in enumerate(rows):
        values = sorted(set(values))[:width]           # smaller id = more common
        out[item, :len(values)] = torch.tensor(values, dtype=torch.long)
    return out, len(vocab) + 1


def user_attribute_multi_hot(entities: pl.DataFrame, num_users: int) -> torch.Tensor:
    """[num_users, V] float: one column per (entity_type, entity_value) pair; row 0 (OOV user) is zeros."""
    keys = _value_keys(entities)
    vocab = {k: i for i, k in enumerate(sorted(set(keys.to_list())))}
    out = torch.zeros(num_users, len(vocab))
    users = entities["user_idx"].to_numpy()
    cols = np.array([vocab[k] for k in keys.to_list()], dtype=np.int64)
    ok = (users > 0) & (users < num_users)
    out[torch.from_numpy(users[ok]), torch.from_numpy(cols[ok])] = 1.0
    return out


def in_batch_softmax_loss(model: TwoTower, users: torch.Tensor, targets: torch.Tensor,
                          log_q: torch.Tensor | None) -> torch.Tensor:
    """In-batch sampled softmax: row i's positive is targets[i], the other rows' targets are its negatives.

    users [B, D] (user-tower vectors), targets [B] item indices; log_q [num_items] or None (no correction).
    Data-parallel (tapestry.training.data_parallel), the rows are this process's share and the negatives are the
    targets of the WHOLE global batch (gathered, gradients flowing back to their rank): the same loss as one process.
    """
    items, offset = gather_batch(model.item_vectors(targets))                         # [G, D], G = global batch
    every, _ = gather_batch(targets)
    logits = model.logits(users, items)                                               # [B, G]
    if log_q is not None:
        logits = logits - log_q[every].unsqueeze(0)
    own = torch.arange(len(targets), device=logits.device) + offset                   # each row's positive column
    same = every.unsqueeze(0) == targets.unsqueeze(1)
    same[torch.arange(len(targets), device=logits.device), own] = False
    logits = logits.masked_fill(same, -torch.inf)
    return F.cross_entropy(logits, own)


class TwoTowerRecommender(Recommender):
    Config = TwoTowerConfig
    parallelism = "data"            # shuffled_epoch: DDP; in-batch negatives gathered over the global batch

    def __init__(self, config: TwoTowerConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self.model: TwoTower | None = None
        self.user_attrs: torch.Tensor | None = None      # [num_users, V] multi-hot when use_user_attrs

    # ---- fitting -------------------------------------------------------------------------------------------
    def _build(self, data) -> TwoTower:
        c = self.cfg
        attrs, vocab = item_attribute_index(data.item_entities, data.num_items, c.max_item_attrs)
        self.user_attrs = user_attribute_multi_hot(data.user_entities, data.num_users).to(self.device) \
            if c.use_user_attrs else None
        model = TwoTower(data.num_items, c.embedding_dim, c.max_len, vocab, attrs.shape[1],
                         0 if self.user_attrs is None else self.user_attrs.shape[1], c.hidden_dim, c.dropout,
                         c.temperature).to(self.device)
        model.set_item_attrs(attrs)
        return model

    def fit(self, data, graph=None) -> "TwoTowerRecommender":
        c = self.cfg
        self.num_items = data.num_items
        examples = PrefixExamples(data.sequences(("train",)), c.max_len, c.max_examples_per_user)
        log_q = examples.target_log_q(data.num_items).to(self.device) if c.logq else None
        with seeded(self.device, c.seed):
            self.model = model = self._build(data)
            self._prepare_extra(data)
            opt = torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
            run_epochs(self, model, c.epochs, type(self).__name__.removesuffix("Recommender").lower(),
                       lambda beat: self._train_epoch(model, opt, examples, log_q, beat), data, c.patience)
        return self

    def _train_epoch(self, model: TwoTower, opt, examples: PrefixExamples, log_q: torch.Tensor | None,
                     beat=None) -> float:
        """One pass over the examples in random order; returns the mean batch loss."""
        def batch_loss(rows):
            seqs, targets, users = (t.to(self.device) for t in examples.batch(rows))
            if len(targets) < 2 and not data_parallel.active():
                return None                   # a lone example has no in-batch negatives (data-parallel: >= 2 global)
            hard = in_batch_softmax_loss(model, model.encode(seqs, self._attrs_of(users)), targets, log_q)
            return self._step_loss(model, hard), 1, len(targets)   # weight 1 per step; a mean over the rows

        return shuffled_epoch(model, opt, len(examples), self.cfg.batch_size, batch_loss, beat)

    # Hooks for subclasses that add a loss term (tapestry.training.distill): nothing extra here.
    def _prepare_extra(self, data) -> None:
        """Called inside fit's seeded block once the model exists, before the first epoch."""

    def _step_loss(self, model: TwoTower, hard: torch.Tensor) -> torch.Tensor:
        return hard

    # ---- scoring -------------------------------------------------------------------------------------------
    def _attrs_of(self, user_idx) -> torch.Tensor | None:
        """The users' attribute multi-hot rows [B, V] (zeros for OOV / unknown users); None without attributes."""
        if self.user_attrs is None:
            return None
        u = torch.as_tensor(np.array(user_idx, dtype=np.int64), device=self.user_attrs.device)
        known = (u > 0) & (u < self.user_attrs.shape[0])
        return self.user_attrs[torch.where(known, u, 0)] * known.unsqueeze(1)

    def serving_module(self) -> TwoTower:
        return self.model.eval()

    def item_embeddings(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model.eval().item_embeddings()

    @torch.no_grad()
    def encode(self, histories: list[np.ndarray], user_idx: np.ndarray | None = None,
               batch_size: int = 512) -> torch.Tensor:
        """User vectors [B, D] from histories (time order); with use_user_attrs, also the attributes of `user_idx`
        (None: unknown). An empty history (and no attributes) gives zeros."""
        self.model.eval()
        out = []
        for s in range(0, len(histories), batch_size):
            seqs = torch.from_numpy(left_pad(histories[s:s + batch_size], self.cfg.max_len)).to(self.device)
            attrs = None if user_idx is None else self._attrs_of(np.asarray(user_idx)[s:s + batch_size])
            out.append(self.model.encode(seqs, attrs))
        return torch.cat(out) if out else torch.zeros(0, self.cfg.embedding_dim, device=self.device)

    @torch.no_grad()
    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        return self._mask_padding(self.encode(histories, user_idx) @ self.item_embeddings().T)

    # ---- persistence ---------------------------------------------------------------------------------------
    def _get_state(self):
        state = {"num_items": self.num_items, "init_args": dict(self.model.init_args),
                 "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}
        if self.user_attrs is not None:
            state["user_attrs"] = self.user_attrs.cpu()
        return state

    def _set_state(self, state):
        self.num_items = int(state["num_items"])
        self.model = TwoTower(**state["init_args"]).to(self.device)
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.user_attrs = state["user_attrs"].to(self.device) if "user_attrs" in state else None
