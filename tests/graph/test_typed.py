"""The typed graph (issue 19) of a hand-made event table: exactly the expected edges per relation."""
from __future__ import annotations

import dataclasses
import math

import polars as pl
import pytest
import torch

from tapestry.graph import INTERACTS, build_hetero_graph
from tapestry.graph.typed import (TypedGraphConfig, behaviour_types, build_typed_graph, graph_for,
                                  supervision_pairs)
from tapestry.training.data import InteractionData

F32, S = pl.Float32, pl.String
# Training events, sorted by user then time as the ETL writes them. e0..e4 of the docstrings below.
TRAIN = pl.DataFrame(
    {"user_idx": [1, 1, 1, 2, 2], "item_idx": [1, 2, 3, 1, 3],
     "event_type": ["view", "purchase", "purchase", "view", "view"],
     "timestamp": [100, 200, 400, 150, 300], "weight": [1.0, 2.0, 1.0, 1.0, 1.0],
     "session_id": ["s1", "s1", "s2", "s9", None],
     "query": ["Red Shoes", None, None, "red  shoes", None],
     "dwell": [5.0, None, None, None, None], "price": [None, 9.5, None, None, None],
     "device": ["mobile", "mobile", None, None, "desktop"]},
    schema_overrides={"weight": F32, "dwell": F32, "price": F32, "session_id": S, "query": S, "device": S})
# A held-out event: never an edge or a node.
HELD_OUT = TRAIN.head(1).with_columns(pl.lit(2, dtype=pl.Int64).alias("user_idx"), pl.lit(2).alias("item_idx"),
                                      pl.lit(900).alias("timestamp"), pl.lit("s-held").alias("session_id"),
                                      pl.lit("green hat").alias("query"), pl.lit("watch").alias("device"))


def _data(**changes) -> InteractionData:
    d = InteractionData(
        path=None, num_users=3, num_items=4, train=TRAIN, valid=HELD_OUT, test=HELD_OUT.head(0),
        items=pl.DataFrame({"item_idx": [1, 2, 3], "item_id": ["a", "b", "c"], "title": [None] * 3}),
        item_entities=pl.DataFrame({"item_idx": [1, 3], "entity_type": ["genre"] * 2, "entity_value": ["A", "B"]}),
        user_entities=pl.DataFrame(schema={"user_idx": pl.Int64, "entity_type": S, "entity_value": S}),
        user_links=pl.DataFrame({"user_idx": [1, 2], "relation": ["friends"] * 2, "linked_user_idx": [2, 1]}),
        context_columns=("device",))
    return dataclasses.replace(d, **changes)


@pytest.fixture(scope="module")
def graph():
    return build_typed_graph(_data(), TypedGraphConfig(mediated=True))


def _edges(g, et) -> list[tuple[int, int]]:
    return [tuple(p) for p in g[et].edge_index.t().tolist()]


def test_one_relation_per_event_type_with_exactly_its_events(graph):
    assert _edges(graph, ("user", "view", "item")) == [(1, 1), (2, 1), (2, 3)]
    assert _edges(graph, ("user", "purchase", "item")) == [(1, 2), (1, 3)]
    assert behaviour_types(graph) == [("user", "purchase", "item"), ("user", "view", "item")]
    assert INTERACTS not in graph.edge_types


def test_every_relation_has_its_reverse_mirrored_with_the_same_features(graph):
    forward = [et for et in graph.edge_types if not et[1].startswith("rev_")]
    assert len(graph.edge_types) == 2 * len(forward)
    for s, rel, d in forward:
        fwd, rev = graph[s, rel, d], graph[d, f"rev_{rel}", s]
        assert torch.equal(rev.edge_index, fwd.edge_index.flip(0)), rel
        assert set(fwd.keys()) == set(rev.keys()), rel
        for name in set(fwd.keys()) - {"edge_index"}:
            torch.testing.assert_close(rev[name], fwd[name], equal_nan=True)


def test_edge_features_keep_time_weight_dwell_and_price(graph):
    view, purchase = graph["user", "view", "item"], graph["user", "purchase", "item"]
    assert view.time.tolist() == [100, 150, 300] and view.time.dtype == torch.long
    assert purchase.weight.tolist() == [2.0, 1.0]
    assert view.dwell[0].item() == 5.0 and math.isnan(view.dwell[1].item())       # NaN = not given
    assert purchase.price[0].item() == pytest.approx(9.5) and math.isnan(purchase.price[1].item())


def test_a_session_node_links_its_user_and_its_items(graph):
    # sessions in order of first training event: (u1, s1), (u1, s2), (u2, s9); e4 has none
    assert graph["session"].num_nodes == 3 and graph["session"].category.tolist() == [0, 0, 0]
    assert _edges(graph, ("user", "starts", "session")) == [(1, 0), (1, 1), (2, 2)]
    assert graph["user", "starts", "session"].time.tolist() == [100, 400, 150]    # first event of each session
    assert _edges(graph, ("session", "contains", "item")) == [(0, 1), (0, 2), (1, 3), (2, 1)]


def test_queries_are_merged_case_and_space_insensitively(graph):
    assert graph["query"].entity_values == ["red shoes"]
    assert _edges(graph, ("user", "issues", "query")) == [(1, 0), (2, 0)]
    assert _edges(graph, ("query", "leads_to", "item")) == [(0, 1), (0, 1)]


