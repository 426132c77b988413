"""Building the DLRM ranker's feature tables from the training split (tapestry.inference.dlrm_features reads
them at request time), and the TorchRec KJT layout training feeds the sharded model.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from tapestry.inference.dlrm_features import (DENSE, Lists, RankerFeatures, features_from_state, features_state,
                                              flat, gather_ragged, ragged_positions)
from tapestry.training.reranker import build_rerank_tables

__all__ = ["DENSE", "Lists", "RankerFeatures", "build_ranker_features", "cooccurrence", "features_from_state",
           "features_state", "flat", "gather_ragged", "ragged_positions", "to_kjt"]


def _ragged(frame: pl.DataFrame, key: str, value: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR-style (offsets [rows + 1], values) of `value` grouped by integer `key`."""
    frame = frame.sort(key)
    counts = np.bincount(frame[key].to_numpy(), minlength=rows)[:rows]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), frame[value].to_numpy().astype(np.int64)


def cooccurrence(sequences: list[np.ndarray], num_items: int, window: int, top_k: int) -> sp.csr_matrix:
    """Symmetric item-item counts of pairs at most `window` steps apart in a history, cosine-normalised by the
    items' counts, keeping each row's `top_k` largest (bounded size whatever the catalogue)."""
    rows, cols = [], []
    for seq in sequences:
        for d in range(1, window + 1):
            if len(seq) > d:
                rows.append(seq[:-d])
                cols.append(seq[d:])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    m = sp.coo_matrix((np.ones(len(r) * 2, np.float32), (np.concatenate([r, c]), np.concatenate([c, r]))),
                      shape=(num_items, num_items)).tocsr()
    m.setdiag(0)
    m.eliminate_zeros()
    counts = np.bincount(np.concatenate(sequences) if sequences else np.zeros(0, np.int64), minlength=num_items)
    norm = 1.0 / np.sqrt(np.maximum(counts, 1)).astype(np.float32)
    m = sp.csr_matrix(sp.diags(norm) @ m @ sp.diags(norm), dtype=np.float32)
    for i in range(num_items):      # prune per row; rows are short, a Python loop over rows is fine
        lo, hi = m.indptr[i], m.indptr[i + 1]
        if hi - lo > top_k:
            row = m.data[lo:hi]
            row[row < np.partition(row, hi - lo - top_k)[hi - lo - top_k]] = 0
    m.eliminate_zeros()
    return m


def build_ranker_features(data, history_len: int = 20, max_history: int = 100, cooc_window: int = 3,
          cooc_top_k: int = 200, recent_share: float = 0.1, cross_buckets: int = 1 << 14,
          graph: np.ndarray | None = None) -> RankerFeatures:
    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    rerank = build_rerank_tables(data)
    ent = data.item_entities
    item_types = sorted(ent["entity_type"].unique().to_list())
    item_attr, item_vocab = {}, {}
    for t in item_types:
        sub = ent.filter(pl.col("entity_type") == t)
        vocab = {v: i + 1 for i, v in enumerate(sorted(sub["entity_value"].unique().to_list()))}
        sub = sub.with_columns(pl.col("entity_value").replace_strict(vocab, return_dtype=pl.Int64).alias("vid"))
        item_attr[t] = _ragged(sub, "item_idx", "vid", data.num_items)
        item_vocab[t] = len(vocab) + 1
    types = [a.split("=", 1)[0] for a in rerank.attr_names]
    user_types = sorted(set(types))
    user_type_of = np.array([user_types.index(t) for t in types], dtype=np.int64)
    user_value_of = np.zeros(len(types), dtype=np.int64)
    user_vocab = {}
    for ti, t in enumerate(user_types):
        members = np.flatnonzero(user_type_of == ti)           # attr_names is sorted: values in order
        user_value_of[members] = np.arange(1, len(members) + 1)
        user_vocab[t] = len(members) + 1
    tr = data.train.sort("timestamp")
    recent = tr.tail(max(1, int(tr.height * recent_share)))["item_idx"].to_numpy()
    lr = np.log1p(np.bincount(recent, minlength=data.num_items)[:data.num_items].astype(np.float64))
    recent_pop = ((lr - lr[1:].mean()) / (lr[1:].std() + 1e-6)).astype(np.float32)
    seqs = [s for s in data.sequences(("train",)) if len(s)]
    if graph is not None:
        graph = graph / np.maximum(np.linalg.norm(graph, axis=1, keepdims=True), 1e-12)
    return RankerFeatures(rerank, item_types, item_attr, item_vocab, user_type_of, user_value_of, user_types, user_vocab,
               recent_pop, cooccurrence(seqs, data.num_items, cooc_window, cooc_top_k),
               None if graph is None else graph.astype(np.float32), history_len, max_history, cross_buckets,
               data.num_users)


def to_kjt(keys: list[str], parts: dict[str, tuple[np.ndarray, np.ndarray]]):
    from torchrec import KeyedJaggedTensor

    values, lengths = flat(keys, parts)
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.int())
