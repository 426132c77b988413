"""Event types as a second input sequence (issue 19, behaviour-aware sequence models).

The vocabulary is the sorted set of event types in the TRAINING split (index 1..K; 0 = padding or a type unseen in
training). Type sequences are built in exactly the order of `InteractionData.sequences` (timestamp, then row order),
so position t of a type sequence is the type of item t of the item sequence.

`BehaviourLog` keeps each user's full (items, types) time line, so `score(user_idx, histories)` — which receives
item histories only — can look up the types of a history that is a prefix of the user's logged events (what the
evaluation protocol passes: train, or train + valid). A history that is not such a prefix (a new user, an edited
history) gets unknown types (0): the model then reads items only, never types from another history.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import torch


def event_vocabulary(data) -> list[str]:
    """The training split's event types, sorted: type `vocab[i]` has index i + 1."""
    return sorted(str(t) for t in data.train["event_type"].drop_nulls().unique().to_list())


def type_sequences(data, splits: tuple[str, ...], vocab: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per user_idx, (item indices, event-type indices) of the given splits in time order."""
    index = {t: i + 1 for i, t in enumerate(vocab)}
    df = pl.concat([getattr(data, s).select("user_idx", "item_idx", "event_type", "timestamp") for s in splits])
    df = df.with_row_index("_order").with_columns(
        pl.col("event_type").cast(pl.String).replace_strict(index, default=0, return_dtype=pl.Int64).alias("_type"))
    grouped = df.group_by("user_idx").agg(pl.col("item_idx").sort_by("timestamp", "_order"),
                                          pl.col("_type").sort_by("timestamp", "_order"))
    items = [np.zeros(0, dtype=np.int64) for _ in range(data.num_users)]
    types = [np.zeros(0, dtype=np.int64) for _ in range(data.num_users)]
    for u, its, tys in grouped.iter_rows():
        items[u], types[u] = np.asarray(its, dtype=np.int64), np.asarray(tys, dtype=np.int64)
    return items, types


class BehaviourLog:
    """Every user's (items, types) time line, stored flat (offsets) so it saves compactly with the model."""

    def __init__(self, items: list[np.ndarray], types: list[np.ndarray]):
        self.offsets = np.zeros(len(items) + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum([len(x) for x in items])
        self.items = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
        self.types = np.concatenate(types) if types else np.zeros(0, dtype=np.int64)

    @classmethod
    def from_data(cls, data, vocab: list[str]) -> "BehaviourLog":
        splits = tuple(s for s in ("train", "valid", "test") if getattr(data, s).height)
        return cls(*type_sequences(data, splits, vocab))

    def types_for(self, user: int, history: np.ndarray) -> np.ndarray:
        """The event types of `history` when it is a prefix of `user`'s logged items, else zeros (unknown)."""
        history = np.asarray(history, dtype=np.int64)
        if 0 <= user < len(self.offsets) - 1:
            start, end = self.offsets[user], self.offsets[user + 1]
            n = len(history)
            if n <= end - start and np.array_equal(self.items[start:start + n], history):
                return self.types[start:start + n].copy()
        return np.zeros(len(history), dtype=np.int64)

    def state(self) -> dict:
        """CPU tensors: model files are loaded with torch.load(weights_only=True), which refuses numpy arrays."""
        return {k: torch.from_numpy(getattr(self, k)) for k in ("offsets", "items", "types")}

    @classmethod
    def from_state(cls, state: dict) -> "BehaviourLog":
        log = cls([], [])
        log.offsets, log.items, log.types = (np.asarray(state[k].numpy(), dtype=np.int64)
                                             for k in ("offsets", "items", "types"))
        return log
