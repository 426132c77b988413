"""The feature reranker at request time: a listwise linear model over (user, candidate) features.

Features per candidate (all cheap, computed identically offline and in Triton's rerank stage):
  retrieval_score   the retriever's score, z-normalised within the request (scale-free across users)
  log_popularity    log(1 + train count), standardised over the catalogue
  entity_affinity   cosine(user's entity profile from their history, item's entity vector) — genres, brands, ...
  demographic_lift  mean over the user's attributes (age group, occupation, ...) of log P(item|attr)/P(item)
It can only reorder what retrieval returns. The tables are built and the weights fitted by
tapestry.training.reranker (on the validation split); this module only reads them.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tapestry.artifacts import atomic_write_bytes

FEATURES = ("retrieval_score", "log_popularity", "entity_affinity", "demographic_lift")


@dataclass
class RerankTables:
    item_entity: np.ndarray      # [num_items, E] L2-normalised multi-hot of item entity values
    log_pop: np.ndarray          # [num_items] standardised log popularity
    demo_lift: np.ndarray        # [A, num_items] log-lift of each user attribute value for each item
    user_attrs: np.ndarray       # [num_users, A] multi-hot of user attribute values
    attr_names: list[str]        # "type=value" for each of the A attributes


class FeatureReranker:
    """The reranker protocol (tapestry.inference.rerankers.Reranker): `features` per request, `score_many` per
    dynamic batch; it reads the SEEN set (order does not matter to it)."""

    ordered_history = False

    def __init__(self, tables: RerankTables, weights: np.ndarray | None = None):
        self.tables = tables
        self.weights = np.asarray(weights if weights is not None else [1.0, 0.0, 0.0, 0.0], dtype=np.float32)

    @property
    def num_user_attrs(self) -> int:
        return int(self.tables.user_attrs.shape[1])

    def features(self, candidates: np.ndarray, retrieval_scores: np.ndarray, history: np.ndarray,
                 user_attrs: np.ndarray) -> np.ndarray:
        """[N, len(FEATURES)] float32 for one user. `history` may contain 0 padding; `user_attrs` is multi-hot."""
        t = self.tables
        s = retrieval_scores.astype(np.float32)
        z = (s - s.mean()) / (s.std() + 1e-6) if s.size > 1 else np.zeros_like(s)
        hist = history[history > 0]
        if hist.size:
            profile = t.item_entity[hist].sum(axis=0)
            profile /= max(float(np.linalg.norm(profile)), 1e-12)
            affinity = t.item_entity[candidates] @ profile
        else:
            affinity = np.zeros(len(candidates), dtype=np.float32)
        attrs = np.flatnonzero(user_attrs > 0)
        lift = t.demo_lift[attrs][:, candidates].mean(axis=0) if attrs.size else np.zeros(len(candidates), np.float32)
        return np.stack([z, t.log_pop[candidates], affinity, lift], axis=1).astype(np.float32)

    def score(self, features: np.ndarray) -> np.ndarray:
        return (features @ self.weights).astype(np.float32)

    def score_many(self, features: list[np.ndarray]) -> list[np.ndarray]:
        """`score` of each user's features (the rerank stage's batched call; one matmul for all of them)."""
        flat = self.score(np.concatenate(features)) if features else np.zeros(0, np.float32)
        return np.split(flat, np.cumsum([len(f) for f in features])[:-1])

    def save(self, path: Path) -> None:
        t = self.tables
        buf = io.BytesIO()
        np.savez(buf, weights=self.weights, item_entity=t.item_entity, log_pop=t.log_pop, demo_lift=t.demo_lift,
                 user_attrs=t.user_attrs, attr_names=np.array(t.attr_names, dtype=str))
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "FeatureReranker":
        z = np.load(path)
        tables = RerankTables(z["item_entity"], z["log_pop"], z["demo_lift"], z["user_attrs"],
                              [str(a) for a in z["attr_names"]])
        return cls(tables, z["weights"])
