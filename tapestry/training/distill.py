"""A two-tower student distilled from a stronger scorer (the hybrid SASRec, or a ranker over its candidates: the DLRM
or the fusion reranker, "Head B").

Why: the serving path is ANN retrieval over the item tower's vectors, then filtering and reranking. Whatever the
retriever misses the reranker never sees, so the retriever should surface the items the strong model would rank
high. A transformer or a ranker is too costly to run over the whole catalogue per request; a two-tower student
that mimics its top list keeps the cheap inner-product search (one user-tower pass + FAISS) while recovering the
teacher's candidates (Hinton et al. 2015; the listwise "ranking distillation" of Tang & Wang 2018).

How (all of it in `fit`):
1. The teacher (`bind` takes it by registry name, any Recommender with `score`) scores `distill_prefixes` history
   prefixes per training user — the full train history, plus earlier cut-offs when > 1 — once, batched, under
   no_grad. Per user rather than per (prefix, next item) example: ML-1M has ~480k examples and scoring each with a
   transformer would cost more than the whole student fit. Items already in the prefix and index 0 are masked (the
   serving filter drops them too); the top `teacher_top` items and their scores are kept. Scores of -inf (a ranker,
   `dlrm` or `fusion`, scores only its retriever's candidates) mark slots that are not part of the list: with a
   ranker teacher the list is its retriever's top `num_candidates`, reordered (teacher_top = 100 = both rankers'
   default num_candidates keeps all of it). The fusion ranker's scores are log-probabilities over its list, so
   temperature 1 reproduces its own softmax.
2. Each step adds, to the two-tower's in-batch log-Q loss on a batch of training examples (imported from
   tapestry.training.two_tower), a distillation loss on a batch of teacher lists: the soft cross-entropy between
   softmax(teacher scores / distill_temperature) over the list and the student's temperature-scaled logits
   (= the KL divergence up to the teacher's constant entropy). loss = (1 - alpha) * hard + alpha * distill.
   `distill_scope="list"`: the student's softmax over the user's own list only (orders the list, but does not
   push it above the rest of the catalogue); "batch" (default): over the union of the batch's lists, so other
   users' candidates act as negatives and the student must also RETRIEVE the list, which is what the ANN index
   needs. On the tiny test data "batch" agreed more with the teacher's top-10.

With the DLRM teacher, validation metrics are optimistic: the DLRM ranker is fitted on the validation split and its
scores at the end of the train history encode the validation items. The fusion ranker trains on training positions
only (valid_train_share = 0 by default) and uses validation to pick its epoch, as every model here does. The test
split stays honest. ML-1M numbers: benchmarks/distill.py (results/distill-ml-1m.json).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tapestry.models.retrieval.two_tower import TwoTower
from tapestry.inference.padding import left_pad
from tapestry.training.base import Recommender
from tapestry.training.two_tower import TwoTowerConfig, TwoTowerRecommender


@dataclass
class DistilledTwoTowerConfig(TwoTowerConfig):
    teacher: str = "sasrec_lightgcn"    # registry name of the teacher, trained earlier in the same run ("fusion",
                                        # "dlrm": a ranker over its retriever's candidates)
    teacher_top: int = 100              # items of the teacher's list per prefix
    alpha: float = 0.5                  # weight of the distillation loss; 1 - alpha on the hard next-item loss
    distill_temperature: float = 1.0    # on the teacher's scores (SASRec logits and DLRM log-probs: 1 is natural)
    distill_prefixes: int = 2           # teacher lists per user: the full train history + evenly spaced cut-offs
    distill_batch_size: int = 256       # teacher lists per step (they cycle: many passes per epoch)
    distill_scope: str = "batch"        # "batch": softmax over the union of the batch's lists; "list": own list
    teacher_batch_size: int = 256       # users per teacher.score call


def _prefix_cuts(n: int, count: int) -> list[int]:
    """Up to `count` distinct prefix lengths of an n-item history, the full history always included."""
    return sorted({max(1, int(np.ceil(n * j / count))) for j in range(1, count + 1)}) if n else []


class DistilledTwoTowerRecommender(TwoTowerRecommender):
    Config = DistilledTwoTowerConfig

    def __init__(self, config: DistilledTwoTowerConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        if self.cfg.distill_scope not in ("batch", "list"):
            raise ValueError(f"distill_scope must be 'batch' or 'list', got {self.cfg.distill_scope!r}")
        if not 0.0 <= self.cfg.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.cfg.alpha}")
        self.teacher: Recommender | None = None
        self._lists: dict[str, torch.Tensor] | None = None     # training-time only, never saved
        self._cursor, self._order = 0, None

    def bind(self, upstream: dict[str, Recommender]) -> None:
        # A loaded student is already trained: it needs no teacher to score.
        if self.cfg.teacher in upstream or self.model is None:
            self.teacher = self.upstream_model(upstream, "teacher")

    def fit(self, data, graph=None) -> "DistilledTwoTowerRecommender":
        if self.teacher is None:
            raise ValueError(f"two_tower_distill needs its teacher {self.cfg.teacher!r}: call bind() first "
                             "(the training pipeline does)")
        self._lists = self.teacher_lists(data)
        try:
            return super().fit(data, graph)
        finally:
            self._lists, self._order = None, None

    @torch.no_grad()
    def teacher_lists(self, data) -> dict[str, torch.Tensor]:
        """The teacher's top lists: {"seqs" [P, max_len], "users" [P], "items" [P, K] (0 = empty slot),
        "probs" [P, K] (softmax of the teacher's scores over the list; 0 on empty slots)}."""
        c = self.cfg
        sequences = data.sequences(("train",))
        users, prefixes = [], []
        for u, seq in enumerate(sequences):
            for cut in _prefix_cuts(len(seq), c.distill_prefixes):
                users.append(u)
                prefixes.append(seq[:cut])
        users = np.asarray(users, dtype=np.int64)
        items_out, scores_out = [], []
        for s in range(0, len(prefixes), c.teacher_batch_size):
            hist = prefixes[s:s + c.teacher_batch_size]
            scores = self.teacher.score(users[s:s + c.teacher_batch_size], hist).float().cpu()
            scores[:, 0] = -torch.inf
            rows = np.repeat(np.arange(len(hist)), [len(h) for h in hist])
            scores[torch.from_numpy(rows), torch.from_numpy(np.concatenate(hist))] = -torch.inf
            scores = scores.masked_fill(scores.isnan(), -torch.inf)
            top = torch.topk(scores, min(c.teacher_top, scores.shape[1]), dim=1)
            items_out.append(torch.where(torch.isfinite(top.values), top.indices, 0))
            scores_out.append(top.values)
        items, scores = torch.cat(items_out), torch.cat(scores_out)
        keep = (items > 0).any(1)                    # a prefix the teacher has no finite score for teaches nothing
        probs = torch.softmax(scores[keep] / c.distill_temperature, dim=1)   # -inf slots -> probability 0
        seqs = torch.from_numpy(left_pad([prefixes[i] for i in np.flatnonzero(keep.numpy())], c.max_len, c.max_len))
        return {"seqs": seqs, "users": torch.from_numpy(users)[keep], "items": items[keep], "probs": probs}

    def _prepare_extra(self, data) -> None:
        # Drawn here, inside fit's seeded block: the list order is reproducible like everything else.
        self._order, self._cursor = torch.randperm(len(self._lists["items"])), 0

    def _next_lists(self) -> torch.Tensor:
        """Indices of the next `distill_batch_size` teacher lists (a fresh permutation after each pass)."""
        n = len(self._order)
        if self._cursor + self.cfg.distill_batch_size > n and self._cursor > 0:
            self._order, self._cursor = torch.randperm(n), 0
        idx = self._order[self._cursor:self._cursor + self.cfg.distill_batch_size]
        self._cursor += len(idx)
        return idx

    def _step_loss(self, model: TwoTower, hard: torch.Tensor) -> torch.Tensor:
        if self._lists is None or len(self._order) == 0 or self.cfg.alpha == 0.0:
            return hard
        idx = self._next_lists()
        lists = {k: v[idx].to(self.device) for k, v in self._lists.items()}
        distill = distillation_loss(model, model.encode(lists["seqs"], self._attrs_of(lists["users"])),
                                    lists["items"], lists["probs"], self.cfg.distill_scope)
        return (1.0 - self.cfg.alpha) * hard + self.cfg.alpha * distill


def distillation_loss(model: TwoTower, users: torch.Tensor, items: torch.Tensor, probs: torch.Tensor,
                      scope: str = "batch") -> torch.Tensor:
    """Soft cross-entropy between teacher probabilities `probs` [B, K] over `items` [B, K] (0 = empty slot) and
    the student's softmax over its own list ("list") or over the union of the batch's lists ("batch")."""
    if scope == "list":
        logits = (users.unsqueeze(1) * model.item_vectors(items)).sum(-1) / model.temperature      # [B, K]
        logits = logits.masked_fill(items == 0, -torch.inf)
        target = probs
    else:
        candidates, inverse = torch.unique(items, return_inverse=True)           # [C], [B, K]
        logits = model.logits(users, model.item_vectors(candidates))            # [B, C]
        logits = logits.masked_fill((candidates == 0).unsqueeze(0), -torch.inf)
        target = torch.zeros_like(logits).scatter_add_(1, inverse, probs)
    log_p = torch.log_softmax(logits, dim=1)
    # 0 * -inf would be NaN: slots the teacher gives no mass contribute nothing.
    return -(target * log_p.masked_fill(target == 0, 0.0)).sum(1).mean()
