"""Minibatches of the neighbour-sampled GNNs (sage, rsage, hgt) as steps of the shared minibatch loop.

    steps = LinkSteps(loader, positives, num_items, num_negatives, seed)
    shuffled_epoch(module, opt, steps.num_positives, batch_size, lambda rows: loss_of(steps.batch(rows), rows))

The loop (tapestry.training.base.shuffled_epoch) draws the epoch's order of the positive edges and hands each step
its rows; `batch(rows)` samples their subgraph with PyG's LinkNeighborLoader machinery (the loader's own sampler,
`collate_fn` and `filter_fn`: the batch fields of tapestry.training.sampler_contract). Under torchrun
(tapestry.training.data_parallel) `rows` are this rank's share of the global batch, so each rank samples only its
share's neighbourhoods, and DDP averages the gradients.

What makes N processes take the step one process takes with the whole global batch:
- the triplet negatives are drawn HERE for the whole global batch, from a generator of their own (every rank draws
  alike), and each rank keeps its share's rows (`GivenNegatives` hands them to the sampler). The neighbour sampler
  may use torch's global RNG as much as its share needs without moving them;
- the supervision edges removed from a step's subgraph are the global batch's (`global_targets`), not the share's;
- candidate sets built from the whole batch (SAGE's "every seed item") are gathered over the ranks
  (data_parallel.gather_unique).
With the full neighbourhood sampled (num_neighbors = -1 per hop, or a fan-out above every degree) and no dropout,
a seed's L-hop computation is the same in any subgraph that holds it, so the steps are equal within float rounding
(tests/training/test_data_parallel.py). With a smaller fan-out each process samples its own neighbours: alike in
distribution. HGT's "softmax" loss scores against every item of a step's subgraph; under DDP that is each rank's
share's subgraph (a smaller candidate set), so only its "sampled" loss is step-for-step equal.
"""
from __future__ import annotations

import torch
from torch_geometric.data import HeteroData
from torch_geometric.sampler import NegativeSampling

from tapestry.training import data_parallel
from tapestry.training.sampler_contract import SamplerContractError, check_batch


class GivenNegatives(NegativeSampling):
    """Triplet negative sampling whose "draw" returns negatives drawn beforehand (this rank's share of the global
    batch's), K per positive in positive order (PyG reads draw[i * K:(i + 1) * K] as positive i's)."""

    def __init__(self, values: torch.Tensor, amount: int):
        super().__init__("triplet", amount)
        self.values = values

    def sample(self, num_samples, endpoint, num_nodes=None) -> torch.Tensor:
        if num_samples != len(self.values):
            raise RuntimeError(f"the sampler asked for {num_samples} negatives, {len(self.values)} were drawn")
        return self.values


class LinkSteps:
    """Sampled batches of a PyG LinkNeighborLoader (built with `edge_label_index` = the positives, triplet
    negatives), one per step of the shared minibatch loop; see the module docstring."""

    def __init__(self, loader, positives: torch.Tensor, num_items: int, num_negatives: int, seed: int,
                 contract: dict | None = None):
        self.loader, self.positives = loader, positives
        self.num_items, self.num_negatives = num_items, num_negatives
        self.weight = torch.ones(num_items)
        self.weight[0] = 0.0                               # never the padding row as a negative
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.contract, self._checked = contract, contract is None

    @property
    def num_positives(self) -> int:
        return int(self.positives.size(1))

    def batch(self, rows: torch.Tensor) -> HeteroData:
        """The sampled subgraph of positives `rows` (this rank's share of the step) with their negatives."""
        share, total = data_parallel.share_of(rows)
        drawn = torch.multinomial(self.weight, total * self.num_negatives, replacement=True,
                                  generator=self.generator)
        mine = drawn.view(total, self.num_negatives)[share].reshape(-1)
        self.loader.neg_sampling = GivenNegatives(mine, self.num_negatives)
        out = self.loader.collate_fn(rows)
        batch = out if self.loader.filter_per_worker else self.loader.filter_fn(out)
        if not self._checked:                              # the first batch of a fit, as ContractLoader does
            try:
                check_batch(batch, **self.contract)
            except SamplerContractError as e:
                raise SamplerContractError(f"the pyg sampler broke the batch contract: {e}") from e
            self._checked = True
        return batch

    def global_targets(self, rows: torch.Tensor) -> torch.Tensor:
        """user * num_items + item of every positive of the global batch `rows` belong to: the supervision pairs
        removed from the step's subgraph (on every rank, so a share's subgraph loses what the whole batch's does)."""
        pairs = self.positives[:, data_parallel.global_rows(rows)]
        return pairs[0] * self.num_items + pairs[1]
