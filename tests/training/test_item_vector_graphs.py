"""training.pipeline.item_vector_graphs: what the export manifest says about the graph behind the served vectors."""
from tapestry.graph.typed import relations_record
from tapestry.training.pipeline import item_vector_graphs


def test_names_the_graph_models_the_served_encoder_reads_with_their_relations():
    graph = relations_record([("user", "play", "item"), ("item", "rev_play", "user"), ("user", "friends", "user")])
    assert graph == {"edge_types": 3, "relations": ["item/rev_play/user", "user/friends/user", "user/play/item"]}
    train_cfg = {"resolved": {"sasrec_rsage": {"graph_from": "rsage", "item_init_from": None},
                              "sasrec_lightgcn": {"graph_from": "lightgcn"}, "two_tower": {}}}
    metrics = {"rsage": {"graph": graph}, "lightgcn": {"valid": {}}}
    assert item_vector_graphs("sasrec_rsage", train_cfg, metrics) == {"rsage": {"via": "graph_from", **graph}}
    # a graph model that records no relations (LightGCN), a model reading none, an old config: nothing claimed
    assert item_vector_graphs("sasrec_lightgcn", train_cfg, metrics) == {}
    assert item_vector_graphs("two_tower", train_cfg, metrics) == {}
    assert item_vector_graphs("sasrec_rsage", {}, metrics) == {}
