"""SRGNNRecommender through the shared API, its serving contract, and `item_table_from` over a tiny SASRec."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.training import registry
from tapestry.training.base import Recommender
from tapestry.training.sasrec import SASRecRecommender
from tapestry.training.srgnn import SRGNNRecommender

from .recommender_mixin import RecommenderMixin
from .serving_reference import assert_scores_match, brute_force_scores

# lr 1e-2 without decay: the tiny synthetic data needs a few fast epochs, not the paper's 30 slow ones.
SRGNN = dict(hidden_dim=32, max_len=20, epochs=6, batch_size=100, lr=1e-2, lr_decay_every=100, seed=0)
SASREC = dict(hidden_dim=16, num_blocks=1, max_len=20, epochs=2, batch_size=64, seed=0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


class TestSRGNN(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return SRGNNRecommender(**SRGNN, device=cls.device, progress=False)

    def test_score_is_encode_times_item_embeddings(self, model, data, histories):
        # The serving contract: exact inner-product retrieval over item_embeddings() reproduces score(), checked
        # against each session encoded alone at the serving width, scored in numpy (serving_reference.py).
        m = model.serving_module()
        assert not m.training and (m.num_items, m.max_len) == (data.num_items, SRGNN["max_len"])
        users = self._users(data)
        long = np.tile(histories[users[1]], SRGNN["max_len"])         # past max_len: the newest are read
        hist = [histories[u] for u in users] + [histories[users[0]][:1], long]
        assert len(hist[-1]) > SRGNN["max_len"]
        assert_scores_match(model.score(np.append(users, [0, 0]), hist), brute_force_scores(m, hist))
        assert not m.item_embeddings()[0].any()

    def test_empty_history_scores_are_zero(self, model):
        scores = model.score(np.array([0]), [np.zeros(0, dtype=np.int64)])
        assert torch.isfinite(scores[0, 1:]).all() and not scores[0, 1:].any()

    def test_training_loss_goes_down(self, model):
        assert model.loss_history_[-1] < 0.8 * model.loss_history_[0]


class TestSRGNNCuda(TestSRGNN):
    device = "cuda"
    pytestmark = needs_cuda


def test_training_examples_are_every_or_the_last_prefixes():
    seqs = [np.array([4, 5, 6, 7]), np.array([9]), np.array([1, 2])]
    inputs, targets = SRGNNRecommender(max_len=3, max_prefixes_per_user=None, device="cpu").training_examples(seqs)
    assert targets.tolist() == [5, 6, 7, 2]
    assert inputs.tolist() == [[0, 0, 4], [0, 4, 5], [4, 5, 6], [0, 0, 1]]
    inputs, targets = SRGNNRecommender(max_len=3, max_prefixes_per_user=2, device="cpu").training_examples(seqs)
    assert targets.tolist() == [6, 7, 2] and inputs.tolist() == [[0, 4, 5], [4, 5, 6], [0, 0, 1]]


class TestSharedItemTable:
    """`item_table_from`: the session encoder scores against the upstream SASRec's table, frozen."""

    @pytest.fixture(scope="class")
    @classmethod
    def pair(cls, tiny_etl):
        from tapestry.training.data import InteractionData

        data = InteractionData.load(tiny_etl)
        sasrec = SASRecRecommender(**SASREC, device="cpu", progress=False).fit(data)
        model = SRGNNRecommender(**dict(SRGNN, hidden_dim=16, epochs=2), item_table_from="sas", device="cpu",
                                 progress=False)
        model.bind({"sas": sasrec})
        return data, sasrec, model.fit(data)

    def test_scores_against_exactly_the_upstream_table(self, pair):
        data, sasrec, model = pair
        table = sasrec.item_embeddings()
        assert torch.equal(model.item_embeddings(), table)             # unchanged by training
        histories = data.sequences(("train",))
        users = data.test["user_idx"].to_numpy()[:6]
        hist = [histories[u] for u in users]
        torch.testing.assert_close(model.score(users, hist)[:, 1:], (model.encode(hist) @ table.T)[:, 1:])
        assert model.serving_module().item_table.requires_grad is False

    def test_save_load_needs_no_upstream(self, pair, tmp_path):
        data, sasrec, model = pair
        loaded = Recommender.load(model.save(tmp_path / "m.pt"), device="cpu")
        assert torch.equal(loaded.item_embeddings(), sasrec.item_embeddings())
        histories = data.sequences(("train",))
        users = data.test["user_idx"].to_numpy()[:4]
        hist = [histories[u] for u in users]
        assert torch.equal(loaded.score(users, hist), model.score(users, hist))

    def test_dimension_mismatch_raises(self, pair):
        _, sasrec, _ = pair
        with pytest.raises(ValueError, match="hidden_dim is 32"):
            SRGNNRecommender(hidden_dim=32, item_table_from="sas", device="cpu").bind({"sas": sasrec})

    def test_missing_upstream_or_bind_raises(self, pair):
        data, sasrec, _ = pair
        model = SRGNNRecommender(hidden_dim=16, item_table_from="sas", device="cpu")
        with pytest.raises(ValueError, match="trained earlier"):
            model.bind({"other": sasrec})
        with pytest.raises(RuntimeError, match="bind"):
            model.fit(data)


def test_registry_entries():
    shared = registry.build("srgnn_shared", quick=True, device="cpu")
    assert isinstance(shared, SRGNNRecommender) and shared.cfg.item_table_from == "sasrec_lightgcn"
    # the quick sizes must line up with the quick upstream, or `tapestry train --quick` fails at bind
    assert shared.cfg.hidden_dim == registry.build("sasrec_lightgcn", quick=True, device="cpu").cfg.hidden_dim
    full = registry.build("srgnn_shared", device="cpu")
    assert full.cfg.hidden_dim == registry.build("sasrec_lightgcn", device="cpu").cfg.hidden_dim
    assert registry.build("srgnn", device="cpu").cfg.item_table_from is None
