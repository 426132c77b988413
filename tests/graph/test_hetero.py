"""The heterogeneous temporal graph on ML-100K: training edges only, mirrored, with entity node types."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from tapestry.config import datasets_dir
from tapestry.etl.movielens import ML1M_AGE_GROUPS, ML100K_GENRES, movielens_100k
from tapestry.etl.pipeline import run_etl
from tapestry.graph import INTERACTS, build_hetero_graph, homogeneous_view
from tapestry.training.data import InteractionData

ML100K = datasets_dir() / "ml-100k"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    if not (ML100K / "u.item").exists():
        pytest.skip("ML-100K not staged")
    res = run_etl(movielens_100k(ML100K), "ml100k", root=tmp_path_factory.mktemp("graph"), log=lambda *a: None)
    return InteractionData.load(res.path)


@pytest.fixture(scope="module")
def graph(data):
    return build_hetero_graph(data)


def _pairs(ei: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, ei.t().tolist()))


def test_only_training_interactions_are_edges(data, graph):
    edges = _pairs(graph[INTERACTS].edge_index)
    train = set(data.train.select("user_idx", "item_idx").rows())
    assert edges == train
    held_out = {p for df in (data.valid, data.test) for p in df.select("user_idx", "item_idx").rows()}
    leaked = held_out - train
    assert len(leaked) == data.valid.height + data.test.height == 2 * 943  # ML-100K has no repeated pairs
    assert not (leaked & edges)
    rev = _pairs(graph["item", "rev_interacts", "user"].edge_index)
    assert not ({(i, u) for u, i in leaked} & rev)


def test_edge_count_order_time_and_weight_match_train(data, graph):
    store = graph[INTERACTS]
    assert store.edge_index.shape == (2, data.train.height)
    assert data.train.height == 100_000 - 2 * 943
    assert store.edge_index.dtype == torch.long
    assert np.array_equal(store.edge_index[0].numpy(), data.train["user_idx"].to_numpy())
    assert np.array_equal(store.edge_index[1].numpy(), data.train["item_idx"].to_numpy())
    assert np.array_equal(store.time.numpy(), data.train["timestamp"].to_numpy())
    assert store.time.dtype == torch.long
    assert np.allclose(store.weight.numpy(), data.train["weight"].to_numpy())
    # per user, the held-out events are not earlier than any training edge
    last_train = data.train.group_by("user_idx").agg(pl.col("timestamp").max().alias("t"))
    later = data.test.join(last_train, on="user_idx")
    assert (later["timestamp"] >= later["t"]).all()


def test_every_edge_type_is_mirrored(graph):
    forward = [et for et in graph.edge_types if not et[1].startswith("rev_")]
    assert len(graph.edge_types) == 2 * len(forward)
    for s, rel, d in forward:
        rev = graph[d, f"rev_{rel}", s]
        assert torch.equal(rev.edge_index, graph[s, rel, d].edge_index.flip(0))
    r = graph["item", "rev_interacts", "user"]
    assert torch.equal(r.time, graph[INTERACTS].time) and torch.equal(r.weight, graph[INTERACTS].weight)


def test_node_types_and_counts(data, graph):
    assert set(graph.node_types) == {"user", "item", "genre", "gender", "age_group", "occupation"}
    assert graph["user"].num_nodes == data.num_users == 944
    assert graph["item"].num_nodes == data.num_items == 1683
    assert graph["genre"].num_nodes == 19 and set(graph["genre"].entity_values) == set(ML100K_GENRES)
    assert graph["gender"].num_nodes == 2 and set(graph["gender"].entity_values) == {"F", "M"}
    assert graph["age_group"].num_nodes == 7 and set(graph["age_group"].entity_values) == set(ML1M_AGE_GROUPS.values())
    occupations = {ln.strip() for ln in (ML100K / "u.occupation").read_text().splitlines() if ln.strip()}
    assert graph["occupation"].num_nodes == 21 and set(graph["occupation"].entity_values) == occupations
    # every real user has exactly one gender/age/occupation edge; every real item at least one genre
    for e in ("gender", "age_group", "occupation"):
        src = graph["user", f"has_{e}", e].edge_index[0]
        assert sorted(src.tolist()) == list(range(1, 944))
    assert set(graph["item", "has_genre", "genre"].edge_index[0].tolist()) == set(range(1, 1683))
    for (s, _, d), store in graph.edge_items():
        ei = store.edge_index
        assert int(ei[0].max()) < graph[s].num_nodes and int(ei[1].max()) < graph[d].num_nodes
        assert int(ei.min()) >= 0


def test_toy_story_genres_in_graph(data, graph):
    toy = data.items.filter(pl.col("item_id") == "1")["item_idx"].item()
    ei = graph["item", "has_genre", "genre"].edge_index
    values = graph["genre"].entity_values
    assert sorted(values[j] for j in ei[1][ei[0] == toy].tolist()) == ["Animation", "Children's", "Comedy"]


def test_oov_node_zero_is_isolated(graph):
    for (s, _, d), store in graph.edge_items():
        ei = store.edge_index
        if s in ("user", "item"):
            assert not (ei[0] == 0).any(), (s, d)
        if d in ("user", "item"):
            assert not (ei[1] == 0).any(), (s, d)


def test_homogeneous_view(graph):
    hv = homogeneous_view(graph)
    start = 0
    for nt in graph.node_types:
        assert hv.offsets[nt] == start and hv.sizes[nt] == graph[nt].num_nodes
        start += hv.sizes[nt]
    assert hv.num_nodes == start == sum(int(graph[nt].num_nodes) for nt in graph.node_types)
    assert hv.edge_index.shape == (2, sum(s.edge_index.shape[1] for s in graph.edge_stores))
    assert int(hv.edge_index.min()) >= 0 and int(hv.edge_index.max()) < hv.num_nodes
    pairs = _pairs(hv.edge_index)
    assert pairs == {(b, a) for a, b in pairs}  # undirected: both directions present
    u, i = hv.slice("user"), hv.slice("item")
    assert (u.stop - u.start, i.stop - i.start) == (944, 1683)
    # the interaction block lands in user x item, shifted by the offsets
    fw = graph[INTERACTS].edge_index
    assert (hv.offsets["user"] + fw[0][0].item(), hv.offsets["item"] + fw[1][0].item()) in pairs
    for nt in ("user", "item"):
        assert hv.offsets[nt] not in set(hv.edge_index.flatten().tolist())  # OOV rows stay isolated


def test_shared_entity_type_between_users_and_items_extends_without_renumbering():
    train = pl.DataFrame({"user_idx": [1, 2], "item_idx": [1, 2], "event_type": ["view"] * 2,
                          "timestamp": [10, 20], "weight": [1.0, 2.0], "session_id": [None, None]},
                         schema_overrides={"weight": pl.Float32, "session_id": pl.String})
    empty = train.head(0)
    d = InteractionData(path=None, num_users=3, num_items=3, train=train, valid=empty, test=empty,
                        items=pl.DataFrame({"item_idx": [1, 2], "item_id": ["a", "b"], "title": [None, None]}),
                        item_entities=pl.DataFrame({"item_idx": [1, 2], "entity_type": ["city"] * 2,
                                                    "entity_value": ["Oslo", "Bergen"]}),
                        user_entities=pl.DataFrame({"user_idx": [1, 2], "entity_type": ["city"] * 2,
                                                    "entity_value": ["Bergen", "Tromso"]}))
    g = build_hetero_graph(d)
    vals = g["city"].entity_values
    assert sorted(vals) == ["Bergen", "Oslo", "Tromso"] and g["city"].num_nodes == 3
    item_e = g["item", "has_city", "city"].edge_index
    user_e = g["user", "has_city", "city"].edge_index
    assert [vals[j] for j in item_e[1].tolist()] == ["Oslo", "Bergen"]
    assert [vals[j] for j in user_e[1].tolist()] == ["Bergen", "Tromso"]
    hv = homogeneous_view(g)
    assert int(hv.edge_index.max()) < hv.num_nodes


def test_entity_type_clashing_with_core_node_type_is_rejected():
    empty = pl.DataFrame(schema={"user_idx": pl.Int64, "item_idx": pl.Int64, "event_type": pl.String,
                                 "timestamp": pl.Int64, "weight": pl.Float32, "session_id": pl.String})
    d = InteractionData(path=None, num_users=1, num_items=2, train=empty, valid=empty, test=empty,
                                     items=pl.DataFrame(), user_entities=pl.DataFrame(schema={"user_idx": pl.Int64,
                                                                                 "entity_type": pl.String,
                                                                                 "entity_value": pl.String}),
                        item_entities=pl.DataFrame({"item_idx": [1], "entity_type": ["user"], "entity_value": ["x"]}))
    with pytest.raises(ValueError, match="clashes"):
        build_hetero_graph(d)
