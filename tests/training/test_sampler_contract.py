"""The sampler contract (tapestry.training.sampler_contract): PyG's loader meets it, a broken batch is named, the
switch picks PyG on the CPU; on a CUDA machine with cuGraph-PyG, its loader meets it too (make gpu-check)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch_geometric.sampler import NegativeSampling

from tapestry.graph.hetero import build_hetero_graph
from tapestry.training.data import InteractionData
from tapestry.training.hgt import HGTConfig, _use_cugraph, train_loader
from tapestry.training.sampler_contract import (ContractLoader, SamplerContractError, check_batch,
                                                link_neighbor_loader, use_cugraph)
from tapestry.training.sampling_stats import skewed_interaction_graph

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
UI = ("user", "interacts", "item")
BATCH = 128


def _loader(graph, sampler="pyg", device="cpu", fanout=(5, 3), negatives=3, seed=0):
    torch.manual_seed(seed)
    return link_neighbor_loader(graph, {et: list(fanout) for et in graph.edge_types}, sampler, torch.device(device),
                                edge_label_index=(UI, graph[UI].edge_index), batch_size=BATCH,
                                neg_sampling=NegativeSampling("triplet", negatives), shuffle=True,
                                generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def graph():
    return skewed_interaction_graph(num_users=300, num_items=200, num_edges=3000, seed=0)


@pytest.fixture(scope="module")
def one_batch(graph):
    return next(iter(_loader(graph)))


def _num_nodes(graph):
    return {nt: int(graph[nt].num_nodes) for nt in graph.node_types}


def test_every_pyg_batch_meets_the_contract(graph):
    loader = _loader(graph)
    assert isinstance(loader, ContractLoader) and loader.sampler == "pyg"
    seeds = 0
    for batch in loader:
        sizes = check_batch(batch, _num_nodes(graph), BATCH, require_edge_ids=True)
        assert sizes.negatives_per_seed == 3 and set(sizes.edges) == set(graph.edge_types)
        # local seed indices point at the positives' global nodes
        users = batch["user"].n_id[batch["user"].src_index]
        items = batch["item"].n_id[batch["item"].dst_pos_index]
        pairs = set(zip(graph[UI].edge_index[0].tolist(), graph[UI].edge_index[1].tolist()))
        assert set(zip(users.tolist(), items.tolist())) <= pairs
        seeds += sizes.seeds
    assert seeds == graph[UI].edge_index.size(1)          # one pass = every positive once


def test_hgt_trains_from_a_contract_loader(tiny_etl):
    data = InteractionData.load(tiny_etl)
    graph = build_hetero_graph(data)
    loader = train_loader(graph, HGTConfig(batch_size=64, num_neighbors=(4, 2), num_layers=2))
    assert isinstance(loader, ContractLoader)
    batch = next(iter(loader))                             # the first batch is checked, edge ids required (ages)
    assert check_batch(batch, _num_nodes(graph), 64, require_edge_ids=True).seeds == 64


@pytest.mark.parametrize("breakage, named", [
    (lambda b: delattr(b["item"], "dst_neg_index"), "dst_neg_index"),
    (lambda b: delattr(b["user"], "n_id"), "n_id"),
    (lambda b: setattr(b["user"], "src_index", b["user"].src_index.float()), "int64"),
    (lambda b: setattr(b[UI], "edge_index", b[UI].edge_index + 10_000), "outside"),
    (lambda b: setattr(b["item"], "dst_pos_index", b["item"].dst_pos_index[:-1]), "dst_pos_index"),
    (lambda b: delattr(b[UI], "e_id"), "e_id"),
])
def test_a_broken_batch_is_refused_with_the_field_named(graph, one_batch, breakage, named):
    batch = copy.copy(one_batch)
    breakage(batch)
    with pytest.raises(SamplerContractError, match=named):
        check_batch(batch, _num_nodes(graph), BATCH, require_edge_ids=True)


def test_the_loader_wrapper_stops_at_a_first_batch_that_breaks_the_contract(graph, one_batch):
    broken = copy.copy(one_batch)
    del broken["item"].dst_pos_index
    with pytest.raises(SamplerContractError, match="the cugraph sampler broke the batch contract.*dst_pos_index"):
        list(ContractLoader([broken], _num_nodes(graph), BATCH, sampler="cugraph"))


def test_the_switch_picks_pyg_off_cuda():
    cpu = torch.device("cpu")
    assert not use_cugraph("pyg", cpu) and not use_cugraph("auto", cpu) and not _use_cugraph("auto", cpu)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        use_cugraph("cugraph", cpu)
    with pytest.raises(ValueError, match="sampler must be"):
        use_cugraph("dgl", cpu)


@needs_cuda
def test_cugraph_batches_meet_the_contract_and_sample_like_pyg(graph):
    pytest.importorskip("cugraph_pyg")
    from tapestry.training.sampling_stats import compare_sampling_stats, sampling_stats

    fanout = {et: [5, 3] for et in graph.edge_types}
    loader = _loader(graph, "cugraph", "cuda")
    assert loader.sampler == "cugraph"
    for batch in loader:
        check_batch(batch, _num_nodes(graph), BATCH)
    ours = sampling_stats(_loader(graph, "cugraph", "cuda"), graph, fanout, BATCH)
    ref = sampling_stats(_loader(graph), graph, fanout, BATCH)
    assert compare_sampling_stats(ref, ours, rel_tol=0.2, tv_tol=0.15)["ok"]
