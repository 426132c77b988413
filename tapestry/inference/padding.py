"""Left padding of item histories: the one layout every sequential encoder reads, in training and in serving.

A history is a time-ordered array of item indices (0 is the padding id). Encoders read [B, L] int64 batches with
the newest item in the last column, so the right edge is the same position whatever the width.
"""
from __future__ import annotations

import numpy as np
import torch


def left_pad(histories: list[np.ndarray], max_len: int, width: int | None = None) -> np.ndarray:
    """The last `max_len` items of each history, right-aligned in an int64 array [B, width] padded with 0.

    `width` defaults to the longest (capped) history, at least 1; any width gives the same model outputs.
    """
    lengths = [min(len(h), max_len) for h in histories]
    width = width or max(max(lengths, default=0), 1)
    out = np.zeros((len(histories), width), dtype=np.int64)
    for row, (h, n) in enumerate(zip(histories, lengths)):
        n = min(n, width)
        if n:
            out[row, width - n:] = np.asarray(h, dtype=np.int64)[-n:]
    return out


def left_pad_one(history: np.ndarray, max_len: int) -> np.ndarray:
    """One history as a fixed [max_len] row (the HISTORY tensor of the serving contract)."""
    return left_pad([history], max_len, width=max_len)[0]


def trim_padding(batch: torch.Tensor) -> torch.Tensor:
    """Drop the left columns that are padding in every row of a left-padded [B, L] batch: less work, identical
    outputs (the modules count positions from the right edge and mask padding)."""
    return batch[:, int((batch > 0).int().argmax(1).min()):]
