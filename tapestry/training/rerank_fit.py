"""Fit the feature reranker on the validation split and measure the reranked pipeline on the test split.

Candidates are produced exactly as serving does: the retriever's top-N among items the user has not seen.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from tapestry.training.evaluate import metrics_from_ranks
from tapestry.training.reranker import FeatureReranker, build_rerank_tables, fit_weights


def _candidates(model, users: np.ndarray, histories: list[np.ndarray], n: int, batch_size: int = 512):
    """Yield (user, history, candidates, scores) with seen items removed, best first."""
    for start in range(0, len(users), batch_size):
        u = users[start:start + batch_size]
        h = [histories[x] for x in u]
        with torch.no_grad():
            scores = model.score(u, h).float().cpu().clone()  # score() stays on the model device
        for row, hist in enumerate(h):
            scores[row, torch.as_tensor(hist, dtype=torch.long)] = float("-inf")
        scores[:, 0] = float("-inf")
        top = torch.topk(scores, min(n, scores.shape[1] - 1), dim=1)
        for row in range(len(u)):
            finite = torch.isfinite(top.values[row])
            yield u[row], h[row], top.indices[row][finite].numpy(), top.values[row][finite].numpy()


def fit_reranker(model, data, num_candidates: int = 100, epochs: int = 30, lr: float = 0.05, seed: int = 0,
                 log: Callable[[str], None] = print) -> FeatureReranker:
    tables = build_rerank_tables(data)
    reranker = FeatureReranker(tables)
    histories = data.sequences(("train",))
    targets = dict(zip(data.valid["user_idx"].to_list(), data.valid["item_idx"].to_list()))
    users = np.array(sorted(targets), dtype=np.int64)
    examples = []
    for u, hist, cands, scores in tqdm(_candidates(model, users, histories, num_candidates),
                                       total=len(users), desc="rerank features", leave=False):
        hit = np.flatnonzero(cands == targets[int(u)])
        if hit.size:
            examples.append((reranker.features(cands, scores, hist, tables.user_attrs[u]), int(hit[0])))
    return fit_weights(reranker, examples, epochs=epochs, lr=lr, seed=seed, log=log)


def evaluate_reranked(model, reranker: FeatureReranker, data, k: int = 10, num_candidates: int = 100,
                      split: str = "test") -> dict:
    """Full-ranking metrics of retrieve(top-N unseen) -> rerank; a target outside the candidates is a miss."""
    history_splits = ("train", "valid") if split == "test" else ("train",)
    histories = data.sequences(history_splits)
    frame = getattr(data, split)
    targets = dict(zip(frame["user_idx"].to_list(), frame["item_idx"].to_list()))
    users = np.array(sorted(targets), dtype=np.int64)
    ranks = []
    for u, hist, cands, scores in _candidates(model, users, histories, num_candidates):
        final = reranker.score(reranker.features(cands, scores, hist, reranker.tables.user_attrs[u]))
        ranked = cands[np.argsort(-final, kind="stable")]
        pos = np.flatnonzero(ranked == targets[int(u)])
        # A target outside the candidates is a miss: ranked after the whole catalogue (reciprocal rank ~ 0).
        ranks.append(int(pos[0]) if pos.size else data.num_items)
    return {**metrics_from_ranks(np.asarray(ranks, dtype=np.int64), k), "num_candidates": num_candidates}
