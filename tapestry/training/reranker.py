"""A feature reranker: a small listwise linear model over (user, candidate) features that use user AND item data.

Features per candidate (all cheap, all computed identically in training and in Triton's rerank model):
  retrieval_score   the retriever's score, z-normalised within the request (scale-free across users)
  log_popularity    log(1 + train count), standardised over the catalogue
  entity_affinity   cosine(user's entity profile from their history, item's entity vector) — genres, brands, ...
  demographic_lift  mean over the user's attributes (age group, occupation, ...) of log P(item|attr)/P(item)
The weights are fitted on the validation split with a softmax over each user's candidates, so the reranker learns
how much to trust retrieval vs. content vs. demographics. It can only reorder what retrieval returns.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from tapestry.artifacts import atomic_write_bytes

FEATURES = ("retrieval_score", "log_popularity", "entity_affinity", "demographic_lift")


def _multi_hot(idx: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=np.float32)
    m[idx, cols] = 1.0
    return m


@dataclass
class RerankTables:
    item_entity: np.ndarray      # [num_items, E] L2-normalised multi-hot of item entity values
    log_pop: np.ndarray          # [num_items] standardised log popularity
    demo_lift: np.ndarray        # [A, num_items] log-lift of each user attribute value for each item
    user_attrs: np.ndarray       # [num_users, A] multi-hot of user attribute values
    attr_names: list[str]        # "type=value" for each of the A attributes

    @classmethod
    def build(cls, data, smoothing: float = 5.0) -> "RerankTables":
        n_items, n_users = data.num_items, data.num_users
        ent = data.item_entities.with_columns(
            (pl.col("entity_type") + "=" + pl.col("entity_value")).alias("k"))
        ent_names = sorted(ent["k"].unique().to_list())
        ent_ix = {k: i for i, k in enumerate(ent_names)}
        item_entity = _multi_hot(ent["item_idx"].to_numpy(), np.array([ent_ix[k] for k in ent["k"]], dtype=np.int64),
                                 (n_items, max(len(ent_names), 1)))
        item_entity /= np.maximum(np.linalg.norm(item_entity, axis=1, keepdims=True), 1e-12)

        pop = data.item_popularity()
        lp = np.log1p(pop)
        log_pop = ((lp - lp[1:].mean()) / (lp[1:].std() + 1e-6)).astype(np.float32)

        ua = data.user_entities.with_columns((pl.col("entity_type") + "=" + pl.col("entity_value")).alias("k"))
        attr_names = sorted(ua["k"].unique().to_list())
        a_ix = {k: i for i, k in enumerate(attr_names)}
        user_attrs = _multi_hot(ua["user_idx"].to_numpy(), np.array([a_ix[k] for k in ua["k"]], dtype=np.int64),
                                (n_users, max(len(attr_names), 1)))
        # Counts of (attribute, item) from training interactions -> smoothed log-lift over the global rate.
        tr = data.train
        interactions = sp.csr_matrix(
            (np.ones(tr.height), (tr["user_idx"].to_numpy(), tr["item_idx"].to_numpy())), shape=(n_users, n_items))
        counts = np.asarray((sp.csr_matrix(user_attrs).T @ interactions).todense(), dtype=np.float64)
        p_item = (pop + smoothing) / (pop.sum() + smoothing * n_items)
        p_item_given_attr = (counts + smoothing * p_item) / (counts.sum(axis=1, keepdims=True) + smoothing)
        demo_lift = np.log(p_item_given_attr / p_item).astype(np.float32)
        demo_lift[:, 0] = 0.0
        return cls(item_entity.astype(np.float32), log_pop, demo_lift, user_attrs, attr_names)


class FeatureReranker:
    def __init__(self, tables: RerankTables, weights: np.ndarray | None = None):
        self.tables = tables
        self.weights = np.asarray(weights if weights is not None else [1.0, 0.0, 0.0, 0.0], dtype=np.float32)

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

    def fit(self, examples: list[tuple[np.ndarray, int]], epochs: int = 30, lr: float = 0.05, seed: int = 0,
            log: Callable[[str], None] = print) -> "FeatureReranker":
        """`examples`: (features [N, F], index of the positive candidate). Listwise softmax cross-entropy."""
        if not examples:
            log("[rerank] no validation target among the candidates: keeping retrieval order")
            return self
        torch.manual_seed(seed)
        n_max = max(f.shape[0] for f, _ in examples)
        feats = np.zeros((len(examples), n_max, len(FEATURES)), dtype=np.float32)
        mask = np.zeros((len(examples), n_max), dtype=bool)
        for i, (f, _) in enumerate(examples):
            feats[i, : f.shape[0]], mask[i, : f.shape[0]] = f, True
        x, m = torch.from_numpy(feats), torch.from_numpy(mask)
        y = torch.tensor([p for _, p in examples])
        w = torch.tensor(self.weights, requires_grad=True)
        opt = torch.optim.Adam([w], lr=lr)
        for _ in range(epochs * 10):
            logits = (x @ w).masked_fill(~m, float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, y) + 1e-3 * (w ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.weights = w.detach().numpy().astype(np.float32)
        log(f"[rerank] fitted on {len(examples):,} users: loss {loss.item():.4f}, weights "
            + ", ".join(f"{n}={v:+.3f}" for n, v in zip(FEATURES, self.weights)))
        return self

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
