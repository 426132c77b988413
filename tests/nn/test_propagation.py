"""Our CSR propagation against PyG's reference LGConv (edge-list path, normalize=True)."""
from __future__ import annotations

import torch
from torch_geometric.nn.conv import LGConv

from tapestry.nn.propagation import SymmetricPropagation, normalized_adjacency


def _random_undirected(num_nodes=30, num_edges=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, num_nodes - 2, (2, num_edges), generator=g)   # the last two nodes stay isolated
    ei = ei[:, ei[0] != ei[1]]
    return torch.unique(torch.cat([ei, ei.flip(0)], dim=1), dim=1)


def test_forward_equals_pyg_lgconv():
    ei, x = _random_undirected(), torch.randn(30, 8)
    adj = normalized_adjacency(ei, 30)
    torch.testing.assert_close(SymmetricPropagation()(x, adj), LGConv(normalize=True)(x, ei), rtol=1e-5, atol=1e-6)


def test_gradient_equals_pyg_lgconv():
    ei = _random_undirected(seed=1)
    x1 = torch.randn(30, 8, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    w = torch.randn(30, 8)
    (SymmetricPropagation()(x1, normalized_adjacency(ei, 30)) * w).sum().backward()
    (LGConv(normalize=True)(x2, ei) * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_duplicate_edges_count_once_and_isolated_rows_are_zero():
    ei = _random_undirected(seed=2)
    x = torch.randn(30, 4)
    once = SymmetricPropagation()(x, normalized_adjacency(ei, 30))
    twice = SymmetricPropagation()(x, normalized_adjacency(torch.cat([ei, ei], dim=1), 30))
    torch.testing.assert_close(once, twice)
    assert not once[-2:].any()
