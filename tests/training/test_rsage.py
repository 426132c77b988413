"""RSAGERecommender: the shared API over the typed graph, per-relation weights, the graph ablation switch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.graph.typed import build_typed_graph, graph_for
from tapestry.models.graph.rsage import RelationalSAGE
from tapestry.training import registry
from tapestry.training.data import InteractionData
from tapestry.training.rsage import RSAGEConfig, RSAGERecommender, link_loader
from tapestry.training.hgt import lean_graph

from .recommender_mixin import RecommenderMixin

# Tiny config: a few seconds per fit on one CPU thread, NDCG@10 ~3.5x popularity's on the planted data.
RSAGE = dict(embedding_dim=32, num_neighbors=(10, 5), epochs=10, batch_size=256, lr=1e-2, seed=0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


class TestRSAGE(RecommenderMixin):
    """Over the typed graph of the tiny tenant: view/click/purchase relations, genre, age group, sessions."""

    @classmethod
    def make(cls, data, graph):
        return RSAGERecommender(**RSAGE, device=cls.device, progress=False)

    def test_trained_over_every_relation_of_the_typed_graph(self, model, data):
        rels = {et[1] for et in model.relations_}
        assert {"view", "click", "purchase", "rev_view", "has_genre", "has_age_group", "starts", "contains"} <= rels
        assert "interacts" not in rels

    def test_embeddings_cover_all_rows(self, model, data):
        items, users = model.item_embeddings(), model.user_embeddings()
        assert items.shape == (data.num_items, RSAGE["embedding_dim"]) and users.shape[0] == data.num_users
        assert not items[0].any() and not users[0].any()
        torch.testing.assert_close(items[1:].norm(dim=1), torch.ones(data.num_items - 1, device=items.device))

    def test_training_loss_goes_down(self, model):
        assert model.loss_history_[-1] < 0.9 * model.loss_history_[0]

    def test_unknown_user_is_the_mean_of_their_history(self, model, data, histories):
        hist = histories[int(self._users(data, 1)[0])]
        items = model.item_embeddings()
        expected = items[torch.as_tensor(hist, device=items.device)].mean(0) @ items.T
        torch.testing.assert_close(model.score(np.array([0]), [hist])[0][1:], expected[1:])
        flat = model.score(np.array([0]), [np.zeros(0, dtype=np.int64)])[0]
        assert not flat[1:].any()


@needs_cuda
class TestRSAGEGPU(TestRSAGE):
    device = "cuda"


@pytest.fixture(scope="module")
def data(tiny_etl) -> InteractionData:
    return InteractionData.load(tiny_etl)


def test_each_relation_has_its_own_weights(data):
    g = build_typed_graph(data)
    module = RelationalSAGE({nt: int(g[nt].num_nodes) for nt in g.node_types}, g.metadata(), dim=8, num_layers=2)
    for conv in module.convs:
        assert set(conv.convs.keys()) == set(g.edge_types)
    view, purchase = conv.convs[("user", "view", "item")], conv.convs[("user", "purchase", "item")]
    assert view.lin_l.weight.data_ptr() != purchase.lin_l.weight.data_ptr()


def test_a_relation_changes_the_output_only_through_its_own_edges(data):
    """Dropping one relation's edges changes the vectors of the nodes it reaches, and only those (1 layer)."""
    g = build_typed_graph(data)
    torch.manual_seed(0)
    module = RelationalSAGE({nt: int(g[nt].num_nodes) for nt in g.node_types}, g.metadata(), dim=8,
                            num_layers=1).eval()
    n_id = {nt: torch.arange(int(g[nt].num_nodes)) for nt in g.node_types}
    edges = {et: g[et].edge_index for et in g.edge_types}
    base = module(n_id, edges)
    et = ("item", "rev_purchase", "user")
    without = module(n_id, {**edges, et: edges[et][:, :0]})
    reached = torch.zeros(int(g["user"].num_nodes), dtype=torch.bool)
    reached[edges[et][1]] = True
    changed = ~torch.isclose(without["user"], base["user"]).all(1)
    assert torch.equal(changed, reached) and reached.any()
    torch.testing.assert_close(without["item"], base["item"])


def test_the_graph_switch_reaches_the_model(data):
    """graph="none" trains on no edges at all, "interactions" on one relation: the ablation's variants."""
    fits = {kind: RSAGERecommender(**dict(RSAGE, epochs=1), graph=kind, progress=False, device="cpu").fit(data)
            for kind in ("none", "interactions")}
    assert [et[1] for et in fits["interactions"].relations_] == ["interacts", "rev_interacts"]
    assert graph_for(data, "none").num_edges == 0 and fits["none"].relations_ == fits["interactions"].relations_
    assert not torch.equal(fits["none"].item_embeddings(), fits["interactions"].item_embeddings())


def test_positives_are_the_target_event_types_only(data):
    lean = lean_graph(build_typed_graph(data))
    from tapestry.graph.typed import supervision_pairs

    positives = torch.unique(supervision_pairs(data, ("purchase",)), dim=1)
    purchases = set(map(tuple, positives.t().tolist()))
    assert purchases and len(purchases) < data.train.height
    cfg = RSAGEConfig(**dict(RSAGE, target_events=("purchase",)))
    seen = set()
    for batch in link_loader(lean, positives, cfg):
        u = batch["user"].n_id[batch["user"].src_index].tolist()
        i = batch["item"].n_id[batch["item"].dst_pos_index].tolist()
        seen.update(zip(u, i))
    assert seen == purchases
    with pytest.raises(ValueError, match="no training events"):
        RSAGERecommender(**dict(RSAGE, epochs=1), target_events=("teleport",), device="cpu").fit(data)


def test_config_checks_and_registry():
    with pytest.raises(ValueError, match="graph must be one of"):
        RSAGERecommender(graph="everything")
    model = registry.build("rsage", quick=True, device="cpu", progress=False)
    assert isinstance(model, RSAGERecommender) and model.cfg.graph == "typed"
    assert registry.build("hgt_typed", quick=True, device="cpu").cfg.graph == "typed"
