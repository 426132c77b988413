"""The fusion-transformer reranker at request time (Head B; the module: tapestry.models.ranking.fusion).

`features` turns one request (candidates, retrieval scores, time-ordered history, user-attribute multi-hot) into
what the module reads; `score_many` pads every request of a dynamic batch into one [B, N] batch and runs ONE
forward. Training (tapestry.training.fusion) builds its lists through the same `features`, so offline evaluation,
training and the Triton rerank stage compute the same numbers.

Dense features per candidate (DENSE), all roughly unit scale:
  retrieval_z      the retriever's score z-normalised within the list (scale-free across users and retrievers)
  retrieval_logp   log softmax of the retriever's scores over the list / 10: a full-softmax retriever's own
                   distribution over these candidates, sharp or flat (the z-score forgets which); the module's wide
                   term starts at 10 x this, so training starts from the retriever's ranking and learns corrections
  log_rank         log(1 + rank in retrieval order) / 5
  reciprocal_rank  1 / (1 + rank): sharp at the top, where the retriever is most trustworthy
  log_popularity   log(1 + training count), standardised over the catalogue
  cooc_last        item-item co-occurrence (cosine-normalised counts, x10) of the candidate with the newest history item
  cooc_recent      its mean over the `recent` newest history items
Ranks come from the scores (a stable sort), not from the order the candidates arrive in. Popularity and
co-occurrence are counted on the split the ranker's training lists were cut from (tapestry.training.fusion).

A behaviour-aware ranker (init_args `num_event_types`: tapestry.models.ranking.behaviour_fusion) also reads each
history item's event type (`history_types`, aligned with `history`; 0 = unknown; absent = all unknown).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from tapestry.artifacts import atomic_torch_save
from tapestry.inference.dlrm_features import cooc_block
from tapestry.models.ranking.behaviour_fusion import BehaviourFusionRanker
from tapestry.models.ranking.fusion import FusionRanker

DENSE = ("retrieval_z", "retrieval_logp", "log_rank", "reciprocal_rank", "log_popularity", "cooc_last", "cooc_recent")
LOGP = DENSE.index("retrieval_logp")
LOGP_SCALE = 10.0


@dataclass
class FusionFeatures:
    """One list: what `FusionRanker.forward` reads for one request, unpadded."""
    cands: np.ndarray        # [N] int64
    dense: np.ndarray        # [N, len(DENSE)] float32
    history: np.ndarray      # [<= max_history] int64, time order, no padding
    user_attrs: np.ndarray   # [U] int64 attribute ids (1-based; 0 is the module's padding)
    history_types: np.ndarray | None = None   # aligned with `history` (behaviour-aware rankers); None = unknown


@dataclass
class FusionBatch:
    """Lists padded into tensors: candidates right-padded with 0, histories left-padded with 0."""
    cands: torch.Tensor       # [B, N]
    dense: torch.Tensor       # [B, N, F]
    history: torch.Tensor     # [B, L]
    user_attrs: torch.Tensor  # [B, U]
    history_types: torch.Tensor | None = None   # [B, L], aligned with `history`, when a list carries types

    def __len__(self) -> int:
        return self.cands.shape[0]

    def take(self, idx) -> "FusionBatch":
        return FusionBatch(self.cands[idx], self.dense[idx], self.history[idx], self.user_attrs[idx],
                           None if self.history_types is None else self.history_types[idx])

    def model_inputs(self) -> tuple:
        """The module's positional inputs (the history types only when the lists carry them)."""
        base = (self.cands, self.dense, self.history, self.user_attrs)
        return base if self.history_types is None else (*base, self.history_types)


def collate(lists: list[FusionFeatures]) -> FusionBatch:
    b = len(lists)
    n = max((len(f.cands) for f in lists), default=1)
    length = max(max((len(f.history) for f in lists), default=0), 1)
    u = max(max((len(f.user_attrs) for f in lists), default=0), 1)
    cands = np.zeros((b, n), np.int64)
    dense = np.zeros((b, n, len(DENSE)), np.float32)
    history = np.zeros((b, length), np.int64)
    attrs = np.zeros((b, u), np.int64)
    typed = any(f.history_types is not None for f in lists)
    types = np.zeros((b, length), np.int64) if typed else None
    for i, f in enumerate(lists):
        cands[i, :len(f.cands)] = f.cands
        dense[i, :len(f.cands)] = f.dense
        if len(f.history):
            history[i, length - len(f.history):] = f.history
            if f.history_types is not None:
                types[i, length - len(f.history):] = f.history_types
        attrs[i, :len(f.user_attrs)] = f.user_attrs
    return FusionBatch(*(torch.from_numpy(a) for a in (cands, dense, history, attrs)),
                       None if types is None else torch.from_numpy(types))


def list_features(scores: np.ndarray, log_pop: np.ndarray, cands: np.ndarray, cooc: sp.csr_matrix | None = None,
                  recent: np.ndarray | None = None) -> np.ndarray:
    """[N, len(DENSE)] dense features of one list; `recent`: the newest history items, oldest first."""
    s = np.asarray(scores, np.float64)
    n = len(s)
    z = (s - s.mean()) / (s.std() + 1e-6) if n > 1 else np.zeros(n)
    logp = s - s.max() - np.log(np.exp(s - s.max()).sum()) if n else s
    rank = np.empty(n, np.float64)
    rank[np.argsort(-s, kind="stable")] = np.arange(n, dtype=np.float64)
    last, mean = np.zeros(n), np.zeros(n)
    if cooc is not None and recent is not None and len(recent) and n:
        block = cooc_block(cooc, recent, cands)
        last, mean = block[-1], block.mean(axis=0)
    return np.stack([z, logp / LOGP_SCALE, np.log1p(rank) / 5.0, 1.0 / (1.0 + rank), log_pop[cands], last * 10.0,
                     mean * 10.0], axis=1).astype(np.float32)


