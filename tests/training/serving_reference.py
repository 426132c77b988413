"""An independent reference for the serving contract "exact inner-product retrieval over serving_module()'s
vectors ranks as Recommender.score does".

It shares no code path with `score()`: each history is encoded ALONE, as one row built the way the user-encoder
stage builds it (the newest max_len items, left-padded to the full max_len width, no batch neighbours, no
trimming), and the inner products with the item table and the max over interest vectors are done here in float64
numpy. `score()` batches several histories, pads them to the batch's own width and multiplies in torch.
"""
from __future__ import annotations

import numpy as np
import torch


def brute_force_scores(module: torch.nn.Module, histories, user_attrs: torch.Tensor | None = None) -> np.ndarray:
    """[B, num_items] float64: max over the row's interest vectors of <vector, item vector>; column 0 = -inf."""
    device = module.item_embeddings().device
    table = module.item_embeddings().detach().cpu().double().numpy()                   # [N, D]
    out = np.empty((len(histories), table.shape[0]))
    for row, history in enumerate(histories):
        window = np.asarray(history, dtype=np.int64)[-module.max_len:]
        seq = np.zeros((1, module.max_len), dtype=np.int64)
        seq[0, module.max_len - window.size:] = window
        args = [torch.from_numpy(seq).to(device)]
        if user_attrs is not None:
            args.append(user_attrs[row:row + 1])
        with torch.no_grad():
            vectors = module.encode(*args).detach().cpu().double().numpy().reshape(-1, table.shape[1])  # [K, D]
        out[row] = np.max(vectors @ table.T, axis=0)
    out[:, 0] = -np.inf
    return out


def assert_scores_match(actual: torch.Tensor, expected: np.ndarray) -> None:
    """float32 scores vs the float64 reference; equal -inf in the padding column."""
    np.testing.assert_allclose(actual.detach().cpu().double().numpy(), expected, rtol=1e-5, atol=1e-5)
