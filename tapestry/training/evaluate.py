"""Full-ranking evaluation: every evaluated user's held-out item(s) ranked against the whole catalogue.

Protocol: for split "valid" the model sees the train history; for "test" it sees train + valid (the valid item
is then known, as it would be in production). The history items and index 0 (padding / OOV) are excluded from
the ranking, mirroring `recommend(exclude_seen=True)`. No negative sampling: sampled metrics are known to
mis-rank models (Krichene & Rendle 2020).

Two shapes of held-out data, one code path:
- leave-one-out (one target per user: ML-1M, Amazon Beauty): Recall@k = hit rate, NDCG@k = 1/log2(rank + 2),
  plus MRR and Recall@100 (the candidate generator's view); ties ranked pessimistically
  (tapestry.training.metrics). The test "overall" row adds coverage@k: distinct items in anyone's top-k over the
  catalogue (a model that shows everyone the same hits scores low however accurate it is);
- a fixed split with several targets per user (Gowalla): Recall@k = hits / |targets|, NDCG@k = DCG / ideal DCG
  over min(|targets|, k) positions, as the LightGCN / NGCF code computes them.

Slices (besides "overall"): "cold_items" = targets with at most `cold_item_max` training interactions (0 = never
seen in training); "cold_users" = users whose history has at most `cold_user_max` events. A slice's metrics
average over its (user, target) pairs for leave-one-out and over its users for multi-target data.
"""
from __future__ import annotations

import numpy as np
import torch

from tapestry.training.metrics import mrr, ndcg_at_k, ranks_from_scores, recall_at_k

HISTORY_SPLITS = {"valid": ("train",), "test": ("train", "valid")}
COLD_ITEM_MAX = 5       # training interactions
COLD_USER_MAX = 5       # history events


def _check_split(split: str) -> None:
    if split not in HISTORY_SPLITS:
        raise ValueError(f"split must be one of {sorted(HISTORY_SPLITS)}, got {split!r}")


def _history_mask(scores: torch.Tensor, hist: list[np.ndarray]) -> torch.Tensor:
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    rows = np.repeat(np.arange(len(hist)), [len(h) for h in hist])
    cols = np.concatenate(hist) if hist else np.zeros(0, dtype=np.int64)
    mask[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device, dtype=torch.long)] = True
    mask[:, 0] = True
    return mask


def evaluation_ranks(model, data, split: str = "test", batch_size: int = 256, histories=None,
                     top_k: int | None = None):
    """0-based pessimistic rank of each row's target (rows in `data.<split>` order; one target per row).

    With `top_k`, also the set of items that appear in any row's top-k list (for coverage): (ranks, items).
    """
    _check_split(split)
    frame = getattr(data, split)
    users = frame["user_idx"].to_numpy()
    targets = frame["item_idx"].to_numpy()
    if histories is None:
        histories = data.sequences(HISTORY_SPLITS[split])
    out, recommended = [], set()
    for start in range(0, len(users), batch_size):
        u = users[start:start + batch_size]
        hist = [histories[x] for x in u]
        scores = model.score(u, hist)
        mask = _history_mask(scores, hist)
        out.append(ranks_from_scores(scores, targets[start:start + batch_size], mask).cpu().numpy())
        if top_k:
            recommended.update(_top_items(scores, mask, top_k))
    ranks = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
    return (ranks, recommended) if top_k else ranks


def _top_items(scores: torch.Tensor, mask: torch.Tensor, k: int) -> set[int]:
    """Distinct items in the rows' top-k (unseen, finite scores only)."""
    masked = scores.float().masked_fill(mask, -torch.inf)
    top = torch.topk(masked, min(k, masked.shape[1]), dim=1)
    return set(top.indices[torch.isfinite(top.values)].cpu().tolist())


def coverage(recommended: set[int], num_items: int) -> float:
    """Catalogue coverage: distinct items recommended in anyone's top-k / real items (index 0 is padding)."""
    return len(recommended) / max(num_items - 1, 1)


RETRIEVAL_K = 100      # Recall@100: what a candidate generator must get into the reranker's list


def metrics_from_ranks(ranks: np.ndarray, k: int = 10) -> dict:
    return {f"recall@{k}": recall_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k), "mrr": mrr(ranks),
            f"recall@{RETRIEVAL_K}": recall_at_k(ranks, RETRIEVAL_K), "num_users": int(len(ranks))}


def multi_target_metrics(model, data, split: str = "test", k: int = 20, batch_size: int = 256,
                         histories=None, users: np.ndarray | None = None) -> dict:
    """Recall@k / NDCG@k over users with several held-out items each (the LightGCN protocol)."""
    _, recalls, ndcgs = _multi_target_per_user(model, data, split, k, batch_size, histories, users)
    n = len(recalls)
    return {f"recall@{k}": float(np.mean(recalls)) if n else 0.0, f"ndcg@{k}": float(np.mean(ndcgs)) if n else 0.0,
            "num_users": n}


