"""Most-popular items: the baseline every learned model must beat, and the cold-start fallback in serving."""
from __future__ import annotations

import numpy as np
import torch

from tapestry.training.base import Recommender


class PopularityRecommender(Recommender):
    """Scores every user alike by the number of training interactions per item."""
    parallelism = "closed_form"     # counts: nothing to distribute (fitted once with --distributed N)

    def __init__(self, device: str = "auto", progress: bool | None = None):
        super().__init__(device=device, progress=progress)
        self.counts: torch.Tensor | None = None

    def fit(self, data, graph=None) -> "PopularityRecommender":
        self.num_items = data.num_items
        self.counts = torch.as_tensor(data.item_popularity(), dtype=torch.float32, device=self.device)
        return self

    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        scores = self.counts.unsqueeze(0).repeat(len(user_idx), 1)
        return self._mask_padding(scores)

    def _get_state(self):
        return {"num_items": self.num_items, "counts": self.counts.cpu()}

    def _set_state(self, state):
        self.num_items = int(state["num_items"])
        self.counts = state["counts"].to(self.device)
