"""The candidate lists the fusion reranker learns from, and the cross-fitted models that build them honestly.

The served retriever (and the graph model it reads) trained on the whole training split, INCLUDING the targets of
the fusion ranker's training lists (each user's last `positions` training events): at those positions its scores
are optimistic (ML-1M: NDCG@10 of the target 0.207 there vs 0.171 on validation), so a ranker trained on them
would learn to over-trust retrieval. `cross_fit` refits the retriever and every model it reads (the registry's
upstream fields, e.g. LightGCN for sasrec_lightgcn) on `tail_split`'s `base` split, which holds out exactly those
events: a training target is then as new to the twins as a validation or test item is to the served models.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from tapestry.inference.fusion_ranker import FusionFeatures, FusionReranker


def tail_split(data, positions: int):
    """The data the twins are fitted on: each user's training events minus the last p_u = min(positions, n_u - 1)
    (every user keeps one event to predict from) as `train`, and the first removed event as `valid`: a twin that
    selects its epoch on validation then predicts the next item after its training data, as the served model does
    on the real validation split (the real one, `positions` events further on, is a much harder target for a
    sequential model and stopped the twin too early on ML-1M)."""
    tr = data.train.with_row_index("_order").sort("user_idx", "timestamp", "_order")
    tr = tr.with_columns(pl.int_range(pl.len()).over("user_idx").alias("_pos"), pl.len().over("user_idx").alias("_n"))
    tr = tr.with_columns((pl.col("_n") - pl.min_horizontal(pl.lit(positions), pl.col("_n") - 1)).alias("_cut"))
    helpers = ["_order", "_pos", "_n", "_cut"]
    base = tr.filter(pl.col("_pos") < pl.col("_cut")).sort("_order").drop(helpers)
    valid = tr.filter(pl.col("_pos") == pl.col("_cut")).sort("user_idx", "_order").drop(helpers)
    return dataclasses.replace(data, train=base, valid=valid)


def cross_fit(names: list[str], upstream: dict, base, progress=None, log=print) -> dict:
    """Twins of the models `names` and of every model they read (recursively), each a fresh instance of the same
    class and config fitted on `base`, bound to the other twins. Returns {registry name: twin}."""
    from tapestry.graph.hetero import build_hetero_graph
    from tapestry.training import registry

    twins, graph = {}, []

    def twin(n: str):
        if n not in twins:
            model = upstream[n]
            deps = {d: twin(d) for d in registry.upstream_names(n, model.cfg)} if model.cfg is not None else {}
            t = type(model)(model.cfg, device=model.device_name, progress=progress)
            t.bind(deps)
            if not graph:                      # the graph of `base`: no edge to a training target
                graph.append(build_hetero_graph(base))
            t0 = time.perf_counter()
            t.fit(base, graph[0])
            log(f"[fusion] cross-fitted {n} on the training split minus each user's last events "
                f"({time.perf_counter() - t0:.0f}s)")
            twins[n] = t
        return twins[n]

    for name in names:
        twin(name)
    return twins


def topk_unseen(model, users: np.ndarray, histories: list[np.ndarray], n: int, batch_size: int = 512):
    """Yield (candidates, scores), best first, of each (user, history) row: the model's top n items outside the
    history (and never the padding item 0)."""
    for s in range(0, len(users), batch_size):
        hist = histories[s:s + batch_size]
        with torch.no_grad():
            scores = model.score(users[s:s + batch_size], hist).float().cpu().clone()
        rows = np.repeat(np.arange(len(hist)), [len(h) for h in hist])
        cols = np.concatenate(hist) if hist else np.zeros(0, np.int64)
        scores[torch.from_numpy(rows), torch.from_numpy(cols.astype(np.int64))] = float("-inf")
        scores[:, 0] = float("-inf")
        top = torch.topk(scores, min(n, scores.shape[1] - 1), dim=1)
        for r in range(len(hist)):
            finite = torch.isfinite(top.values[r])
            yield top.indices[r][finite].numpy(), top.values[r][finite].numpy()


def ndcg_at_10(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per list 1/log2(rank + 2) of the target when it ranks in the top 10 (ties pessimistic), else 0."""
    target = logits[torch.arange(len(positive)), positive].unsqueeze(1)
    rank = (logits >= target).sum(1) - 1
    return torch.where(rank < 10, 1.0 / torch.log2(rank.double() + 2), torch.zeros_like(rank, dtype=torch.double))


def training_positions(sequences: list[np.ndarray], positions: int, mask_future: bool):
    """(users, prefixes, targets, later items) of the last `positions` training events of each user."""
    users, prefixes, targets, futures = [], [], [], []
    for u, s in enumerate(sequences):
        for p in range(1, min(positions, len(s) - 1) + 1):
            users.append(u)
            prefixes.append(s[:len(s) - p])
            targets.append(int(s[len(s) - p]))
            futures.append(s[len(s) - p + 1:] if mask_future else ())
    return np.asarray(users, np.int64), prefixes, targets, futures


@dataclass
class ListSet:
    """Lists that hold their target: features, the target's index, the user, the candidates left out of the loss."""
    feats: list[FusionFeatures]
    positive: np.ndarray
    users: np.ndarray
    ignore: list[np.ndarray]
    retrieval_ndcg: float = 0.0          # retrieval-order NDCG@10 summed over ALL rows (misses count 0)

    def split(self, keep: np.ndarray) -> tuple["ListSet", "ListSet"]:
        """(the lists where `keep`, the others)."""
        pick = lambda m: ListSet([f for f, k in zip(self.feats, m) if k], self.positive[m], self.users[m],  # noqa
                                 [g for g, k in zip(self.ignore, m) if k])
        return pick(keep), pick(~keep)

    def __add__(self, other: "ListSet") -> "ListSet":
        return ListSet(self.feats + other.feats, np.concatenate([self.positive, other.positive]),
                       np.concatenate([self.users, other.users]), self.ignore + other.ignore)

    def ignore_mask(self, width: int) -> np.ndarray:
        out = np.zeros((len(self.feats), width), bool)
        for i, m in enumerate(self.ignore):
            out[i, :len(m)] = m
        return out


def build_lists(retriever, ranker: FusionReranker, n: int, users, histories, targets, user_attrs,
                futures=None, types_of=None) -> ListSet:
    """The retriever's top `n` unseen items for each (user, history); a list is kept when its target is among them.
    A list's `ignore` marks the candidates that are the user's later items (`futures`). `types_of(user, history)`:
    the history's event types, for a behaviour-aware ranker."""
    feats, positive, kept, ignore, retrieval_ndcg = [], [], [], [], 0.0
    futures = futures if futures is not None else [()] * len(users)
    for (cands, scores), u, hist, t, later in zip(topk_unseen(retriever, users, histories, n), users, histories,
                                                  targets, futures):
        hit = np.flatnonzero(cands == t)
        if not hit.size:
            continue
        retrieval_ndcg += 1.0 / np.log2(hit[0] + 2.0) if hit[0] < 10 else 0.0
        feats.append(ranker.features(cands, scores, hist, user_attrs[u]) if types_of is None
                     else ranker.features(cands, scores, hist, user_attrs[u], types_of(int(u), hist)))
        positive.append(int(hit[0]))
        kept.append(int(u))
        ignore.append(np.isin(cands, np.asarray(later, np.int64)))
    return ListSet(feats, np.asarray(positive, np.int64), np.asarray(kept, np.int64), ignore, retrieval_ndcg)