class FusionReranker:
    """The reranker protocol (tapestry.inference.rerankers.Reranker); reads the time-ordered HISTORY window."""

    ordered_history = True

    def __init__(self, init_args: dict, state: dict, log_pop: np.ndarray, num_user_attrs: int,
                 cooc: sp.csr_matrix | None = None, recent: int = 20):
        self.init_args = dict(init_args)
        self.cooc, self.recent = cooc, int(recent)
        behaviour = "num_event_types" in self.init_args
        self.model = (BehaviourFusionRanker if behaviour else FusionRanker)(**self.init_args)
        self.model.load_state_dict(state)
        self.model.eval()
        self.log_pop = np.asarray(log_pop, np.float32)
        self._num_user_attrs = int(num_user_attrs)

    @property
    def num_user_attrs(self) -> int:
        return self._num_user_attrs

    @property
    def max_history(self) -> int:
        return int(self.init_args["max_history"])

    @property
    def event_types(self) -> list[str] | None:
        """A behaviour-aware ranker's event-type names (name i is type index i + 1), else None."""
        return getattr(self.model, "event_types", None) if hasattr(self.model, "num_event_types") else None

    def features(self, candidates: np.ndarray, retrieval_scores: np.ndarray, history: np.ndarray,
                 user_attrs: np.ndarray, history_types: np.ndarray | None = None) -> FusionFeatures:
        """`history_types` (aligned with `history`) are kept for a behaviour-aware ranker, dropped otherwise."""
        cands = np.asarray(candidates, np.int64)
        hist = np.asarray(history, np.int64)
        real = hist > 0
        window = max(self.max_history, self.recent)
        types = None
        if self.event_types is not None:
            types = (np.zeros(len(hist), np.int64) if history_types is None
                     else np.asarray(history_types, np.int64))[real][-window:]
        hist = hist[real][-window:]
        attrs = np.flatnonzero(np.asarray(user_attrs) > 0).astype(np.int64) + 1
        dense = list_features(retrieval_scores, self.log_pop, cands, self.cooc, hist[-self.recent:])
        return FusionFeatures(cands, dense, hist, attrs, types)

    @torch.no_grad()
    def logits(self, batch: FusionBatch, chunk: int = 256) -> torch.Tensor:
        """[B, N] raw logits, -inf at padding candidates (chunked: evaluation passes thousands of lists)."""
        out = []
        for s in range(0, len(batch), chunk):
            part = batch.take(slice(s, s + chunk))
            out.append(self.model(*part.model_inputs()).masked_fill(part.cands <= 0, float("-inf")))
        return torch.cat(out) if out else torch.zeros(0, batch.cands.shape[1])

    def score_many(self, features: list[FusionFeatures]) -> list[np.ndarray]:
        """Log P(next item = candidate | this list) per request, ONE forward for the whole dynamic batch. Each
        candidate's logit is its own (the module scores candidates independently) and the softmax runs over each
        request's own candidates, so a request's answer does not depend on what it was batched with."""
        if not features:
            return []
        rows = self.logits(collate(features))
        return [torch.log_softmax(row[:len(f.cands)], 0).numpy().astype(np.float32)
                for row, f in zip(rows, features)]

    def score(self, features: FusionFeatures) -> np.ndarray:
        return self.score_many([features])[0]

    # ---- persistence (plain tensors and Python values: torch.load(weights_only=True) reads it) ---------------
    def payload(self) -> dict:
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in self.init_args.items()}
        return {"init_args": args, "state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "log_pop": torch.from_numpy(self.log_pop), "num_user_attrs": self._num_user_attrs,
                "dense": list(DENSE), "recent": self.recent,
                "cooc": None if self.cooc is None else (
                    torch.from_numpy(self.cooc.indptr.astype(np.int64)),
                    torch.from_numpy(self.cooc.indices.astype(np.int64)), torch.from_numpy(self.cooc.data),
                    list(self.cooc.shape))}

    @classmethod
    def from_payload(cls, p: dict) -> "FusionReranker":
        if list(p.get("dense", DENSE)) != list(DENSE):
            raise ValueError(f"fusion ranker file has dense features {p['dense']}, this code computes {DENSE}")
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in p["init_args"].items()}
        cooc = None
        if p.get("cooc") is not None:
            indptr, indices, data, shape = p["cooc"]
            cooc = sp.csr_matrix((data.numpy(), indices.numpy(), indptr.numpy()), shape=tuple(shape))
        return cls(args, p["state"], p["log_pop"].numpy(), int(p["num_user_attrs"]), cooc, int(p.get("recent", 20)))

    def save(self, path: Path) -> None:
        atomic_torch_save(path, self.payload())

    @classmethod
    def load(cls, path: Path) -> "FusionReranker":
        return cls.from_payload(torch.load(Path(path), map_location="cpu", weights_only=True))
