"""PinSage-style item neighbourhoods from random walks on the bipartite user-item graph (issue 19 item 4).

    hoods = walk_neighbourhoods(user_item, num_users, num_items, WalkConfig(), seed=0)
    hoods.neighbours[i], hoods.weights[i]     # the T items most visited from item i, visit share (sums to 1)
    hoods.hard[i]                             # items at visit ranks [lo, hi): PinSage's "hard" negatives

A walk starts at an item and makes `length` item->user->item hops, each step to a uniformly drawn neighbour
(vectorised over all walks at once through the CSR of both directions: no per-walk Python loop). Every item a walk
lands on counts one visit for its start item (the start item itself does not). Ranking the visited items by count
gives the neighbourhood (top T, importance = count / sum of the top T counts) and the hard-negative window
(ranks lo..hi-1: related enough to be confusable, rarely the true next item). Ties break by item index, so the
result is a function of (graph, config, seed) alone.

Items without edges get no neighbourhood (index 0 = padding, weight 0): they pool nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class WalkConfig:
    length: int = 3              # item->user->item hops per walk
    walks_per_item: int = 100
    top_t: int = 10              # neighbourhood size
    hard_window: tuple[int, int] = (100, 300)   # visit ranks [lo, hi) kept as hard negatives


@dataclass
class Neighbourhoods:
    neighbours: torch.Tensor     # [num_items, T] long, 0 = none
    weights: torch.Tensor        # [num_items, T] float, rows sum to 1 (0 for items without walks)
    hard: torch.Tensor           # [num_items, hi - lo] long, 0 = none


def _csr(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(src, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return indptr, dst[order]


def _step(at: np.ndarray, indptr: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniform step from each node of `at` (every node of `at` has at least one neighbour)."""
    degree = indptr[at + 1] - indptr[at]
    return targets[indptr[at] + (rng.random(len(at)) * degree).astype(np.int64)]


def walk_visits(user_item: torch.Tensor, num_users: int, num_items: int, length: int, walks_per_item: int,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start item, visited item, count) of every pair a walk produced, sorted by start then count descending
    then visited item."""
    if length < 1 or walks_per_item < 1:
        raise ValueError(f"walks need length >= 1 and walks_per_item >= 1, got {length}, {walks_per_item}")
    users, items = (user_item[0].cpu().numpy().astype(np.int64), user_item[1].cpu().numpy().astype(np.int64))
    item_ptr, item_users = _csr(items, users, num_items)
    user_ptr, user_items = _csr(users, items, num_users)
    rng = np.random.default_rng(seed)
    starts = np.repeat(np.flatnonzero(np.diff(item_ptr) > 0), walks_per_item)
    at, visits = starts, []
    for _ in range(length):       # a loop over hops (3 or so), each hop vectorised over every walk
        at = _step(_step(at, item_ptr, item_users, rng), user_ptr, user_items, rng)
        visits.append(at)
    start = np.tile(starts, length)
    visited = np.concatenate(visits) if visits else np.zeros(0, dtype=np.int64)
    keep = visited != start
    keys, counts = np.unique(start[keep] * num_items + visited[keep], return_counts=True)
    s, v = keys // num_items, keys % num_items
    order = np.lexsort((v, -counts, s))
    return s[order], v[order], counts[order]


def _ranks(start: np.ndarray) -> np.ndarray:
    """Position of each row within its start item's run (rows grouped by start)."""
    first = np.r_[0, np.flatnonzero(np.diff(start)) + 1]
    run_start = np.repeat(first, np.diff(np.r_[first, len(start)]))
    return np.arange(len(start)) - run_start


def walk_neighbourhoods(user_item: torch.Tensor, num_users: int, num_items: int, cfg: WalkConfig,
                        seed: int = 0) -> Neighbourhoods:
    """Neighbourhoods of every item from `walks_per_item` seeded walks over the (user, item) edges `user_item`."""
    lo, hi = cfg.hard_window
    if cfg.top_t < 1 or not 0 <= lo < hi:
        raise ValueError(f"walks need top_t >= 1 and a window 0 <= lo < hi, got {cfg.top_t}, {cfg.hard_window}")
    start, visited, counts = walk_visits(user_item, num_users, num_items, cfg.length, cfg.walks_per_item, seed)
    rank = _ranks(start) if len(start) else np.zeros(0, dtype=np.int64)
    neighbours = np.zeros((num_items, cfg.top_t), dtype=np.int64)
    weights = np.zeros((num_items, cfg.top_t), dtype=np.float32)
    top = rank < cfg.top_t
    neighbours[start[top], rank[top]] = visited[top]
    weights[start[top], rank[top]] = counts[top]
    weights /= np.maximum(weights.sum(1, keepdims=True), 1.0)
    hard = np.zeros((num_items, hi - lo), dtype=np.int64)
    window = (rank >= lo) & (rank < hi)
    hard[start[window], rank[window] - lo] = visited[window]
    return Neighbourhoods(torch.from_numpy(neighbours), torch.from_numpy(weights), torch.from_numpy(hard))


def hard_negatives(hard: torch.Tensor, positives: torch.Tensor, seen: torch.Tensor, num_items: int,
                   generator: torch.Generator) -> torch.Tensor:
    """One hard negative per (user, item) column of `positives` [2, B]: a uniformly drawn entry of the item's
    window that is neither padding nor an item the user has (`seen`: sorted user * num_items + item keys); 0 where
    the window holds none (the caller falls back to a uniform negative)."""
    users, items = positives
    cand = hard[items]                                                   # [B, W]
    keys = users.unsqueeze(1) * num_items + cand
    pos = torch.searchsorted(seen, keys).clamp_max(max(len(seen) - 1, 0))
    is_seen = seen[pos] == keys if len(seen) else torch.zeros_like(cand, dtype=torch.bool)
    valid = (cand > 0) & ~is_seen & (cand != items.unsqueeze(1))
    # A random valid column per row: the largest of uniform scores over the valid ones.
    score = torch.where(valid, torch.rand(cand.shape, generator=generator), torch.full(cand.shape, -1.0))
    pick = score.argmax(1)
    chosen = cand.gather(1, pick.unsqueeze(1)).squeeze(1)
    return torch.where(valid.any(1), chosen, torch.zeros_like(chosen))
