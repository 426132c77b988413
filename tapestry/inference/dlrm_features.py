"""What the DLRM ranker reads for one request: dense features per candidate and the sparse ids of its KJT keys.

Everything is computed from the training split (tapestry.training.dlrm_features builds it) and saved with
the model, so training, offline evaluation and
the Triton rerank stage compute the same numbers from (candidates, retrieval scores, time-ordered recent history,
user attribute multi-hot) — the tensors the rerank stage already receives.

Sparse keys (one TorchRec table each unless noted; all mean-pooled):
  item                the candidate                            (table "item")
  history             the user's last `history_len` items      (table "item" too: a user is what they watched)
  item_<type>         the candidate's attribute values, per item entity type (genre, brand, ...)
  user_<type>         the user's attribute values, per user entity type (age group, occupation, ...)
  cross_<type>        (user attribute value x the candidate's <type> value) pairs, hashed when many
  user                the user index (only with `user_table`: serving would need the user index routed to rerank)
Dense features (DENSE): see the tuple below; all roughly unit scale, so no per-feature normaliser is stored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from tapestry.inference.feature_reranker import FeatureReranker, RerankTables

DENSE = ("retrieval_z", "retrieval_gap", "rank", "log_popularity", "recent_popularity", "entity_affinity",
         "demographic_lift", "cooc_last", "cooc_recent", "graph_similarity", "history_length")


def ragged_positions(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions into the values, lengths) of `rows` of a CSR-style table, rows in order."""
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    if lengths.sum() == 0:
        return np.zeros(0, np.int64), lengths
    shift = starts - np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(shift, lengths) + np.arange(lengths.sum()), lengths


