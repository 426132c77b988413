"""HGT: the shared Recommender API, every node type read, relative temporal encoding, and no split leakage."""
from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from tapestry.graph.hetero import INTERACTS, build_hetero_graph
from tapestry.models.graph.hgt import HGT, age_buckets
from tapestry.training import registry
from tapestry.training.data import InteractionData
from tapestry.graph.typed import TypedGraphConfig, build_typed_graph, supervision_pairs
from tapestry.training.hgt import (HGTConfig, HGTRecommender, edge_ages, embed_all, target_edge_masks,
                                   train_loader)

from .recommender_mixin import RecommenderMixin

# Tiny config: ~3.5 s per fit on one CPU thread, enough to learn the planted genre chains.
HGT_TINY = dict(hidden_dim=32, heads=2, num_layers=2, out_dim=32, num_neighbors=(10, 5), epochs=15,
                batch_size=256, lr=1e-2, seed=0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
REV = ("item", "rev_interacts", "user")


class TestHGT(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return HGTRecommender(**HGT_TINY, device=cls.device, progress=False)

    def test_item_embeddings_cover_all_rows(self, model, data):
        emb = model.item_embeddings()
        assert emb.shape == (data.num_items, HGT_TINY["out_dim"])
        assert not emb[0].any() and emb[1:].abs().sum(1).gt(0).all()

    def test_unknown_user_is_scored_from_history_mean(self, model, data):
        history = np.array([3, 7, 11])
        item = model.item_embeddings()
        expected = item[torch.as_tensor(history, device=item.device)].mean(0) @ item.T
        for user in (0, data.num_users + 5):          # OOV row, and an index the model never saw
            scores = model.score(np.array([user]), [history])[0]
            torch.testing.assert_close(scores[1:], expected[1:])

    def test_training_loss_goes_down(self, model):
        assert model.loss_history_[-1] < 0.9 * model.loss_history_[0]


@needs_cuda
class TestHGTGPU(TestHGT):
    device = "cuda"


class TestHGTTyped(RecommenderMixin):
    """HGT over the typed graph (issue 19): view/click/purchase relations, entities, sessions by category."""

    @classmethod
    def make(cls, data, graph):
        return HGTRecommender(**HGT_TINY, graph="typed", device=cls.device, progress=False)

    def test_training_loss_goes_down(self, model):
        assert model.loss_history_[-1] < 0.9 * model.loss_history_[0]

    def test_records_its_relations_through_save_and_load(self, model, tmp_path):
        # metrics.json and the export manifest name them (training.pipeline.item_vector_graphs)
        assert {("user", "purchase", "item"), ("session", "contains", "item")} <= set(model.relations_)
        model.save(tmp_path / "hgt.pt")
        assert HGTRecommender.load(tmp_path / "hgt.pt", device="cpu").relations_ == model.relations_


@needs_cuda
class TestHGTTypedGPU(TestHGTTyped):
    device = "cuda"


def test_module_reads_any_set_of_relations_and_embeds_sessions_by_category(data):
    typed = build_typed_graph(data, TypedGraphConfig(mediated=True))
    cats = {nt: typed[nt].category for nt in typed.node_types if "category" in typed[nt]}
    assert set(cats) == {"session"}            # the tiny tenant has sessions, no context columns
    sizes = {nt: int(typed[nt].num_categories) if nt in cats else int(typed[nt].num_nodes) for nt in typed.node_types}
    torch.manual_seed(0)
    module = HGT(sizes, typed.metadata(), hidden_dim=16, heads=2, num_layers=2, out_dim=8, categories=cats).eval()
    assert module.embeddings["session"].num_embeddings == 1 < typed["session"].num_nodes
    for conv in module.convs:
        assert set(conv.p_rel) == {"__".join(et) for et in typed.edge_types}
    out = embed_all(module, typed, edge_ages(typed)[0], torch.device("cpu"))
    assert out["item"].shape == (data.num_items, 8) and torch.isfinite(out["item"]).all()
    # the session relations are read: dropping them changes the items' vectors
    lean = typed.clone()
    for et in [et for et in typed.edge_types if "session" in (et[0], et[2])]:
        lean[et].edge_index = lean[et].edge_index[:, :0]
        lean[et].time = lean[et].time[:0]
    ages = edge_ages(lean)[0]
    assert not torch.allclose(embed_all(module, lean, ages, torch.device("cpu"))["item"], out["item"], atol=1e-6)


def test_typed_positives_exclude_their_own_edges_in_every_behaviour(data):
    """target_edge_masks drops a positive's (user, item) from every user<->item relation of its subgraph."""
    typed = build_typed_graph(data)
    cfg = HGTConfig(**dict(HGT_TINY, batch_size=64))
    torch.manual_seed(0)
    batch = next(iter(train_loader(typed, cfg, positives=supervision_pairs(data))))
    masks = target_edge_masks(batch, data.num_items)
    assert {et[1] for et in masks} == {"view", "click", "purchase", "rev_view", "rev_click", "rev_purchase"}
    users, items = batch["user"].n_id, batch["item"].n_id
    seeds = set(zip(users[batch["user"].src_index].tolist(), items[batch["item"].dst_pos_index].tolist()))
    dropped = 0
    for et, keep in masks.items():
        ei = batch[et].edge_index
        u, i = (ei[0], ei[1]) if et[0] == "user" else (ei[1], ei[0])
        pairs = list(zip(users[u].tolist(), items[i].tolist()))
        assert not seeds & {p for p, k in zip(pairs, keep.tolist()) if k}
        dropped += int((~keep).sum())
    assert dropped > 0


# ---- module-level checks (untrained, seeded modules: milliseconds) -----------------------------------------------
@pytest.fixture(scope="module")
def data(tiny_etl) -> InteractionData:
    return InteractionData.load(tiny_etl)


@pytest.fixture(scope="module")
def graph(data):
    return build_hetero_graph(data)


def _module(graph, seed=0) -> HGT:
    torch.manual_seed(seed)
    return HGT({nt: int(graph[nt].num_nodes) for nt in graph.node_types}, graph.metadata(), hidden_dim=16,
               heads=2, num_layers=2, out_dim=8, time_buckets=16).eval()


def _full(module, graph, ages):
    return embed_all(module, graph, ages, torch.device("cpu"))


def test_module_has_parameters_for_every_node_and_edge_type(graph):
    module = _module(graph)
    assert set(module.embeddings) == set(graph.node_types)
    for conv in module.convs:
        assert set(conv.p_rel) == {"__".join(et) for et in graph.edge_types}
        assert set(conv.skip) == set(graph.node_types)


def test_every_entity_edge_type_changes_its_owners_output(graph):
    """Re-pointing one (owner, has_<e>, <e>) edge (and its reverse) changes that owner's vector, for every e."""
    module, ages = _module(graph), edge_ages(graph)[0]
    base = _full(module, graph, ages)
    entity_types = [et for et in graph.edge_types if et[1].startswith("has_")]
    assert {et[2] for et in entity_types} == set(graph.node_types) - {"user", "item"}
    for owner, rel, etype in entity_types:
        g = graph.clone()
        fwd, rev = g[owner, rel, etype].edge_index.clone(), g[etype, f"rev_{rel}", owner].edge_index.clone()
        node, old = int(fwd[0, 0]), int(fwd[1, 0])
        new = (old + 1) % int(g[etype].num_nodes)
        fwd[1, 0] = new
        rev[0, (rev[0] == old) & (rev[1] == node)] = new
        g[owner, rel, etype].edge_index, g[etype, f"rev_{rel}", owner].edge_index = fwd, rev
        changed = _full(module, g, ages)[owner][node]
        assert not torch.allclose(changed, base[owner][node], atol=1e-6), (owner, rel, etype)


def test_age_buckets_are_log2_days():
    day = 86_400
    ages = torch.tensor([-5, 0, day - 1, day, 3 * day, 4 * day, 10**12])
    assert age_buckets(ages, 16).tolist() == [1, 1, 1, 2, 3, 3, 16]


def test_temporal_encoding_depends_on_edge_times(graph):
    module, ages = _module(graph), edge_ages(graph)[0]
    base = _full(module, graph, ages)
    torch.testing.assert_close(_full(module, graph, {k: v.clone() for k, v in ages.items()}), base, rtol=0, atol=0)

    item = int(graph[INTERACTS].edge_index[1, 0])
    rev_pos = (graph[REV].edge_index[0] == item) & (graph[REV].edge_index[1] == graph[INTERACTS].edge_index[0, 0])

    def with_first_edge_age(seconds: float) -> dict:
        out = {k: v.clone() for k, v in ages.items()}
        out[INTERACTS][0] = seconds
        out[REV][rev_pos] = seconds
        return out

    # Two ages in the same bucket (10 and 11 days -> bucket 4) give identical outputs; another bucket does not.
    same_a = _full(module, graph, with_first_edge_age(10 * 86_400))
    same_b = _full(module, graph, with_first_edge_age(11 * 86_400))
    torch.testing.assert_close(same_a, same_b, rtol=0, atol=0)
    far = _full(module, graph, with_first_edge_age(400 * 86_400))
    assert not torch.allclose(far["item"][item], same_a["item"][item], atol=1e-6)
    # Dropping every time (all edges in the "no time" bucket 0) changes the output: the encoding is live.
    assert not torch.allclose(_full(module, graph, {})["item"], base["item"], atol=1e-6)


def test_batched_inference_matches_full_graph_with_all_neighbours(graph):
    module, ages = _module(graph), edge_ages(graph)[0]
    full = _full(module, graph, ages)
    batched = embed_all(module, graph, ages, torch.device("cpu"), batch_size=64, num_neighbors=(-1, -1))
    for nt in ("user", "item"):
        torch.testing.assert_close(batched[nt], full[nt], rtol=1e-4, atol=1e-5)


# ---- no validation / test interaction in any training subgraph ---------------------------------------------------
def _sampled_interactions(loader, graph) -> set[tuple[int, int, int]]:
    """(user, item, time) of every interaction edge, both directions, in every batch of one epoch."""
    time = graph[INTERACTS].time
    seen = set()
    for batch in loader:
        for et, (u_row, i_row) in ((INTERACTS, (0, 1)), (REV, (1, 0))):
            ei, e_id = batch[et].edge_index, batch[et].e_id
            users = batch["user"].n_id[ei[u_row]].tolist()
            items = batch["item"].n_id[ei[i_row]].tolist()
            seen.update(zip(users, items, time[e_id].tolist()))
        # Seed (positive) edges are interactions too: they come from the training edge list.
        seeds_u = batch["user"].n_id[batch["user"].src_index].tolist()
        seeds_i = batch["item"].n_id[batch["item"].dst_pos_index].tolist()
        seed_t = time[batch[INTERACTS].input_id].tolist()
        seen.update(zip(seeds_u, seeds_i, seed_t))
    return seen


def _triples(frame: pl.DataFrame) -> set[tuple[int, int, int]]:
    return set(zip(*(frame[c].to_list() for c in ("user_idx", "item_idx", "timestamp"))))


def test_no_validation_or_test_interaction_in_any_sampled_subgraph(data, graph):
    cfg = HGTConfig(**HGT_TINY)
    torch.manual_seed(0)
    seen = _sampled_interactions(train_loader(graph, cfg), graph)
    held_out = _triples(data.valid) | _triples(data.test)
    assert seen and seen <= _triples(data.train)
    assert not seen & held_out
    # And the check can fail: a graph built over every split does put held-out edges in the subgraphs.
    leaky = dataclasses.replace(data, train=pl.concat([data.train, data.valid, data.test]))
    leaky_graph = build_hetero_graph(leaky)
    assert _sampled_interactions(train_loader(leaky_graph, cfg), leaky_graph) & held_out


def test_config_checks_one_fan_out_per_layer():
    with pytest.raises(ValueError, match="num_neighbors"):
        HGTRecommender(num_layers=3, num_neighbors=(10, 5))


def test_registered_with_quick_overrides():
    model = registry.build("hgt", quick=True, device="cpu", progress=False)
    assert isinstance(model, HGTRecommender)
    assert model.cfg.epochs < HGTConfig().epochs
