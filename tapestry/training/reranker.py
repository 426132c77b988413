"""Building and fitting the feature reranker (tapestry.inference.feature_reranker serves it).

`build_rerank_tables` derives the per-item and per-attribute tables from the training split; `fit_weights` fits the
four weights on the validation split with a softmax over each user's candidates, so the reranker learns how much to
trust retrieval vs. content vs. demographics.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from tapestry.inference.feature_reranker import FEATURES, FeatureReranker, RerankTables

__all__ = ["FEATURES", "FeatureReranker", "RerankTables", "build_rerank_tables", "fit_weights"]


def _multi_hot(idx: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=np.float32)
    m[idx, cols] = 1.0
    return m


def build_rerank_tables(data, smoothing: float = 5.0) -> RerankTables:
    """The reranker's tables from the training split of `data` (an InteractionData)."""
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
    # Catalogue items without any event (ETLConfig.cold_items: items.parquet has_events false) have no popularity
    # and no co-occurrence to speak of, which is not evidence against them: they get the neutral value (the mean
    # popularity, zero lift) so the retriever's score and their entities place them. Warm items' statistics
    # exclude them, so the option leaves warm items' features unchanged.
    cold = np.zeros(n_items, dtype=bool)
    if "has_events" in data.items.columns:
        cold[data.items.filter(~pl.col("has_events"))["item_idx"].to_numpy()] = True
    warm_lp = lp[1:][~cold[1:]]
    log_pop = ((lp - warm_lp.mean()) / (warm_lp.std() + 1e-6)).astype(np.float32)
    log_pop[cold] = 0.0

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
    p_item = (pop + smoothing) / (pop.sum() + smoothing * (n_items - int(cold.sum())))
    p_item_given_attr = (counts + smoothing * p_item) / (counts.sum(axis=1, keepdims=True) + smoothing)
    demo_lift = np.log(p_item_given_attr / p_item).astype(np.float32)
    demo_lift[:, 0] = 0.0
    demo_lift[:, cold] = 0.0
    return RerankTables(item_entity.astype(np.float32), log_pop, demo_lift, user_attrs, attr_names)


def fit_weights(reranker: FeatureReranker, examples: list[tuple[np.ndarray, int]], epochs: int = 30,
                lr: float = 0.05, seed: int = 0, log: Callable[[str], None] = print) -> FeatureReranker:
    """`examples`: (features [N, F], index of the positive candidate). Listwise softmax cross-entropy."""
    if not examples:
        log("[rerank] no validation target among the candidates: keeping retrieval order")
        return reranker
    torch.manual_seed(seed)
    n_max = max(f.shape[0] for f, _ in examples)
    feats = np.zeros((len(examples), n_max, len(FEATURES)), dtype=np.float32)
    mask = np.zeros((len(examples), n_max), dtype=bool)
    for i, (f, _) in enumerate(examples):
        feats[i, : f.shape[0]], mask[i, : f.shape[0]] = f, True
    x, m = torch.from_numpy(feats), torch.from_numpy(mask)
    y = torch.tensor([p for _, p in examples])
    w = torch.tensor(reranker.weights, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(epochs * 10):
        logits = (x @ w).masked_fill(~m, float("-inf"))
        loss = torch.nn.functional.cross_entropy(logits, y) + 1e-3 * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    reranker.weights = w.detach().numpy().astype(np.float32)
    log(f"[rerank] fitted on {len(examples):,} users: loss {loss.item():.4f}, weights "
        + ", ".join(f"{n}={v:+.3f}" for n, v in zip(FEATURES, reranker.weights)))
    return reranker