def gather_ragged(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of `rows` of a CSR-style table, rows in order."""
    pos, lengths = ragged_positions(offsets, rows)
    return values[pos], lengths


def cooc_block(m: sp.csr_matrix, rows: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """m[rows][:, cands] as a dense [L, N] array: the rows' stored entries matched to the candidates by a sorted
    search (scipy's double fancy indexing costs ~2 ms per request; this ~0.1 ms). Shared by the DLRM and fusion
    rerankers' co-occurrence features."""
    pos, lens = ragged_positions(m.indptr, rows)
    cols, vals = m.indices[pos], m.data[pos]
    row_of = np.repeat(np.arange(len(rows)), lens)
    order = np.argsort(cands, kind="stable")
    sorted_c = cands[order]
    at = np.minimum(np.searchsorted(sorted_c, cols), len(cands) - 1)
    hit = sorted_c[at] == cols
    block = np.zeros((len(rows), len(cands)), np.float32)
    block[row_of[hit], order[at[hit]]] = vals[hit]
    return block


@dataclass
class Lists:
    """A batch of candidate lists, padded to N columns (candidate 0 = padding)."""
    cands: np.ndarray                      # [B, N] int64
    dense: np.ndarray                      # [B, N, len(DENSE)] float32
    history: list[np.ndarray]              # per list: last history_len items, time order
    user_attrs: list[np.ndarray]           # per list: indices into RerankTables.attr_names
    users: np.ndarray                      # [B] user index (0 when unknown, e.g. in serving)
    positive: np.ndarray | None = None     # [B] index of the target in its list (training only)
    task_labels: np.ndarray | None = None  # [B, T] 1 where the target's event counts for the task

    def __len__(self) -> int:
        return len(self.cands)

    @staticmethod
    def concat(parts: list["Lists"]) -> "Lists":
        """Serving lists of several requests as one batch, each padded to the longest list (candidate 0)."""
        n = max(part.cands.shape[1] for part in parts)
        cands = np.concatenate([np.pad(part.cands, ((0, 0), (0, n - part.cands.shape[1]))) for part in parts])
        dense = np.concatenate([np.pad(part.dense, ((0, 0), (0, n - part.dense.shape[1]), (0, 0)))
                                for part in parts])
        return Lists(cands, dense, [h for part in parts for h in part.history],
                     [a for part in parts for a in part.user_attrs], np.concatenate([part.users for part in parts]))

    def take(self, idx: np.ndarray) -> "Lists":
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Lists(self.cands[idx], self.dense[idx], [self.history[i] for i in idx],
                     [self.user_attrs[i] for i in idx], self.users[idx], pick(self.positive), pick(self.task_labels))


@dataclass
class RankerFeatures:
    rerank: RerankTables                   # log popularity, entity profile, demographic lift (shared code)
    item_types: list[str]
    item_attr: dict[str, tuple[np.ndarray, np.ndarray]]  # type -> (offsets, value ids 1..V)
    item_vocab: dict[str, int]             # type -> number of values + 1 (row 0 unused)
    user_type_of: np.ndarray               # [A] type index of each user attribute (RerankTables.attr_names)
    user_value_of: np.ndarray              # [A] value id (1..V) within its type
    user_types: list[str]
    user_vocab: dict[str, int]
    recent_pop: np.ndarray                 # [num_items] standardised log count in the last share of training
    cooc: sp.csr_matrix                    # [num_items, num_items]
    graph: np.ndarray | None               # [num_items, D] L2-normalised graph item vectors, or None
    history_len: int = 20
    max_history: int = 100                 # the served history window (SASRec max_len): profiles read no more
    cross_buckets: int = 1 << 14
    num_users: int = 0

    # ---- one request ----------------------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return len(self.recent_pop)

    def dense(self, cands: np.ndarray, scores: np.ndarray, history: np.ndarray, user_attrs: np.ndarray) -> np.ndarray:
        """[N, len(DENSE)] for one request; `history` time-ordered (0 padding allowed), `user_attrs` multi-hot."""
        history = history[history > 0][-self.max_history:]
        base = FeatureReranker(self.rerank).features(cands, scores, history, user_attrs)   # z, pop, affinity, lift
        s = scores.astype(np.float32)
        recent = history[-self.history_len:]
        n = len(cands)
        cooc_last = np.zeros(n, np.float32)
        cooc_recent = np.zeros(n, np.float32)
        graph = np.zeros(n, np.float32)
        if recent.size:
            block = self._cooc_block(recent, cands)                            # [L, N]
            cooc_last, cooc_recent = block[-1], block.mean(axis=0)
            if self.graph is not None:
                profile = self.graph[recent].mean(axis=0)
                graph = self.graph[cands] @ (profile / max(float(np.linalg.norm(profile)), 1e-12))
        return np.stack([base[:, 0], (s - s.max()) / 10.0 if n else s, np.log1p(np.arange(n)) / 5.0, base[:, 1],
                         self.recent_pop[cands], base[:, 2], base[:, 3], cooc_last * 10.0, cooc_recent * 10.0,
                         graph, np.full(n, np.log1p(len(history)) / 5.0)], axis=1).astype(np.float32)

    def _cooc_block(self, rows: np.ndarray, cands: np.ndarray) -> np.ndarray:
        return cooc_block(self.cooc, rows, cands)

    def request(self, cands: np.ndarray, scores: np.ndarray, history: np.ndarray, user_attrs: np.ndarray,
                user: int = 0) -> Lists:
        """A one-list batch for serving / evaluation."""
        cands = np.asarray(cands, np.int64)
        hist = history[history > 0]
        return Lists(cands[None], self.dense(cands, scores, history, user_attrs)[None],
                     [hist[-self.history_len:]], [np.flatnonzero(user_attrs > 0)], np.array([user], np.int64))

    # ---- KJT ------------------------------------------------------------------------------------------------
    def keys(self, user_table: bool) -> list[str]:
        return ["item", "history", *(f"item_{t}" for t in self.item_types), *(f"user_{t}" for t in self.user_types),
                *(f"cross_{t}" for t in self.item_types), *(["user"] if user_table else [])]

    def sparse(self, lists: Lists, user_table: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """key -> (values, lengths) over B*N rows (list-major: list 0's candidates first)."""
        b, n = lists.cands.shape
        flat = lists.cands.reshape(-1)
        out = {"item": (flat, np.ones(b * n, np.int64))}
        h_len = np.array([len(h) for h in lists.history], dtype=np.int64)
        out["history"] = (np.concatenate([np.tile(h, n) for h in lists.history]) if b else np.zeros(0, np.int64),
                          np.repeat(h_len, n))
        for t in self.item_types:
            out[f"item_{t}"] = gather_ragged(*self.item_attr[t], flat)
        for ti, t in enumerate(self.user_types):
            per = [self.user_value_of[a[self.user_type_of[a] == ti]] for a in lists.user_attrs]
            out[f"user_{t}"] = (np.concatenate([np.tile(p, n) for p in per]) if b else np.zeros(0, np.int64),
                                np.repeat(np.array([len(p) for p in per], np.int64), n))
        for t in self.item_types:
            out[f"cross_{t}"] = self._cross(lists, *out[f"item_{t}"], self.item_vocab[t], n)
        if user_table:
            out["user"] = (np.repeat(lists.users, n), np.ones(b * n, np.int64))
        return out

    def _cross(self, lists: Lists, values: np.ndarray, lengths: np.ndarray, vocab: int,
               n: int) -> tuple[np.ndarray, np.ndarray]:
        """Every (user attribute, item attribute value) pair of a row: id = attr * vocab + value, exact while the
        product space fits `cross_buckets`, else hashed into them. Row r of list l holds its item values times
        the user's attributes, so each list is one outer product (a loop over lists, not over rows)."""
        ends = np.concatenate([[0], np.cumsum(lengths)])
        vals, lens = [], []
        for li, attrs in enumerate(lists.user_attrs):
            lo, hi = ends[li * n], ends[(li + 1) * n]
            vals.append((values[lo:hi, None] + attrs[None, :].astype(np.int64) * vocab).reshape(-1))
            lens.append(lengths[li * n:(li + 1) * n] * len(attrs))
        v = np.concatenate(vals) if vals else np.zeros(0, np.int64)
        if self._cross_rows(vocab) == self.cross_buckets:
            v = (v * 2654435761) % self.cross_buckets      # multiplicative hashing spreads neighbouring ids
        return v, (np.concatenate(lens) if lens else np.zeros(0, np.int64))

    def _cross_rows(self, vocab: int) -> int:
        return min(len(self.user_type_of) * vocab, self.cross_buckets)

    def table_sizes(self, user_table: bool) -> dict[str, tuple[int, list[str]]]:
        """table name -> (rows, feature names) for the EmbeddingBagCollection."""
        tables = {"item": (self.num_items, ["item", "history"])}
        tables.update({f"item_{t}": (self.item_vocab[t], [f"item_{t}"]) for t in self.item_types})
        tables.update({f"user_{t}": (self.user_vocab[t], [f"user_{t}"]) for t in self.user_types})
        tables.update({f"cross_{t}": (max(self._cross_rows(self.item_vocab[t]), 1), [f"cross_{t}"])
                       for t in self.item_types})
        if user_table:
            tables["user"] = (self.num_users, ["user"])
        return tables


def flat(keys: list[str], parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, lengths) concatenated key by key: the KJT layout, also what FlatEmbeddingBags reads."""
    values = np.concatenate([parts[k][0] for k in keys]).astype(np.int64)
    lengths = np.concatenate([parts[k][1] for k in keys]).astype(np.int64)
    return torch.from_numpy(values), torch.from_numpy(lengths)


def features_state(f: RankerFeatures) -> dict:
    """A plain dict of tensors / Python values (`torch.load(weights_only=True)` reads it back)."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    r = f.rerank
    return {
        "rerank": {"item_entity": t(r.item_entity), "log_pop": t(r.log_pop), "demo_lift": t(r.demo_lift),
                   "user_attrs": t(r.user_attrs), "attr_names": list(r.attr_names)},
        "item_types": list(f.item_types), "item_vocab": dict(f.item_vocab),
        "item_attr": {k: (t(o), t(v)) for k, (o, v) in f.item_attr.items()},
        "user_type_of": t(f.user_type_of), "user_value_of": t(f.user_value_of), "user_types": list(f.user_types),
        "user_vocab": dict(f.user_vocab), "recent_pop": t(f.recent_pop),
        "cooc": (t(f.cooc.indptr.astype(np.int64)), t(f.cooc.indices.astype(np.int64)), t(f.cooc.data),
                 list(f.cooc.shape)),
        "graph": None if f.graph is None else t(f.graph),
        "history_len": f.history_len, "max_history": f.max_history, "cross_buckets": f.cross_buckets,
        "num_users": f.num_users,
    }


def features_from_state(s: dict) -> RankerFeatures:
    n = lambda x: x.numpy()  # noqa: E731
    r = s["rerank"]
    indptr, indices, data, shape = s["cooc"]
    return RankerFeatures(
        RerankTables(n(r["item_entity"]), n(r["log_pop"]), n(r["demo_lift"]), n(r["user_attrs"]),
                     list(r["attr_names"])),
        list(s["item_types"]), {k: (n(o), n(v)) for k, (o, v) in s["item_attr"].items()}, dict(s["item_vocab"]),
        n(s["user_type_of"]), n(s["user_value_of"]), list(s["user_types"]), dict(s["user_vocab"]),
        n(s["recent_pop"]), sp.csr_matrix((n(data), n(indices), n(indptr)), shape=tuple(shape)),
        None if s["graph"] is None else n(s["graph"]), int(s["history_len"]), int(s["max_history"]),
        int(s["cross_buckets"]), int(s["num_users"]))
