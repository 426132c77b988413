"""Walk hard negatives (PinSage) as steps of the shared minibatch loop: tapestry.training.link_steps.LinkSteps with
some of each positive's negatives drawn from the positive item's walk window (tapestry.graph.walks), used by
SAGERecommender when `hard_negative_ratio` > 0."""
from __future__ import annotations

import torch
from torch_geometric.data import HeteroData

from tapestry.graph.walks import hard_negatives
from tapestry.training import data_parallel
from tapestry.training.link_steps import GivenNegatives, LinkSteps


class HardNegativeSteps(LinkSteps):
    """LinkSteps whose negatives are, with probability `ratio` each, a hard negative of the positive item (an item
    at walk ranks `hard_window` that the user has not interacted with; tapestry.graph.walks.hard_negatives), else
    uniform. Drawn for the whole global batch from the steps' own generator, like LinkSteps's: DDP-equal."""

    def use_hard(self, hard: torch.Tensor, ratio: float) -> None:
        self.hard, self.ratio = hard, ratio
        self.seen = torch.unique(self.positives[0] * self.num_items + self.positives[1])   # sorted keys

    def batch(self, rows: torch.Tensor) -> HeteroData:
        share, total = data_parallel.share_of(rows)
        pairs = self.positives[:, data_parallel.global_rows(rows)]
        k = self.num_negatives
        uniform = torch.multinomial(self.weight, total * k, replacement=True, generator=self.generator)
        hard = hard_negatives(self.hard, pairs.repeat_interleave(k, dim=1), self.seen, self.num_items,
                              self.generator)
        use_hard = (torch.rand(total * k, generator=self.generator) < self.ratio) & (hard > 0)
        drawn = torch.where(use_hard, hard, uniform)
        mine = drawn.view(total, k)[share].reshape(-1)
        self.loader.neg_sampling = GivenNegatives(mine, k)
        out = self.loader.collate_fn(rows)
        return out if self.loader.filter_per_worker else self.loader.filter_fn(out)
