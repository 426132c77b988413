"""Sampling statistics: two passes of one sampler agree, a sampler that draws differently is caught."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.sampler import NegativeSampling

from tapestry.training.sampler_contract import link_neighbor_loader
from tapestry.training.sampling_stats import compare_sampling_stats, sampling_stats, skewed_interaction_graph

UI = ("user", "interacts", "item")
BATCH = 256


@pytest.fixture(scope="module")
def graph():
    return skewed_interaction_graph(num_users=1000, num_items=600, num_edges=12_000, seed=0)


def _stats(graph, fanout=(6, 3), seed=0, max_batches=12):
    num_neighbors = {et: list(fanout) for et in graph.edge_types}
    torch.manual_seed(seed)
    loader = link_neighbor_loader(graph, num_neighbors, "pyg", edge_label_index=(UI, graph[UI].edge_index),
                                  batch_size=BATCH, neg_sampling=NegativeSampling("triplet", 2), shuffle=True,
                                  generator=torch.Generator().manual_seed(seed))
    return sampling_stats(loader, graph, num_neighbors, BATCH, max_batches=max_batches)


def test_two_passes_of_one_sampler_agree(graph):
    a, b = _stats(graph, seed=0), _stats(graph, seed=1)
    assert a["batches"] == 12 and a["seeds"] == 12 * BATCH and a["negatives_per_seed"] == 2
    assert max(a["max_in_degree"].values()) <= 6                 # a node is expanded once: never over the fan-out
    result = compare_sampling_stats(a, b)
    assert result["ok"], [c for c in result["checks"] if not c["ok"]]


def test_a_sampler_with_another_fanout_is_caught(graph):
    result = compare_sampling_stats(_stats(graph), _stats(graph, fanout=(2, 1), seed=1))
    failed = {c["check"] for c in result["checks"] if not c["ok"]}
    assert not result["ok"] and any(name.startswith("edges_per_seed") for name in failed)


def test_sampled_neighbours_are_degree_biased(graph):
    """Uniform neighbour sampling reaches items in proportion to their degree: the sampled items' mean log-degree
    is above the catalogue's (the signature a GPU sampler must reproduce)."""
    stats = _stats(graph)
    degree = torch.bincount(graph[UI].edge_index[1], minlength=600)[1:]      # items reached over rev_interacts
    catalogue = float(torch.log2(degree.double() + 1).mean())
    assert stats["neighbour_log2_degree_mean"]["item__rev_interacts__user"] > catalogue + 1
    assert sum(stats["neighbour_degree_hist"]["item__rev_interacts__user"]) == pytest.approx(1.0)


def test_a_tampered_fanout_fails_the_fanout_check(graph):
    a = _stats(graph)
    b = {**a, "max_in_degree": {k: v + 5 for k, v in a["max_in_degree"].items()}}
    checks = {c["check"]: c["ok"] for c in compare_sampling_stats(a, b)["checks"]}
    assert checks["fanout_respected[reference]"] and not checks["fanout_respected[other]"]
