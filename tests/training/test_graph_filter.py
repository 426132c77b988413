"""The closed-form graph filter: the shared Recommender API, and its scores against a hand computation and an
independent dense numpy implementation of the same formula."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tapestry.models.graph.graph_filter import GraphFilter, normalized_interactions, top_right_singular_vectors
from tapestry.training import registry
from tapestry.training.graph_filter import GraphFilterRecommender

from .recommender_mixin import RecommenderMixin

TINY = dict(num_factors=16, ideal_weight=0.3, sharpen=0.2, degree_power=0.3, popularity_power=0.1)


class TestGraphFilterRecommender(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return GraphFilterRecommender(**TINY, device=cls.device)

    def test_similar_items_are_the_top_of_the_score(self, model, histories):
        recent = [histories[u][-3:] for u in (1, 2, 3)]
        items, scores = model.similar_items(recent, k=5)
        full = model.score(np.zeros(3, dtype=np.int64), recent)
        for row, given in enumerate(recent):
            assert not set(items[row].tolist()) & set(given.tolist())
            assert torch.all(scores[row][:-1] >= scores[row][1:])
            torch.testing.assert_close(scores[row], full[row, items[row]])
        # The feature view reads the same numbers.
        torch.testing.assert_close(model.item_scores(recent, items.numpy()), scores)

    def test_empty_or_unknown_signal_recalls_nothing(self, model, data):
        items, scores = model.similar_items([np.zeros(0, dtype=np.int64), np.array([data.num_items + 5])], k=4)
        assert not items.any() and torch.isneginf(scores).all()

    def test_registered_as_a_trainable_model(self):
        spec = registry.get("graph_filter")
        assert spec.recommender_class() is GraphFilterRecommender
        assert registry.build("graph_filter", quick=True, device="cpu").cfg.num_factors <= 64


def _dense_reference(r: np.ndarray, x: np.ndarray, k: int, alpha: float, coeffs, b: float, c: float,
                     d: float) -> np.ndarray:
    """The module doc's formula, written independently in dense float64 numpy."""
    r = (r > 0).astype(np.float64)
    du, di = r.sum(1), r.sum(0)
    inv = lambda deg: np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0.0)  # noqa: E731
    rn = np.diag(inv(du)) @ r @ np.diag(inv(di))
    p = rn.T @ rn
    h = sum(cj * np.linalg.matrix_power(p, j + 1) for j, cj in enumerate(coeffs))
    v = np.linalg.svd(rn)[2][:k].T
    power = lambda e: np.diag(np.maximum(di, 1) ** e)      # D^e, an unseen item's degree taken as 1  # noqa: E731
    return (x @ power(-b) @ h @ power(b) + alpha * x @ power(-c) @ v @ v.T @ power(c)) @ power(d)


def test_hand_computed_linear_filter():
    # R = [[1,1,0],[0,1,1],[1,0,0]]: degrees 2,2,1 for users and items, so
    # R~ rows [.5,.5,0], [0,.5,1/sqrt2], [1/sqrt2,0,0] and row 0 of P~ = .5*[.5,.5,0] + (1/sqrt2)*[1/sqrt2,0,0]
    # = [.75, .25, 0]: a user who saw item 0 scores item 1 at 0.25 and item 2 (no 2-hop path) at 0.
    norm, degree = normalized_interactions(sp.csr_matrix([[1, 1, 0], [0, 1, 1], [1, 0, 0]]))
    f = GraphFilter(norm, degree, torch.zeros(3, 0), coefficients=(1.0,), ideal_weight=0.0)
    torch.testing.assert_close(f(torch.tensor([[1.0, 0.0, 0.0]])), torch.tensor([[0.75, 0.25, 0.0]]))


@pytest.mark.parametrize("alpha,coeffs,b,c,d", [(0.0, (1.0,), 0.0, 0.5, 0.0),        # the linear filter alone
                                                 (0.3, (1.0,), 0.0, 0.5, 0.0),        # GF-CF
                                                 (0.4, (1.0, -0.5), 0.3, 0.5, 0.2),   # sharpened, all powers
                                                 (1.0, (0.5, 0.2, -0.1), 0.5, 0.0, -0.3)])
def test_filter_equals_dense_numpy(alpha, coeffs, b, c, d):
    rng = np.random.default_rng(0)
    r = (rng.random((9, 7)) < 0.35).astype(np.float32)
    r[0] = 0                      # a user without interactions
    r[:, 3] = 0                   # an item without interactions: zero column, never inf
    r[[1, 2], [0, 3]] = 2.0       # a repeated event counts once
    x = (rng.random((4, 7)) < 0.4).astype(np.float64)
    x[0, 3] = 1.0                 # a signal on the unseen item contributes nothing
    norm, degree = normalized_interactions(sp.csr_matrix(r))
    k = 3
    f = GraphFilter(norm, degree, top_right_singular_vectors(norm, k), coeffs, alpha, b, c, d)
    got = f(torch.tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, _dense_reference(r, x, k, alpha, coeffs, b, c, d), rtol=1e-5, atol=1e-6)


def test_randomized_svd_spans_the_exact_top_subspace():
    # Above the dense cut-off both sparse solvers run; their projectors V V^T must agree (signs are arbitrary).
    rng = np.random.default_rng(0)
    n = 2100
    # Four communities of different sizes (dense within, sparse noise across): four singular values near 1, a gap.
    block = np.repeat(np.arange(4), [300, 450, 600, 750])
    dense = (block[:, None] == block[None, :]) & (rng.random((n, n)) < 0.05)
    r = sp.csr_matrix((dense | (rng.random((n, n)) < 0.0005)).astype(np.float32))
    norm, _ = normalized_interactions(r)
    a = top_right_singular_vectors(norm, 4, "arpack").double()
    b = top_right_singular_vectors(norm, 4, "randomized", iterations=6).double()
    torch.testing.assert_close(a @ a.T, b @ b.T, atol=2e-3, rtol=0)


def test_recency_decay_weights_the_signal():
    model = GraphFilterRecommender(num_factors=2, recency_decay=0.5, device="cpu")
    model.fit_matrix(sp.csr_matrix(np.eye(5, 6, k=1)))
    x = model.signals([np.array([3, 1, 2, 1]), np.array([0, 9])])   # 1 repeated: its latest position counts
    np.testing.assert_allclose(x[0].numpy(), [0, 1.0, 0.5, 0.125, 0, 0])
    assert not x[1].any()                                          # padding and unknown ids are ignored
