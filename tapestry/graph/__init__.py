"""Graph building: encoded tables -> a heterogeneous, temporal PyG HeteroData (training split only).

build_hetero_graph: the default graph (users, items, entity nodes, one `interacts` relation) every model trains on.
build_typed_graph: the opt-in multi-relational graph of the event table (issue 19: a relation per event type,
sessions, queries, context values, mediated event nodes, user links); see tapestry/graph/typed.py.
"""
from tapestry.graph.hetero import INTERACTS, build_hetero_graph, homogeneous_view
from tapestry.graph.typed import TypedGraphConfig, build_typed_graph, graph_for

__all__ = ["INTERACTS", "TypedGraphConfig", "build_hetero_graph", "build_typed_graph", "graph_for",
           "homogeneous_view"]
