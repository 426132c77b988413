"""The fusion reranker in one process: the shared Recommender API (a ranker's version of it), the tail split that
cross-fits the list retriever, the lists it learns from, and the inference object against the training module."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.inference.fusion_ranker import FusionReranker, collate
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.evaluate import evaluate
from tapestry.training.fusion import FusionRecommender, tail_split
from tapestry.training.fusion_lists import build_lists
from tapestry.training.sasrec import SASRecRecommender

from .recommender_mixin import RecommenderMixin

N = 30
_RETRIEVERS: dict = {}


def retriever(data) -> SASRecRecommender:
    """One tiny SASRec per data set, shared (a ranker's tests are about the ranker)."""
    key = str(data.path)
    if key not in _RETRIEVERS:
        _RETRIEVERS[key] = SASRecRecommender(hidden_dim=32, num_blocks=1, max_len=20, dropout=0.1, epochs=30,
                                             batch_size=64, lr=5e-3, device="cpu", progress=False).fit(data)
    return _RETRIEVERS[key]


def ranker(data, **overrides) -> FusionRecommender:
    cfg = dict(retriever="sasrec", graph_from=None, num_candidates=N, dim=32, history_len=10, mlp=(32,), epochs=4,
               positions=3, device="cpu", progress=False)
    model = FusionRecommender(**{**cfg, **overrides})
    model.bind({"sasrec": retriever(data)})
    return model


class TestFusionRecommender(RecommenderMixin):
    """The shared API, with a ranker's semantics where they differ: scores are finite exactly on the retriever's
    top `num_candidates` unseen items (-inf elsewhere: the served path), and a loaded file is bound again to its
    retriever before scoring (a ranker never stores the model whose candidates it reranks)."""

    @classmethod
    def make(cls, data, graph):
        return ranker(data)

    def test_score_shape_padding_and_device(self, model, data, histories):
        users = self._users(data)
        scores = model.score(users, [histories[u] for u in users])
        assert scores.shape == (len(users), data.num_items) and scores.device.type == "cpu"
        assert torch.isneginf(scores[:, 0]).all()
        assert (torch.isfinite(scores).sum(1) == N).all()
        for row, u in enumerate(users):           # never a seen item
            assert torch.isneginf(scores[row, torch.from_numpy(histories[u])]).all()

    def test_recommend_caps_k_at_the_candidates(self, model, data, histories):
        u = int(self._users(data, 1)[0])
        items, _ = model.recommend(u, histories[u], k=10_000)
        assert len(items) == N

    def test_save_load_round_trip(self, model, data, histories, tmp_path):
        import os

        path = model.save(tmp_path / "model.pt")
        assert os.listdir(tmp_path) == ["model.pt"]
        users = self._users(data)
        hist = [histories[u] for u in users]
        for loaded in (Recommender.load(path, device="cpu"), FusionRecommender.load(path, device="cpu")):
            assert type(loaded) is FusionRecommender
            with pytest.raises(RuntimeError, match="bound"):
                loaded.score(users, hist)
            loaded.bind({"sasrec": retriever(data)})
            assert torch.equal(loaded.score(users, hist), model.score(users, hist))

    def test_selects_its_epoch_on_validation(self, model):
        r = model.report
        assert 1 <= r["best_epoch"] <= len(r["history"]) == len(model.loss_history_)
        assert r["best_valid_ndcg@10"] == pytest.approx(max(h["valid_ndcg@10"] for h in r["history"]), abs=1e-5)
        assert model.best_epoch_ == r["best_epoch"]

    def test_measures_the_optimism_it_avoids(self, model):
        # The served retriever trained on these targets ranks them higher than the cross-fitted twin does.
        r = model.report
        assert r["train_positions_served_retriever_ndcg@10"] > r["train_positions_retrieval_ndcg@10"]

    def test_evaluation_is_the_rerank_protocol(self, model, data):
        # A target outside the candidates is a miss at every cut-off: the served path's numbers.
        full = evaluate(model, data, "test")
        assert full["recall@100"] <= evaluate(retriever(data), data, "test")["recall@100"] + 1e-9


@pytest.fixture(scope="module")
def data(tiny_etl):
    return InteractionData.load(tiny_etl)


def test_tail_split_holds_out_the_last_events_of_each_user(data):
    base = tail_split(data, 3)
    full, cut = data.sequences(("train",)), base.sequences(("train",))
    for u, (s, b) in enumerate(zip(full, cut)):
        if len(s):
            keep = len(s) - min(3, len(s) - 1)
            assert b.tolist() == s[:keep].tolist()           # a prefix: the newest events are the ones removed
            if keep < len(s):                                # its validation item: the first one removed
                assert base.valid.filter(base.valid["user_idx"] == u)["item_idx"].to_list() == [s[keep]]
    assert base.test.equals(data.test) and base.valid["user_idx"].is_unique().all()


def test_training_lists_never_hold_the_target_in_its_history(data):
    seqs = data.sequences(("train",))
    users = np.arange(1, 40)
    from tapestry.training.reranker import build_rerank_tables

    tables = build_rerank_tables(data)
    probe = FusionReranker(_module_args(), _module_state(), tables.log_pop, tables.user_attrs.shape[1])
    later = [seqs[u][-1:] for u in users]                    # pretend the target's successor is the last item
    prefixes, targets = [seqs[u][:-2] for u in users], [int(seqs[u][-2]) for u in users]
    lists = build_lists(retriever(data), probe, N, users, prefixes, targets, tables.user_attrs, later)
    assert lists.feats and len(lists.feats) == len(lists.positive) == len(lists.users) == len(lists.ignore)
    for f, p, u, m in zip(lists.feats, lists.positive, lists.users, lists.ignore):
        t = f.cands[p]
        assert t == targets[u - 1] and t not in f.history      # the target is its list's, never in its own history
        assert not set(f.cands.tolist()) & set(f.history.tolist())
        # The user's later item, when retrieved, is masked out of the softmax; nothing else is.
        assert f.cands[m].tolist() == [c for c in f.cands.tolist() if c == seqs[u][-1]] and not m[p]


def _module_args():
    from tapestry.models.ranking.fusion import FusionRanker

    return FusionRanker(num_items=101, dim=8, num_heads=1, max_history=10).init_args


def _module_state():
    from tapestry.models.ranking.fusion import FusionRanker

    torch.manual_seed(0)
    return FusionRanker(**_module_args()).state_dict()


@pytest.fixture(scope="module")
def fitted(data):
    return ranker(data).fit(data)


def test_inference_object_equals_the_training_module(fitted, data, tmp_path):
    """The served reranker (features -> score_many, also after save/load) scores as the trained module does on
    the same lists, and one batched call equals one call per request."""
    r = fitted.ranker
    hist = data.sequences(("train", "valid"))
    rng = np.random.default_rng(0)
    lists = [r.features(rng.choice(np.arange(1, data.num_items), n, replace=False), rng.normal(size=n), hist[u],
                        fitted._attrs[u]) for u, n in ((1, N), (2, 3), (3, 11))]
    batch = collate(lists)
    with torch.no_grad():
        logits = r.model(batch.cands, batch.dense, batch.history, batch.user_attrs)
    many = r.score_many(lists)
    back = FusionReranker.load(_saved(r, tmp_path))
    for i, (f, m) in enumerate(zip(lists, many)):
        expected = torch.log_softmax(logits[i, :len(f.cands)], 0).numpy()
        np.testing.assert_allclose(m, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r.score(f), m, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(back.score(f), m, rtol=1e-6, atol=1e-6)


def _saved(r, tmp_path):
    path = tmp_path / "fusion_ranker.pt"
    r.save(path)
    return path


def test_without_cross_fitting_the_served_retriever_builds_the_lists(data):
    model = ranker(data, cross_fit=False, epochs=1).fit(data)
    assert "train_positions_served_retriever_ndcg@10" not in model.report
    assert model.report["train_lists"] > 0
