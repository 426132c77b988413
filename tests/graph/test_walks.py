"""tapestry.graph.walks: seeded walk neighbourhoods and hard negatives on tiny hand-made graphs."""
from __future__ import annotations

import pytest
import torch

from tapestry.graph.walks import WalkConfig, hard_negatives, walk_neighbourhoods


def _two_clusters() -> torch.Tensor:
    """Users 1-5 have items 1-3 and users 6-10 items 4-6 (plus item 7 for user 10 only); item 8 has no edges."""
    pairs = [(u, i) for u in range(1, 6) for i in (1, 2, 3)] + [(u, i) for u in range(6, 11) for i in (4, 5, 6)]
    pairs.append((10, 7))
    return torch.tensor(pairs).T


CFG = WalkConfig(length=3, walks_per_item=50, top_t=2, hard_window=(2, 4))


def test_planted_neighbours_are_the_co_interacted_items():
    hoods = walk_neighbourhoods(_two_clusters(), 11, 9, CFG, seed=0)
    assert set(hoods.neighbours[1].tolist()) == {2, 3}
    assert set(hoods.neighbours[5].tolist()) == {4, 6}      # 7 is reachable but visited far less often
    assert 7 not in hoods.neighbours[4:7].flatten().tolist()
    assert not hoods.neighbours[8].any() and not hoods.weights[8].any()   # no edges: no neighbourhood
    assert hoods.hard[1].tolist() == [0, 0]                 # only 2 other items reachable: the window is empty
    assert hoods.hard[4, 0] == 7                            # rank 2 from item 4: the rarely visited one


def test_weights_sum_to_one_and_rank_by_visits():
    hoods = walk_neighbourhoods(_two_clusters(), 11, 9, CFG, seed=0)
    has = hoods.weights.sum(1) > 0
    torch.testing.assert_close(hoods.weights[has].sum(1), torch.ones(int(has.sum())))
    assert (hoods.weights[:, 0] >= hoods.weights[:, 1]).all()


def test_deterministic_under_a_seed():
    a = walk_neighbourhoods(_two_clusters(), 11, 9, WalkConfig(walks_per_item=5, top_t=3), seed=1)
    b = walk_neighbourhoods(_two_clusters(), 11, 9, WalkConfig(walks_per_item=5, top_t=3), seed=1)
    c = walk_neighbourhoods(_two_clusters(), 11, 9, WalkConfig(walks_per_item=5, top_t=3), seed=2)
    assert torch.equal(a.neighbours, b.neighbours) and torch.equal(a.weights, b.weights)
    assert torch.equal(a.hard, b.hard)
    assert not torch.equal(a.weights, c.weights)             # 5 walks: another seed, other visit counts


def test_hard_negatives_exclude_the_positive_and_the_users_items():
    num_items = 10
    hard = torch.zeros(num_items, 4, dtype=torch.long)
    hard[1] = torch.tensor([1, 2, 3, 4])                     # contains the positive itself and seen items
    seen_pairs = torch.tensor([[5, 1], [5, 2], [5, 3], [6, 1]])
    seen = torch.unique(seen_pairs[:, 0] * num_items + seen_pairs[:, 1])
    positives = torch.tensor([[5] * 200, [1] * 200])
    got = hard_negatives(hard, positives, seen, num_items, torch.Generator().manual_seed(0))
    assert set(got.tolist()) == {4}                          # 1 is the positive, 2 and 3 are user 5's
    got6 = hard_negatives(hard, torch.tensor([[6] * 200, [1] * 200]), seen, num_items,
                          torch.Generator().manual_seed(0))
    assert set(got6.tolist()) == {2, 3, 4}                   # user 6 has only item 1: a random pick of the rest
    none = hard_negatives(hard, torch.tensor([[5], [7]]), seen, num_items, torch.Generator().manual_seed(0))
    assert none.tolist() == [0]                              # an empty window: 0, the caller draws uniformly


def test_bad_walk_settings_are_refused():
    with pytest.raises(ValueError, match="length"):
        walk_neighbourhoods(_two_clusters(), 11, 9, WalkConfig(length=0))
    with pytest.raises(ValueError, match="window"):
        walk_neighbourhoods(_two_clusters(), 11, 9, WalkConfig(hard_window=(5, 5)))
