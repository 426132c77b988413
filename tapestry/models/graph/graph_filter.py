"""Closed-form graph filters for collaborative filtering (GF-CF, Shen et al. 2021; BSPM, Choi et al. 2023;
ChebyCF, Kim et al. 2025): no training, only linear algebra on the normalised interaction matrix.

    R~  = D_u^-1/2 R D_i^-1/2           R binary [users, items]; D_u, D_i the user and item degrees
    P~  = R~^T R~                       the normalised item-item graph, eigenvalues in [0, 1]
    s(x) = ( x D^-b h(P~) D^b  +  alpha x D^-c V_k V_k^T D^c ) D^d          (D = D_i)
    x                                   a user's item signal (multi-hot of the history)
    h(l) = sum_j c_j l^j  (j = 1..J)    a polynomial filter: c = (1,) is GF-CF's linear filter; c = (1, -s)
                                        sharpens (BSPM): the strongest, most popular directions are damped,
                                        l = 1 (the degree direction itself) down to 1 - s
    V_k                                 the top-k right singular vectors of R~ (= eigenvectors of P~): the ideal
                                        low-pass, every frequency above the cut-off kept at full weight
    b, c, d                             degree powers: b is ChebyCF's degree normalisation of the filter, c = 1/2
                                        is GF-CF's D^-1/2 V V^T D^1/2, d > 0 favours popular items in the output

GF-CF is c = (1,), b = 0, alpha = 0.3, k = 256, c = 1/2, d = 0.
`x P~` is computed as (x R~^T) R~, two sparse products: the item-item matrix (41k x 41k, 42M non-zeros on
Gowalla) is never formed, dense or sparse. The signal is any set of items, so the same filter scores a user's
history (recommendation), a few recent items (item-to-item graph recall) or a candidate list (a feature).
The Recommender wrapper (I/O, histories, persistence) is tapestry.training.graph_filter.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

DENSE_SVD_MAX = 2048      # below this many items an exact dense SVD is cheaper and deterministic


def normalized_interactions(interactions: sp.spmatrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """(R~ = D_u^-1/2 R D_i^-1/2 as float32 CSR, item degrees). R is binarised first: a repeated event is one
    edge, as in the papers. Users or items without interactions get a zero row / column, never inf."""
    r = sp.csr_matrix(interactions, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.data[:] = 1.0
    du = np.asarray(r.sum(axis=1)).ravel()
    di = np.asarray(r.sum(axis=0)).ravel()
    inv_u = np.where(du > 0, 1.0 / np.sqrt(np.maximum(du, 1.0)), 0.0).astype(np.float32)
    inv_i = np.where(di > 0, 1.0 / np.sqrt(np.maximum(di, 1.0)), 0.0).astype(np.float32)
    norm = (sp.diags(inv_u) @ r @ sp.diags(inv_i)).tocsr().astype(np.float32)
    norm.sort_indices()
    return norm, di


def top_right_singular_vectors(norm: sp.csr_matrix, k: int, solver: str = "randomized", seed: int = 0,
                               oversample: int = 64, iterations: int = 8) -> torch.Tensor:
    """V_k [items, k] (float32, columns by decreasing singular value). k is capped at the matrix rank bound.

    "randomized" (Halko et al., torch.svd_lowrank) costs a few sparse products with k + oversample vectors;
    "arpack" (scipy svds) is exact but its orthogonalisation grows with k^2 * items (minutes at k=512 on
    Gowalla). Only the span of V_k matters (V V^T), so signs and rotations within a tie are irrelevant.
    """
    if solver not in ("randomized", "arpack"):
        raise ValueError(f"svd solver must be 'randomized' or 'arpack', got {solver!r}")
    k = min(k, min(norm.shape) - 1)
    if k <= 0:
        return torch.zeros(norm.shape[1], 0)
    if min(norm.shape) <= DENSE_SVD_MAX:
        _, _, vt = np.linalg.svd(norm.toarray().astype(np.float64), full_matrices=False)
        return torch.from_numpy(np.ascontiguousarray(vt[:k].T, dtype=np.float32))
    if solver == "arpack":
        from scipy.sparse.linalg import svds

        v0 = np.random.default_rng(seed).standard_normal(min(norm.shape))
        _, s, vt = svds(norm.astype(np.float64), k=k, v0=v0)
        order = np.argsort(-s)
        return torch.from_numpy(np.ascontiguousarray(vt[order].T, dtype=np.float32))
    with torch.random.fork_rng(devices=[]):        # seeded without touching the caller's random state
        torch.manual_seed(seed)
        _, _, v = torch.svd_lowrank(_to_torch(norm), q=min(k + oversample, min(norm.shape)), niter=iterations)
    return v[:, :k].contiguous()


def _to_torch(m: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    with warnings.catch_warnings():   # "sparse CSR support is in beta": the products used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                       torch.from_numpy(m.indices.astype(np.int64)),
                                       torch.from_numpy(m.data.astype(np.float32)), size=m.shape,
                                       device=device)


class GraphFilter:
    """s(x) = ( x D^-b h(P~) D^b + alpha x D^-c V_k V_k^T D^c ) D^d for item signals x [B, items] (module doc)."""

    def __init__(self, norm: sp.csr_matrix, item_degree: np.ndarray, factors: torch.Tensor,
                 coefficients: tuple[float, ...] = (1.0,), ideal_weight: float = 0.3, degree_power: float = 0.0,
                 ideal_degree_power: float = 0.5, popularity_power: float = 0.0,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.coefficients = tuple(float(c) for c in coefficients)
        self.ideal_weight = float(ideal_weight)
        self.powers = (float(degree_power), float(ideal_degree_power), float(popularity_power))
        self.norm = _to_torch(norm, self.device)                        # R~   [users, items]
        self.norm_t = _to_torch(norm.T.tocsr(), self.device)            # R~^T [items, users], CSR for fast products
        # Items never seen get degree 1 (any power = 1): their column of R~ and row of V_k are zero, so they score 0.
        self.degree = torch.as_tensor(np.maximum(item_degree, 1.0), dtype=torch.float32, device=self.device)
        self.factors = factors.to(self.device, torch.float32)           # V_k  [items, k]

    @property
    def num_items(self) -> int:
        return self.norm.shape[1]

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """x P~ = (x R~^T) R~ for x [B, items]: two sparse-dense products, O(nnz(R) * B)."""
        return (self.norm_t @ (self.norm @ x.T)).T

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x h(P~) = sum_j c_j x P~^j, one propagation per power."""
        out, power = torch.zeros_like(x), x
        for c in self.coefficients:
            power = self.propagate(power)
            if c:
                out = out + c * power
        return out

    def ideal(self, x: torch.Tensor) -> torch.Tensor:
        """x V_k V_k^T: the signal's projection on the top-k spectrum."""
        return (x @ self.factors) @ self.factors.T

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Scores [B, items] for item signals x [B, items] (dense, on the filter's device)."""
        b, c, d = self.powers
        out = self.linear(x * self.degree.pow(-b)) * self.degree.pow(b)
        if self.ideal_weight and self.factors.shape[1]:
            out = out + self.ideal_weight * self.ideal(x * self.degree.pow(-c)) * self.degree.pow(c)
        return out * self.degree.pow(d) if d else out
