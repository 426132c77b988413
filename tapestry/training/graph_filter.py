"""The closed-form graph filter (tapestry.models.graph.graph_filter) as a Recommender, a candidate source and a
feature.

Fitting is one normalisation and one truncated SVD of the train interactions: no epochs, no gradients, no
random negatives (minutes on 2 cores for Gowalla's 30k x 41k; see benchmarks/graph_filter.py). Scoring reads
only the item signal built from a history, never a stored user row, so the same fitted filter serves:
- `score` / `recommend`: the user's history (train, + valid at test time) as the signal;
- `similar_items`: item-to-item graph recall from a few recent item ids (an anonymous session, a candidate source);
- `item_scores`: the filter's score of given candidate items (a reranker feature).
A user or an item the filter never saw is not an error: an unknown item contributes nothing to the signal and an
item without train interactions scores 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from tapestry.models.graph.graph_filter import GraphFilter, normalized_interactions, top_right_singular_vectors
from tapestry.training.base import Recommender


@dataclass
class GraphFilterConfig:
    """Defaults chosen on a validation split carved from Gowalla's train (benchmarks/graph_filter.py)."""
    num_factors: int = 256             # k: rank of the ideal low-pass (top-k singular vectors of R~)
    ideal_weight: float = 0.05         # alpha: weight of the ideal low-pass beside the polynomial filter
    sharpen: float = 0.6               # s in h(l) = l - s l^2: > 0 damps the filter's strongest directions (BSPM)
    degree_power: float = 0.0          # b: the polynomial filter as D^-b h(P~) D^b (ChebyCF's degree normalisation)
    ideal_degree_power: float = 0.5    # c: the ideal low-pass as D^-c V V^T D^c (GF-CF's 1/2)
    popularity_power: float = 0.15     # d: scores x D^d; > 0 favours popular items
    recency_decay: float = 1.0         # weight of the j-th most recent history item = decay^j; 1 = the plain set
    svd_solver: str = "randomized"     # "randomized" (torch.svd_lowrank, seconds) or "arpack" (scipy svds, exact)
    svd_iterations: int = 8            # power iterations of the randomized SVD (more = closer to exact)
    seed: int = 0                      # the randomized SVD's start

    def coefficients(self) -> tuple[float, ...]:
        """h's coefficients c_1..c_J of l^1..l^J."""
        return (1.0, -self.sharpen) if self.sharpen else (1.0,)


def item_signals(item_lists: list[np.ndarray], num_items: int, recency_decay: float = 1.0) -> np.ndarray:
    """[B, items] float32: 1 per distinct known item of each list (recency_decay < 1: decay^j for the j-th most
    recent, a repeated item counting at its latest position); ids outside 1..items-1 are ignored."""
    x = np.zeros((len(item_lists), num_items), dtype=np.float32)
    for row, items in enumerate(item_lists):
        items = np.asarray(items, dtype=np.int64)
        weights = recency_decay ** np.arange(len(items) - 1, -1, -1, dtype=np.float64)
        keep = (items > 0) & (items < num_items)
        np.maximum.at(x[row], items[keep], weights[keep].astype(np.float32))
    return x


