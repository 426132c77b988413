"""One reusable test class for the API every Recommender shares (the `implicit` library's pattern).

A subclass sets `device` and implements `make(data, graph)` returning an UNFITTED model with a tiny config;
set `beats_popularity = False` for models not expected to beat the popularity baseline on the planted data.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tapestry.graph.hetero import build_hetero_graph
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.evaluate import evaluate
from tapestry.training.popularity import PopularityRecommender


class RecommenderMixin:
    device = "cpu"
    beats_popularity = True
    lift_over_random = 3.0      # required recall@10 / a random ranker's expected recall@10

    @classmethod
    def make(cls, data: InteractionData, graph) -> Recommender:
        raise NotImplementedError

    # Class-scoped: one fit per model class and device, shared by every test below.
    @pytest.fixture(scope="class")
    @classmethod
    def data(cls, tiny_etl) -> InteractionData:
        return InteractionData.load(tiny_etl)

    @pytest.fixture(scope="class")
    @classmethod
    def graph(cls, data):
        return build_hetero_graph(data)

    @pytest.fixture(scope="class")
    @classmethod
    def fit_pair(cls, data, graph):
        model = cls.make(data, graph)
        return model, model.fit(data, graph)

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, fit_pair):
        return fit_pair[1]

    @pytest.fixture(scope="class")
    @classmethod
    def histories(cls, data):
        return data.sequences(("train",))

    def _users(self, data, n=8):
        return data.valid["user_idx"].to_numpy()[:n]

    # ---- the shared API ----------------------------------------------------------------------------------
    def test_fit_returns_self(self, fit_pair):
        assert fit_pair[1] is fit_pair[0]

    def test_score_shape_padding_and_device(self, model, data, histories):
        users = self._users(data)
        scores = model.score(users, [histories[u] for u in users])
        assert scores.shape == (len(users), data.num_items)
        assert scores.device.type == torch.device(self.device).type
        assert torch.isneginf(scores[:, 0]).all()
        assert torch.isfinite(scores[:, 1:]).all()

    def test_recommend_k_distinct_unseen_items(self, model, data, histories):
        for u in self._users(data, 4):
            items, scores = model.recommend(int(u), histories[u], k=10)
            assert len(items) == 10 and len(set(items.tolist())) == 10
            assert 0 not in items
            assert not set(items.tolist()) & set(histories[u].tolist())
            assert np.all(np.diff(scores) <= 0)          # best first

    def test_recommend_caps_k_at_the_candidates(self, model, data, histories):
        u = int(self._users(data, 1)[0])
        items, _ = model.recommend(u, histories[u], k=10_000)
        assert len(items) == data.num_items - 1 - len(set(histories[u].tolist()))

    def test_save_load_round_trip(self, model, data, histories, tmp_path):
        path = model.save(tmp_path / "model.pt")
        assert os.listdir(tmp_path) == ["model.pt"]          # atomic write left no temp file behind
        users = self._users(data)
        hist = [histories[u] for u in users]
        for loaded in (Recommender.load(path, device=self.device), type(model).load(path, device=self.device)):
            assert type(loaded) is type(model)
            assert torch.equal(loaded.score(users, hist).cpu(), model.score(users, hist).cpu())

    def test_load_rejects_another_model_class(self, model, tmp_path):
        other = PopularityRecommender if not isinstance(model, PopularityRecommender) else None
        if other is None:
            pytest.skip("popularity is the other class used here")
        path = model.save(tmp_path / "model.pt")
        with pytest.raises(TypeError, match=f"holds a {type(model).__name__}, not a {other.__name__}"):
            other.load(path)

    def test_fit_is_deterministic(self, model, data, graph, histories):
        again = self.make(data, graph).fit(data, graph)
        users = self._users(data)
        hist = [histories[u] for u in users]
        torch.testing.assert_close(again.score(users, hist), model.score(users, hist), rtol=1e-4, atol=1e-4)

    def test_beats_random(self, model, data):
        m = evaluate(model, data, "test", k=10)
        # A random ranker hits with probability 10 / (candidates), candidates = real items minus the history.
        seen = data.sequences(("train", "valid"))
        users = data.test["user_idx"].to_numpy()
        random_recall = np.mean([min(1.0, 10 / (data.num_items - 1 - len(set(seen[u].tolist())))) for u in users])
        assert m["recall@10"] > self.lift_over_random * random_recall, (m, random_recall)

    def test_beats_popularity(self, model, data):
        if not self.beats_popularity:
            pytest.skip("not expected to beat popularity")
        pop = evaluate(PopularityRecommender(device=self.device).fit(data), data, "test")
        mine = evaluate(model, data, "test")
        assert mine["ndcg@10"] > 1.2 * pop["ndcg@10"], (mine, pop)
