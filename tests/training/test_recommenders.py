"""Every model through the shared API tests; GPU variants run only where CUDA is present."""
from __future__ import annotations

import pytest
import torch

from tapestry.graph.hetero import build_hetero_graph
from tapestry.training.data import InteractionData
from tapestry.training.evaluate import evaluate
from tapestry.training.lightgcn import LightGCNRecommender
from tapestry.training.popularity import PopularityRecommender
from tapestry.training.sasrec import SASRecRecommender

from .recommender_mixin import RecommenderMixin

# Tiny configs: seconds on 2 CPU cores, still enough to learn the planted structure.
LIGHTGCN = dict(embedding_dim=32, num_layers=2, epochs=40, batch_size=512, lr=2e-2, weight_decay=1e-4, seed=0)
SASREC = dict(hidden_dim=32, num_blocks=1, num_heads=1, max_len=20, dropout=0.1, epochs=30, batch_size=64,
              lr=5e-3, seed=0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


class TestPopularity(RecommenderMixin):
    beats_popularity = False
    lift_over_random = 1.3      # the planted noise is Zipf-popular, so counts help, but only a little

    @classmethod
    def make(cls, data, graph):
        return PopularityRecommender(device=cls.device)


class TestLightGCN(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return LightGCNRecommender(**LIGHTGCN, device=cls.device, progress=False)

    def test_embeddings_cover_all_rows(self, model, data):
        assert model.item_embeddings().shape == (data.num_items, LIGHTGCN["embedding_dim"])
        assert model.user_embeddings().shape == (data.num_users, LIGHTGCN["embedding_dim"])
        assert not model.item_embeddings()[0].any()                 # OOV / padding row is defined as zero

    def test_training_loss_goes_down(self, model):
        assert model.loss_history_[-1] < 0.8 * model.loss_history_[0]


class TestSASRec(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return SASRecRecommender(**SASREC, device=cls.device, progress=False)

    def test_empty_history_scores_are_defined(self, model, data):
        scores = model.score([0], [torch.zeros(0, dtype=torch.long).numpy()])
        assert torch.isfinite(scores[0, 1:]).all() and not scores[0, 1:].any()


class TestSASRecFromLightGCN(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        init = LightGCNRecommender(**LIGHTGCN, device=cls.device, progress=False).fit(data, graph).item_embeddings()
        return SASRecRecommender(**SASREC, item_init=init, device=cls.device, progress=False)

    def test_flagged_as_initialised_from_graph(self, model, tmp_path):
        assert model.initialised_from_graph
        assert SASRecRecommender.load(model.save(tmp_path / "m.pt")).initialised_from_graph

    def test_item_init_dimension_is_checked(self):
        with pytest.raises(ValueError, match="hidden_dim"):
            SASRecRecommender(hidden_dim=32, item_init=torch.zeros(10, 16))


class TestSASRecGraphFusion(RecommenderMixin):
    """SASRec with LightGCN's item vectors frozen beside the ID table (through `bind`, as the pipeline does)."""
    fusion = "add"

    @classmethod
    def make(cls, data, graph):
        lgcn = LightGCNRecommender(**dict(LIGHTGCN, embedding_dim=24), device=cls.device, progress=False)
        model = SASRecRecommender(**SASREC, graph_from="lgcn", fusion=cls.fusion, device=cls.device, progress=False)
        model.bind({"lgcn": lgcn.fit(data, graph)})
        return model

    def test_side_vectors_stay_frozen_and_are_used(self, model, data):
        side = model.model.side_emb
        assert side.shape == (data.num_items, 24) and not side[0].any()
        assert not any(p is side for p in model.model.parameters())        # a buffer, never optimised
        assert model.model.side_proj.weight.abs().sum() > 0                 # the projection learned a share

    def test_fused_table_is_what_scores(self, model, data):
        table = model.item_embeddings()
        assert not torch.equal(table, model.model.item_emb.weight)
        assert not table[0].any()

    def test_bind_needs_the_upstream_model(self):
        with pytest.raises(ValueError, match="trained earlier"):
            SASRecRecommender(**SASREC, graph_from="nope").bind({})


class TestSASRecGatedFusion(TestSASRecGraphFusion):
    fusion = "gate"


def test_config_object_and_keyword_overrides_agree():
    from tapestry.training.lightgcn import LightGCNConfig

    a = LightGCNRecommender(LightGCNConfig(epochs=3), device="cpu")
    b = LightGCNRecommender(epochs=3, device="cpu")
    assert a.cfg == b.cfg and a._init_kwargs()["epochs"] == 3
    with pytest.raises(TypeError, match="unknown hyper-parameter"):
        LightGCNRecommender(epochz=3)


class TestLightGCNSoftmax(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return LightGCNRecommender(**dict(LIGHTGCN, epochs=15, loss="softmax", num_negatives=64, lr=1e-2),
                                   device=cls.device, progress=False)


@needs_cuda
class TestPopularityGPU(TestPopularity):
    device = "cuda"


@needs_cuda
class TestLightGCNGPU(TestLightGCN):
    device = "cuda"


@needs_cuda
class TestSASRecGPU(TestSASRec):
    device = "cuda"


@needs_cuda
class TestSASRecFromLightGCNGPU(TestSASRecFromLightGCN):
    device = "cuda"


def test_real_movielens_100k_models_beat_popularity(ml100k_etl):
    """On real data (943 users, 1,682 items), short trainings already beat the popularity baseline."""
    data = InteractionData.load(ml100k_etl)
    graph = build_hetero_graph(data)
    pop = evaluate(PopularityRecommender().fit(data), data, "test")
    lgcn = LightGCNRecommender(epochs=10, batch_size=4096, lr=2e-2, progress=False).fit(data, graph)
    sasrec = SASRecRecommender(max_len=50, epochs=6, lr=2e-3, progress=False).fit(data)
    for name, model in (("lightgcn", lgcn), ("sasrec", sasrec)):
        m = evaluate(model, data, "test")
        assert m["ndcg@10"] > pop["ndcg@10"], (name, m, pop)
