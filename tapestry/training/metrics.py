"""Full-ranking metrics for leave-one-out evaluation (exactly one relevant item per user).

Ranks are 0-based positions of the target among the candidate (unmasked) items. Ties are counted
PESSIMISTICALLY: every other candidate scoring >= the target is ranked ahead of it. A model that gives all items
the same score therefore gets the worst rank, never an inflated one (optimistic ties would hand a constant model a
perfect score).

A target that is not a candidate (masked, e.g. a repeat of a history item while seen items are excluded, or left
out of a ranker's short list: -inf / NaN) cannot be recommended, so it counts as a miss: it gets rank N (the number
of items), after every item. Not the number of candidates: with a list shorter than k that rank would be < k and
the miss would count as a hit.
"""
from __future__ import annotations

import numpy as np
import torch


def ranks_from_scores(scores: torch.Tensor, targets, mask: torch.Tensor | None = None) -> torch.Tensor:
    """scores [B, N], targets [B] item indices, mask [B, N] bool (True = excluded) -> ranks [B] (int64)."""
    scores = torch.as_tensor(scores)
    targets = (targets if isinstance(targets, torch.Tensor) else torch.from_numpy(np.array(targets, np.int64)))
    targets = targets.to(scores.device).long()
    candidate = ~torch.isnan(scores) & (scores != -torch.inf)     # -inf and NaN are never candidates
    if mask is not None:
        candidate = candidate & ~mask.to(scores.device)
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_score = scores[rows, targets].unsqueeze(1)
    target_ok = candidate[rows, targets]
    ahead = (candidate & (scores >= target_score)).sum(1) - target_ok.long()   # >= : pessimistic ties
    return torch.where(target_ok, ahead, torch.full_like(ahead, scores.shape[1])).long()


def _ranks(ranks) -> torch.Tensor:
    return (ranks if isinstance(ranks, torch.Tensor) else torch.from_numpy(np.array(ranks, np.float64))).double()


def recall_at_k(ranks, k: int) -> float:
    """Share of users whose target is in the top k (= HitRate@k with one target)."""
    r = _ranks(ranks)
    return float((r < k).double().mean()) if r.numel() else 0.0


def ndcg_at_k(ranks, k: int) -> float:
    """Mean 1/log2(rank + 2) over users with rank < k, else 0 (the ideal DCG of one relevant item is 1)."""
    r = _ranks(ranks)
    if not r.numel():
        return 0.0
    gain = torch.where(r < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))
    return float(gain.mean())


def mrr(ranks) -> float:
    """Mean reciprocal rank over the full ranking (not truncated at k)."""
    r = _ranks(ranks)
    return float((1.0 / (r + 1.0)).mean()) if r.numel() else 0.0
