"""What the sequential encoders share (SASRec, BERT4Rec, ComiRec, SR-GNN): their module follows the serving
contract (tapestry/inference/encoders.py), so encoding histories, scoring and serving are written once here.

A subclass sets `self.model` (the nn.Module: `encode(seqs) -> [B, D] | [B, K, D]`, `item_embeddings()`) and may
override `history_window()` (BERT4Rec keeps one slot for its [MASK]). Scores are the inner products of the two, the
max over the K interest vectors for a multi-interest model: exactly what FAISS retrieval computes when served.
"""
from __future__ import annotations

import numpy as np
import torch

from tapestry.inference.padding import left_pad
from tapestry.training.base import Recommender


class SequentialRecommender(Recommender):
    model: torch.nn.Module | None = None

    def history_window(self) -> int:
        """How many of the newest history items the module reads."""
        return self.cfg.max_len

    def item_embeddings(self) -> torch.Tensor:
        return self.model.item_embeddings().detach()

    def serving_module(self) -> torch.nn.Module:
        """The module the export serves as the user (or session) encoder, in eval mode."""
        return self.model.eval()

    @torch.no_grad()
    def encode(self, histories: list[np.ndarray], batch_size: int = 512) -> torch.Tensor:
        """User vectors [B, D] (or interest vectors [B, K, D]) from item histories in time order; an empty history
        gives zeros."""
        self.model.eval()
        window = self.history_window()
        out = [self.model.encode(torch.from_numpy(left_pad(histories[s:s + batch_size], window)).to(self.device))
               for s in range(0, len(histories), batch_size)]
        if out:
            return torch.cat(out)
        empty = self.model.encode(torch.zeros(1, 1, dtype=torch.long, device=self.device))
        return empty[:0]

    @torch.no_grad()
    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        # Inductive: only the history matters (a user unseen in training is scored from their events alone).
        scores = self.encode(histories) @ self.model.item_embeddings().T
        if scores.dim() == 3:                   # [B, K, N]: an item's score is its best interest's
            scores = scores.amax(dim=1)
        return self._mask_padding(scores)
