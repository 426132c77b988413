"""The RecTools peer: its SASRec (softmax cross-entropy, the library's documented defaults) on tapestry's split.

Optional (`pip install -e '.[peers]'`): the leaderboard runs it when `rectools` imports. Trained on the train split;
valid users are ranked from their train history, test users from train + valid (the same histories tapestry's
evaluation uses), with seen items filtered — full ranking, so NDCG@10 / Recall@10 from its top-10 are exactly the
protocol's numbers.
"""
from __future__ import annotations

import time

import numpy as np


def available() -> bool:
    try:
        import rectools  # noqa: F401
    except ImportError:
        return False
    return True


def _frame(parts):
    import pandas as pd
    import polars as pl
    from rectools import Columns

    df = pl.concat([p.select("user_idx", "item_idx", "timestamp") for p in parts]).to_pandas()
    return pd.DataFrame({Columns.User: df["user_idx"], Columns.Item: df["item_idx"], Columns.Weight: 1.0,
                         Columns.Datetime: pd.to_datetime(df["timestamp"], unit="s")})


def _per_user(model, dataset, frame, k: int) -> dict[str, np.ndarray]:
    from rectools import Columns

    users = np.sort(frame["user_idx"].to_numpy())
    target = dict(zip(frame["user_idx"].to_list(), frame["item_idx"].to_list()))
    recs = model.recommend(users=users, dataset=dataset, k=k, filter_viewed=True)
    ndcg, recall = np.zeros(len(users)), np.zeros(len(users))
    pos = {u: i for i, u in enumerate(users)}
    for u, item, rank in zip(recs[Columns.User], recs[Columns.Item], recs[Columns.Rank]):
        if target.get(int(u)) == int(item):                     # Rank is 1-based
            ndcg[pos[int(u)]], recall[pos[int(u)]] = 1.0 / np.log2(int(rank) + 1), 1.0
    return {"users": users, f"recall@{k}": recall, f"ndcg@{k}": ndcg}


def run(data, seed: int, epochs: int, k: int = 10, session_max_len: int = 100) -> dict:
    """{"valid": per-user arrays, "test": per-user arrays, "fit_seconds", "epoch_seconds", "params"}."""
    import torch
    from pytorch_lightning import seed_everything
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet

    seed_everything(seed, workers=True)
    params = dict(session_max_len=session_max_len, loss="softmax", epochs=epochs, deterministic=True,
                  item_net_block_types=(IdEmbeddingsItemNet,), recommend_torch_device="cpu",
                  get_trainer_func=None)
    model = SASRecModel(**{k_: v for k_, v in params.items() if v is not None})
    train = Dataset.construct(_frame([data.train]))
    t0 = time.perf_counter()
    model.fit(train)
    fit = time.perf_counter() - t0
    out = {"valid": _per_user(model, train, data.valid, k),
           "test": _per_user(model, Dataset.construct(_frame([data.train, data.valid])), data.test, k),
           "fit_seconds": round(fit, 2), "epoch_seconds": round(fit / epochs, 3), "epochs": epochs,
           "params": {"session_max_len": session_max_len, "loss": "softmax", "epochs": epochs,
                      "n_factors": model.n_factors, "n_blocks": model.n_blocks, "n_heads": model.n_heads,
                      "lr": model.lr, "batch_size": model.batch_size, "torch_threads": torch.get_num_threads()}}
    return out