def test_context_values_link_the_user_and_item_of_each_event(graph):
    assert graph["device"].entity_values == ["mobile", "desktop"]
    assert _edges(graph, ("user", "with_device", "device")) == [(1, 0), (1, 0), (2, 1)]
    assert _edges(graph, ("item", "with_device", "device")) == [(1, 0), (2, 0), (3, 1)]


def test_the_mediated_node_links_every_entity_of_its_event(graph):
    # event nodes: e0 (view, session s1, query, mobile), e1 (purchase, s1, mobile), e4 (view, no session, desktop)
    ev = graph["event"]
    assert ev.num_nodes == 3 and ev.event_types == ["purchase", "view"] and ev.category.tolist() == [1, 0, 1]
    assert _edges(graph, ("event", "by", "user")) == [(0, 1), (1, 1), (2, 2)]
    assert _edges(graph, ("event", "on", "item")) == [(0, 1), (1, 2), (2, 3)]
    assert _edges(graph, ("event", "in_session", "session")) == [(0, 0), (1, 0)]
    assert _edges(graph, ("event", "via_query", "query")) == [(0, 0)]
    assert _edges(graph, ("event", "with_device", "device")) == [(0, 0), (1, 0), (2, 1)]
    assert graph["event", "on", "item"].time.tolist() == [100, 200, 300]


def test_entities_and_user_links(graph):
    assert _edges(graph, ("item", "has_genre", "genre")) == [(1, 0), (3, 1)]
    assert _edges(graph, ("user", "friends", "user")) == [(1, 2), (2, 1)]


def test_only_training_events_become_edges_or_nodes(graph):
    assert "watch" not in graph["device"].entity_values and "green hat" not in graph["query"].entity_values
    for (s, _, d), store in graph.edge_items():
        ei = store.edge_index
        if (s, d) == ("user", "item"):
            assert (2, 2) not in set(map(tuple, ei.t().tolist()))
    for nt in ("user", "item"):            # the OOV rows stay isolated
        for (s, _, d), store in graph.edge_items():
            if s == nt:
                assert not (store.edge_index[0] == 0).any()
            if d == nt:
                assert not (store.edge_index[1] == 0).any()


def test_mediated_nodes_are_opt_in_and_the_parts_can_be_switched_off():
    g = build_typed_graph(_data())
    assert "event" not in g.node_types and ("user", "with_device", "device") in g.edge_types
    bare = build_typed_graph(_data(), TypedGraphConfig(sessions=False, queries=False, context=False,
                                                       entities=False, user_links=False))
    assert set(bare.node_types) == {"user", "item"}
    assert set(bare.edge_types) == {("user", "view", "item"), ("item", "rev_view", "user"),
                                    ("user", "purchase", "item"), ("item", "rev_purchase", "user")}


def test_interactions_only_is_the_default_graph_without_entities():
    data = _data()
    g = build_typed_graph(data, TypedGraphConfig.interactions_only())
    assert g.edge_types == [INTERACTS, ("item", "rev_interacts", "user")]
    default = build_hetero_graph(data)
    assert torch.equal(g[INTERACTS].edge_index, default[INTERACTS].edge_index)
    assert torch.equal(g[INTERACTS].time, default[INTERACTS].time)


def test_graph_kinds():
    data = _data()
    none = graph_for(data, "none")
    assert none.edge_types == [INTERACTS, ("item", "rev_interacts", "user")] and none.num_edges == 0
    assert "event" in graph_for(data, "typed_mediated").node_types
    given = build_hetero_graph(data)
    assert graph_for(data, "given", given) is given
    with pytest.raises(ValueError, match="graph must be one of"):
        graph_for(data, "everything")


def test_supervision_pairs_follow_the_target_event_types():
    data = _data()
    assert supervision_pairs(data).t().tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 3]]
    assert supervision_pairs(data, ("purchase",)).t().tolist() == [[1, 2], [1, 3]]


def test_event_types_that_cannot_name_a_relation_are_refused():
    for bad in ("rev_view", "add to cart", "a__b"):
        with pytest.raises(ValueError, match="cannot name a relation"):
            build_typed_graph(_data(train=TRAIN.with_columns(pl.lit(bad).alias("event_type"))))


def test_entity_types_clashing_with_typed_node_types_are_refused():
    clash = pl.DataFrame({"item_idx": [1], "entity_type": ["session"], "entity_value": ["x"]})
    with pytest.raises(ValueError, match="clash"):
        build_typed_graph(_data(item_entities=clash))


def test_a_node_type_named_like_a_relation_stays_a_node_type():
    """Last.fm's `tag` is an event type (a relation) and a context column (a node type) at once."""
    train = TRAIN.rename({"device": "view"})
    g = build_typed_graph(_data(train=train, context_columns=("view",)))
    assert "view" in g.node_types and g["view"].num_nodes == 2
    assert g.get_node_store("view").entity_values == ["mobile", "desktop"]
    assert _edges(g, ("user", "view", "item")) == [(1, 1), (2, 1), (2, 3)]
    assert _edges(g, ("user", "with_view", "view")) == [(1, 0), (1, 0), (2, 1)]
