"""Behaviour-aware fusion reranker (issue 19): each HISTORY token also carries its event type.

`history_types` [B, L] is aligned with `history` (left-padded, newest last): event-type indices 1..K, 0 = padding or
a type unseen in training (its vector is fixed at zero, so unknown types add nothing and the module then equals the
plain FusionRanker with the same weights). Candidates have no event type (they are what the user might do next).

A subclass, so the plain FusionRanker's state_dict and `tapestry.inference.fusion_ranker` stay as they were. Trained
by `fusion` with `behaviour=True` (tapestry.training.fusion) and served by the rerank stage, which reads HISTORY_TYPES.
"""
from __future__ import annotations

import torch
from torch import nn

from tapestry.models.ranking.fusion import FusionRanker, masked_mean


class BehaviourFusionRanker(FusionRanker):
    def __init__(self, num_items: int, num_event_types: int, event_types: list[str] | None = None, **kwargs):
        super().__init__(num_items, **kwargs)
        if num_event_types < 1:
            raise ValueError(f"num_event_types must be >= 1, got {num_event_types}")
        self.init_args["num_event_types"] = num_event_types
        self.num_event_types = num_event_types
        # The names of types 1..K, so a served file says which vocabulary its indices mean (the export checks it
        # against the user encoder's).
        self.event_types = [str(t) for t in event_types] if event_types is not None else None
        if self.event_types is not None:
            self.init_args["event_types"] = list(self.event_types)
        self.event_emb = nn.Embedding(num_event_types + 1, self.dim, padding_idx=0)
        nn.init.normal_(self.event_emb.weight, std=0.1 * self.dim ** -0.5)
        with torch.no_grad():
            self.event_emb.weight[0].zero_()

    def typed_history_tokens(self, history: torch.Tensor, history_types: torch.Tensor):
        """(tokens, real mask) as `history_tokens`, plus each slot's event-type vector."""
        if history_types.shape != history.shape:
            raise ValueError(f"history_types has shape {tuple(history_types.shape)}, expected history's "
                             f"{tuple(history.shape)}")
        known = (history_types > 0) & (history_types <= self.num_event_types)
        types = torch.where(known, history_types, torch.zeros_like(history_types))[:, -self.max_history:]
        tokens, real = self.history_tokens(history)
        return tokens + self.event_emb(types), real

    def forward(self, cands: torch.Tensor, dense: torch.Tensor, history: torch.Tensor, user_attrs: torch.Tensor,
                history_types: torch.Tensor | None = None) -> torch.Tensor:
        if history_types is None:
            history_types = torch.zeros_like(history)
        cand = self.items(cands)
        tokens, real = self.typed_history_tokens(history, history_types)
        attended = self.attend(cand, tokens, real)
        user = masked_mean(self.user_attr_emb(user_attrs), user_attrs > 0).unsqueeze(1).expand_as(cand)
        x = torch.cat([cand, attended, cand * attended, user, dense], dim=-1)
        return self.mlp(x).squeeze(-1) + self.wide(dense).squeeze(-1)