def _multi_target_per_user(model, data, split: str, k: int, batch_size: int = 256, histories=None,
                           users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, Recall@k, NDCG@k) per evaluated user of a multi-target split."""
    _check_split(split)
    frame = getattr(data, split)
    grouped = frame.group_by("user_idx").agg("item_idx").sort("user_idx")
    all_users = grouped["user_idx"].to_numpy()
    target_lists = grouped["item_idx"].to_list()
    if users is not None:
        keep = np.isin(all_users, users)
        all_users = all_users[keep]
        target_lists = [t for t, kp in zip(target_lists, keep) if kp]
    if histories is None:
        histories = data.sequences(HISTORY_SPLITS[split])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for start in range(0, len(all_users), batch_size):
        u = all_users[start:start + batch_size]
        hist = [histories[x] for x in u]
        scores = model.score(u, hist).float()
        scores = scores.masked_fill(_history_mask(scores, hist), -torch.inf)
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.cpu().numpy()
        for row, targets in zip(top, target_lists[start:start + batch_size]):
            hits = np.isin(row, np.asarray(targets)).astype(np.float64)
            recalls.append(hits.sum() / len(targets))
            ndcgs.append((hits * discounts[:len(hits)]).sum() / discounts[:min(len(targets), k)].sum())
    return all_users, np.asarray(recalls, np.float64), np.asarray(ndcgs, np.float64)


def per_user_metrics(model, data, split: str = "test", k: int = 10, batch_size: int = 256) -> dict[str, np.ndarray]:
    """{"users", "recall@k", "ndcg@k"}: one value per evaluated user (users sorted), for paired tests between
    models. Their means are `evaluate`'s numbers."""
    if is_multi_target(data, split):
        users, recalls, ndcgs = _multi_target_per_user(model, data, split, k, batch_size)
    else:
        frame = getattr(data, split)
        ranks = evaluation_ranks(model, data, split, batch_size).astype(np.float64)
        order = np.argsort(frame["user_idx"].to_numpy(), kind="stable")
        users, ranks = frame["user_idx"].to_numpy()[order], ranks[order]
        recalls = (ranks < k).astype(np.float64)
        ndcgs = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return {"users": np.asarray(users), f"recall@{k}": recalls, f"ndcg@{k}": ndcgs}


def is_multi_target(data, split: str = "test") -> bool:
    frame = getattr(data, split)
    return frame.height > frame["user_idx"].n_unique()


def evaluate(model, data, split: str = "test", k: int = 10, batch_size: int = 256) -> dict:
    """Overall metrics for `model` on `data`'s `split`: {"recall@k", "ndcg@k", ["mrr"], "num_users"}."""
    if is_multi_target(data, split):
        return multi_target_metrics(model, data, split, k, batch_size)
    return metrics_from_ranks(evaluation_ranks(model, data, split, batch_size), k)


def evaluate_slices(model, data, split: str = "test", k: int = 10, batch_size: int = 256,
                    cold_item_max: int = COLD_ITEM_MAX, cold_user_max: int = COLD_USER_MAX) -> dict:
    """{"overall": {...}, "cold_items": {...}, "cold_users": {...}}, each with the metrics of `evaluate`."""
    _check_split(split)
    histories = data.sequences(HISTORY_SPLITS[split])
    frame = getattr(data, split)
    users = frame["user_idx"].to_numpy()
    hist_len = np.array([len(h) for h in histories])
    popularity = data.item_popularity()
    if is_multi_target(data, split):
        overall = multi_target_metrics(model, data, split, k, batch_size, histories)
        cold_user_ids = np.unique(users[hist_len[users] <= cold_user_max])
        # A user is in the cold-item slice when one of their targets is cold; scored on all their targets.
        cold_item_users = np.unique(users[popularity[frame["item_idx"].to_numpy()] <= cold_item_max])
        return {"overall": overall,
                "cold_items": multi_target_metrics(model, data, split, k, batch_size, histories, cold_item_users),
                "cold_users": multi_target_metrics(model, data, split, k, batch_size, histories, cold_user_ids)}
    ranks, recommended = evaluation_ranks(model, data, split, batch_size, histories, top_k=k)
    targets = frame["item_idx"].to_numpy()
    return {"overall": {**metrics_from_ranks(ranks, k), f"coverage@{k}": coverage(recommended, data.num_items)},
            "cold_items": metrics_from_ranks(ranks[popularity[targets] <= cold_item_max], k),
            "cold_users": metrics_from_ranks(ranks[hist_len[users] <= cold_user_max], k)}
