"""Full-ranking leave-one-out evaluation: every user's held-out item is ranked against the whole catalogue.

Protocol: for split "valid" the model sees the train history; for "test" it sees train + valid (the valid item
is then known, as it would be in production). The history items and index 0 (padding / OOV) are excluded from
the ranking, mirroring `recommend(exclude_seen=True)`. No negative sampling: sampled metrics are known to
mis-rank models (Krichene & Rendle 2020).
"""
from __future__ import annotations

import numpy as np
import torch

from tapestry.training.metrics import mrr, ndcg_at_k, ranks_from_scores, recall_at_k

HISTORY_SPLITS = {"valid": ("train",), "test": ("train", "valid")}


def evaluation_ranks(model, data, split: str = "test", batch_size: int = 256, histories=None) -> np.ndarray:
    """0-based pessimistic rank of each evaluated user's target (users in `data.<split>` order)."""
    if split not in HISTORY_SPLITS:
        raise ValueError(f"split must be one of {sorted(HISTORY_SPLITS)}, got {split!r}")
    frame = getattr(data, split)
    users = frame["user_idx"].to_numpy()
    targets = frame["item_idx"].to_numpy()
    if histories is None:
        histories = data.sequences(HISTORY_SPLITS[split])
    out = []
    for start in range(0, len(users), batch_size):
        u = users[start:start + batch_size]
        hist = [histories[x] for x in u]
        scores = model.score(u, hist)
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        rows = np.repeat(np.arange(len(u)), [len(h) for h in hist])
        cols = np.concatenate(hist) if hist else np.zeros(0, dtype=np.int64)
        mask[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)] = True
        mask[:, 0] = True
        out.append(ranks_from_scores(scores, targets[start:start + batch_size], mask).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def metrics_from_ranks(ranks: np.ndarray, k: int = 10) -> dict:
    return {f"recall@{k}": recall_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k), "mrr": mrr(ranks),
            "num_users": int(len(ranks))}


def evaluate(model, data, split: str = "test", k: int = 10, batch_size: int = 256) -> dict:
    """{"recall@k", "ndcg@k", "mrr", "num_users"} for `model` on `data`'s `split` ("valid" or "test")."""
    return metrics_from_ranks(evaluation_ranks(model, data, split, batch_size), k)
