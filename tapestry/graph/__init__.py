"""Graph building: encoded tables -> a heterogeneous, temporal PyG HeteroData (training split only)."""
from tapestry.graph.hetero import INTERACTS, build_hetero_graph, homogeneous_view

__all__ = ["INTERACTS", "build_hetero_graph", "homogeneous_view"]
