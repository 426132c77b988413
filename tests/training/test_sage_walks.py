"""SAGERecommender with PinSage-style walk neighbourhoods (neighbourhood="walks") and walk hard negatives."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.training.base import Recommender
from tapestry.training.sage import SAGERecommender
from tapestry.training.walk_steps import HardNegativeSteps

from .recommender_mixin import RecommenderMixin
from .test_sage import SAGE

WALKS = dict(SAGE, neighbourhood="walks", walks_per_item=20, walk_top_t=5)


class TestSAGEWalks(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return SAGERecommender(**WALKS, device=cls.device, progress=False)

    def test_items_pool_their_walk_neighbourhood(self, model, data):
        hoods = model._hoods
        assert hoods.neighbours.shape == (data.num_items, WALKS["walk_top_t"])
        assert hasattr(model.model, "walk_pool")
        # The pooling's output weight started at zero (the plain encoder); training moved it.
        assert model.model.walk_pool.combine.weight.abs().sum() > 0

    def test_survives_save_load(self, model, data, tmp_path):
        loaded = Recommender.load(model.save(tmp_path / "m.pt"), device=self.device)
        users = self._users(data, 4)
        hist = [np.zeros(0, dtype=np.int64)] * len(users)
        torch.testing.assert_close(loaded.score(users, hist), model.score(users, hist))
        new = [[("genre", "Action")]]
        torch.testing.assert_close(loaded.embed_items(new), model.embed_items(new))


class TestSAGEWalksHardNegatives(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return SAGERecommender(**dict(WALKS, hard_negative_ratio=0.5, hard_window=(5, 30)), device=cls.device,
                               progress=False)


def _negatives(tiny_etl, ratio: float):
    """(user, positive, its 4 negatives as handed to the sampler, the walk windows, the seen pairs) of one batch."""
    from tapestry.graph.hetero import INTERACTS, build_hetero_graph
    from tapestry.graph.walks import WalkConfig, walk_neighbourhoods
    from tapestry.training.data import InteractionData
    from tapestry.training.sage import SAGEConfig, interaction_graph, link_loader

    data = InteractionData.load(tiny_etl)
    g = interaction_graph(build_hetero_graph(data))
    ei, n = g[INTERACTS].edge_index, int(g["item"].num_nodes)
    hoods = walk_neighbourhoods(ei, int(g["user"].num_nodes), n, WalkConfig(walks_per_item=20, hard_window=(5, 30)))
    steps = HardNegativeSteps(link_loader(g, SAGEConfig(**SAGE)), ei, n, 4, seed=0)
    steps.use_hard(hoods.hard, ratio)
    rows = torch.arange(256)
    batch = steps.batch(rows)
    neg = batch["item"].n_id[batch["item"].dst_neg_index].view(256, 4)
    return ei[0, rows], ei[1, rows], neg, hoods.hard, set(zip(ei[0].tolist(), ei[1].tolist()))


def test_hard_negatives_are_unseen_window_items(tiny_etl):
    users, pos, neg, hard, seen = _negatives(tiny_etl, 1.0)
    checked = 0
    for u, p, row in zip(users.tolist(), pos.tolist(), neg.tolist()):
        window = [i for i in hard[p].tolist() if i > 0 and i != p and (u, i) not in seen]
        if window:                                   # ratio 1: every negative is a hard one
            assert all(i in window for i in row), (u, p, row)
            checked += 1
    assert checked > 200


def test_hard_negatives_mix_by_the_ratio(tiny_etl):
    _, pos, neg, hard, _ = _negatives(tiny_etl, 0.5)
    in_window = (hard[pos].unsqueeze(1) == neg.unsqueeze(2)).any(2)
    assert 0.35 < in_window.float().mean() < 0.65      # half hard; a uniform draw lands in a window rarely


def test_bad_neighbourhood_settings_are_refused():
    with pytest.raises(ValueError, match="neighbourhood"):
        SAGERecommender(neighbourhood="pixie")
    with pytest.raises(ValueError, match="neighbourhood='walks'"):
        SAGERecommender(hard_negative_ratio=0.2)
