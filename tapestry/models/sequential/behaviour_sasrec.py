"""Behaviour-aware SASRec (issue 19): each position's input is its item vector PLUS an event-type vector.

Events carry a behaviour (ML-1M with `like_at`: "like" / "view"; e-commerce: view / click / purchase). The same
item means something different after a purchase than after a glance, so the encoder reads a second sequence
`events` [B, L] aligned with `seqs`: indices into a small event-type vocabulary, 0 = padding or a type unseen in
training (its vector is fixed at zero, so an unknown type adds nothing). The output table stays the item table:
scores, FAISS and the next-item loss are unchanged.

Per-behaviour head: `type_head` predicts the NEXT event's type from each position's hidden state (an auxiliary
cross-entropy the trainer weights with `behaviour_head`). Chosen over separate next-item logits per behaviour
because it is defined for any number of types without splitting the (already sparse) targets per type, and it
asks the encoder to keep behaviour information in the user vector. It is not used for ranking.

A subclass of SASRec (not an option inside it) so a plain SASRec's state_dict and TorchScript stay as they were.
"""
from __future__ import annotations

import torch
from torch import nn

from tapestry.models.sequential.sasrec import SASRec


class BehaviourSASRec(SASRec):
    def __init__(self, num_items: int, num_event_types: int, hidden_dim: int = 64, num_blocks: int = 2,
                 num_heads: int = 1, max_len: int = 100, dropout: float = 0.2, side_dim: int = 0,
                 fusion: str = "add", event_types: list[str] | None = None):
        super().__init__(num_items, hidden_dim, num_blocks, num_heads, max_len, dropout, side_dim, fusion)
        if num_event_types < 1:
            raise ValueError(f"num_event_types must be >= 1, got {num_event_types}")
        if event_types is not None and len(event_types) > num_event_types:
            raise ValueError(f"{len(event_types)} event-type names for {num_event_types} event types")
        self.init_args["num_event_types"] = num_event_types
        self.num_event_types = num_event_types
        # The names of types 1..K (name event_types[i] is index i + 1), kept in init_args so a served file says
        # which vocabulary its indices mean (the serving stage maps request names with it).
        self.event_types = [str(t) for t in event_types] if event_types is not None else None
        if self.event_types is not None:
            self.init_args["event_types"] = list(self.event_types)
        # Row 0 = padding / unknown type: zero and never updated (padding_idx).
        self.event_emb = nn.Embedding(num_event_types + 1, hidden_dim, padding_idx=0)
        nn.init.xavier_normal_(self.event_emb.weight)
        with torch.no_grad():
            self.event_emb.weight[0].zero_()
        self.type_head = nn.Linear(hidden_dim, num_event_types + 1)

    def _check(self, seqs: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        if events.shape != seqs.shape:
            raise ValueError(f"events has shape {tuple(events.shape)}, expected seqs' {tuple(seqs.shape)}")
        # A type index outside the vocabulary is unknown (0), never an out-of-range lookup.
        return torch.where((events > 0) & (events <= self.num_event_types), events, torch.zeros_like(events))

    def _behaviour_hidden(self, seqs: torch.Tensor, events: torch.Tensor, last_only: bool) -> torch.Tensor:
        events = self._check(seqs, events)[:, -self.max_len:]
        seqs = seqs[:, -self.max_len:]
        tokens = self.item_rows(seqs) * self.scale + self.event_emb(events)
        return self._blocks(seqs, tokens, last_only)

    def forward(self, seqs: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """seqs, events [B, L] (left-padded, aligned) -> hidden states [B, L, D]; without `events` every type is
        unknown (the item-only input)."""
        return self._behaviour_hidden(seqs, torch.zeros_like(seqs) if events is None else events, False)

    def encode(self, seqs: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """The user vector [B, D] at the last position."""
        return self._behaviour_hidden(seqs, torch.zeros_like(seqs) if events is None else events, True)[:, -1, :]

    def next_type_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] hidden states -> [..., num_event_types + 1] logits of the next event's type (column 0,
        padding/unknown, is never a target)."""
        return self.type_head(hidden)
