"""Next-item training examples shared by the sequential trainers: every (history prefix -> next item) pair.

Built once over the concatenated sequences (no Python loop per example), gathered into left-padded batches on
demand, so a data set's examples never exist as one [E, max_len] matrix unless a caller asks for all of them.
"""
from __future__ import annotations

import numpy as np
import torch


class PrefixExamples:
    """Every (prefix -> next item) pair of some sequences, gathered into left-padded batches on demand."""

    def __init__(self, sequences: list[np.ndarray], max_len: int, per_user: int = 0):
        self.max_len = max_len
        flat, target_pos, starts, users = [], [], [], []
        offset = 0
        for u, seq in enumerate(sequences):
            n = len(seq)
            if n >= 2:
                first = 1 if not per_user else max(1, n - per_user)
                target_pos.append(np.arange(offset + first, offset + n))
                starts.append(np.full(n - first, offset))
                users.append(np.full(n - first, u))
                flat.append(np.asarray(seq, dtype=np.int64))
                offset += n
        cat = lambda xs: torch.from_numpy(np.concatenate(xs) if xs else np.zeros(0, np.int64))  # noqa: E731
        self.flat, self.target_pos, self.starts, self.users = cat(flat), cat(target_pos), cat(starts), cat(users)

    def __len__(self) -> int:
        return len(self.target_pos)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(seqs [B, W] left-padded prefixes, W <= max_len trimmed to the longest, targets [B], users [B])."""
        pos, start = self.target_pos[idx], self.starts[idx]
        width = int((pos - start).clamp(max=self.max_len).max()) if len(idx) else 1
        cols = pos.unsqueeze(1) - width + torch.arange(width).unsqueeze(0)           # [B, W]
        real = cols >= start.unsqueeze(1)
        seqs = torch.where(real, self.flat[cols.clamp_min(0)], torch.zeros((), dtype=torch.long))
        return seqs, self.flat[pos], self.users[idx]

    def target_log_q(self, num_items: int) -> torch.Tensor:
        """log of each item's share of the targets [num_items] (unseen items: a floor of half a count)."""
        counts = torch.bincount(self.flat[self.target_pos], minlength=num_items).double().clamp_min(0.5)
        return (counts / counts.sum()).log().float()

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(every prefix [E, W] left-padded, W <= max_len, targets [E]) in sequence then position order."""
        seqs, targets, _ = self.batch(torch.arange(len(self)))
        return seqs, targets
