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


class RerankedPath:
    """retrieve (the retriever's top-N unseen items) -> rerank, as a full-catalogue scorer: candidates in reranked
    order, -inf for every other item. The shared evaluation then measures exactly the served path (a target outside
    the candidates is a miss at every cut-off up to `num_candidates`; past it, MRR and Recall@100 tie such a target
    pessimistically among the other non-candidates, where evaluate_reranked puts it after the whole catalogue)."""

    def __init__(self, retriever, reranker: FeatureReranker, num_candidates: int = 100):
        self.retriever, self.reranker, self.num_candidates = retriever, reranker, num_candidates

    @torch.no_grad()
    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        attrs = self.reranker.tables.user_attrs
        table = {int(u): h for u, h in zip(user_idx, histories)}
        row = {int(u): i for i, u in enumerate(user_idx)}
        out = None
        for u, hist, cands, scores in _candidates(self.retriever, np.asarray(user_idx), table, self.num_candidates):
            ua = attrs[u] if 0 < u < len(attrs) else np.zeros(attrs.shape[1], np.float32)
            final = self.reranker.score(self.reranker.features(cands, scores, hist, ua))
            if out is None:
                out = torch.full((len(user_idx), self.reranker.tables.log_pop.shape[0]), float("-inf"))
            # Strictly decreasing by reranked position: ties in `final` keep the reranker's stable order.
            order = np.argsort(-final, kind="stable")
            out[row[int(u)], torch.from_numpy(cands[order])] = -torch.arange(len(cands), dtype=torch.float32)
        if out is None:
            out = torch.full((len(user_idx), self.reranker.tables.log_pop.shape[0]), float("-inf"))
        return out


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