class GraphFilterRecommender(Recommender):
    Config = GraphFilterConfig
    parallelism = "closed_form"     # training-free: nothing to distribute (fitted once with --distributed N)

    def __init__(self, config: GraphFilterConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        if not 0.0 < self.cfg.recency_decay <= 1.0:
            raise ValueError(f"recency_decay must be in (0, 1], got {self.cfg.recency_decay}")
        if self.cfg.svd_solver not in ("randomized", "arpack"):
            raise ValueError(f"svd_solver must be 'randomized' or 'arpack', got {self.cfg.svd_solver!r}")
        self.filter: GraphFilter | None = None
        self._state: dict | None = None

    # ---- fit ---------------------------------------------------------------------------------------------------
    def fit(self, data, graph=None) -> "GraphFilterRecommender":
        train = data.train
        interactions = sp.csr_matrix(
            (np.ones(train.height, dtype=np.float32), (train["user_idx"].to_numpy(), train["item_idx"].to_numpy())),
            shape=(data.num_users, data.num_items))
        return self.fit_matrix(interactions)

    def fit_matrix(self, interactions: sp.spmatrix) -> "GraphFilterRecommender":
        """Fit on a [users, items] interaction matrix (item column 0 = padding, left empty)."""
        c = self.cfg
        norm, degree = normalized_interactions(interactions)
        factors = top_right_singular_vectors(norm, c.num_factors, c.svd_solver, c.seed, iterations=c.svd_iterations)
        self._build(norm, degree, factors)
        return self

    def _build(self, norm: sp.csr_matrix, degree: np.ndarray, factors: torch.Tensor) -> None:
        c = self.cfg
        self.num_items = norm.shape[1]
        self.filter = GraphFilter(norm, degree, factors, c.coefficients(), c.ideal_weight, c.degree_power,
                                  c.ideal_degree_power, c.popularity_power, device=self.device)
        self._state = {"norm": norm, "degree": degree}

    # ---- scoring -----------------------------------------------------------------------------------------------
    def signals(self, item_lists: list[np.ndarray]) -> torch.Tensor:
        """[B, items] item signals of `item_signals`, on the model's device."""
        return torch.from_numpy(item_signals(item_lists, self.num_items, self.cfg.recency_decay)).to(self.device)

    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        # Inductive in the history: user_idx is not read, a history is all the filter needs.
        return self._mask_padding(self.filter(self.signals(histories)))

    def similar_items(self, recent_items: list[np.ndarray], k: int = 100,
                      exclude_given: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Item-to-item graph recall: top-k (items [B, k], scores [B, k]) for each list of recent item ids, best
        first. Candidates the signal does not reach (score exactly 0: an empty or unknown signal, no path) and the
        rows' padding come back as index 0 with score -inf, so a caller merging sources can drop them."""
        scores = self.score(np.zeros(len(recent_items), dtype=np.int64), recent_items)
        if exclude_given:
            for row, items in enumerate(recent_items):
                items = np.asarray(items, dtype=np.int64)
                items = items[(items > 0) & (items < self.num_items)]
                scores[row, torch.as_tensor(items, device=scores.device)] = -torch.inf
        top = torch.topk(scores, min(k, self.num_items), dim=1)
        dead = ~torch.isfinite(top.values) | (top.values == 0)   # exactly 0: no graph path from the signal at all
        return top.indices.masked_fill(dead, 0), top.values.masked_fill(dead, -torch.inf)

    def item_scores(self, recent_items: list[np.ndarray], candidates: np.ndarray) -> torch.Tensor:
        """The filter's score of candidate items [B, C] (index 0 = padding -> -inf) given each row's recent
        items: a per-(user, item) feature for a reranker."""
        scores = self.score(np.zeros(len(recent_items), dtype=np.int64), recent_items)
        cand = torch.as_tensor(np.asarray(candidates, dtype=np.int64), device=scores.device)
        return torch.gather(scores, 1, cand.clamp(0, self.num_items - 1))

    # ---- persistence -------------------------------------------------------------------------------------------
    def _get_state(self):
        norm = self._state["norm"]
        return {"shape": list(norm.shape), "indptr": torch.from_numpy(norm.indptr.astype(np.int64)),
                "indices": torch.from_numpy(norm.indices.astype(np.int32)),
                "values": torch.from_numpy(norm.data.astype(np.float32)),
                "degree": torch.from_numpy(self._state["degree"].astype(np.float32)),
                "factors": self.filter.factors.cpu()}

    def _set_state(self, state):
        norm = sp.csr_matrix((state["values"].numpy(), state["indices"].numpy(), state["indptr"].numpy()),
                             shape=tuple(int(s) for s in state["shape"]))
        self._build(norm, state["degree"].numpy().astype(np.float64), state["factors"])
