"""The DLRM ranker as a Recommender (`dlrm` in the registry); serving loads its `DLRMRanker`
(tapestry.inference.dlrm_ranker).

    tapestry train --tenant ml1m --models popularity,lightgcn,sasrec_lightgcn,dlrm                 # one process
    tapestry train --tenant ml1m --models popularity,lightgcn,sasrec_lightgcn,dlrm --distributed 2 # torchrun, 2

Training data are the lists serving reranks: for each validation user, the retriever's top `num_candidates`
unseen items given the training history (tapestry.training.rerank_fit builds the feature reranker's lists the same
way), kept when the validation item is among them. The retriever never trained on those targets, so its scores
look as they will at serving time. With `--distributed N` the lists are written to a job directory and
`torchrun --nproc_per_node N -m tapestry.training.dlrm_loop DIR` trains them with sharded tables; rank 0 gathers
the shards into the unsharded state this class loads: one inference module, however it was trained.

`score` = the ranker's scores on the retriever's candidates, -inf elsewhere, so the shared full-ranking
evaluation measures exactly the served path (a target outside the candidates is a miss at every cut-off).
Its "valid" numbers are in-sample (the lists it trained on, less the holdout); "test" is the honest one.

Tasks: "interact" (the next item, whatever the event) plus one per event type when the data has several, or
"like" (weight >= like_min_weight) for single-type rated data such as MovieLens.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch

from tapestry.inference.dlrm_ranker import DLRMRanker
from tapestry.training.base import Recommender, plain
from tapestry.training.dlrm_features import DENSE, Lists, RankerFeatures, build_ranker_features
from tapestry.training.distributed import torchrun
from tapestry.training.dlrm_loop import DLRMConfig, train_lists

__all__ = ["DLRMConfig", "DLRMRanker", "DLRMRecommender", "candidate_lists", "task_spec"]


def task_spec(data, like_min_weight: float) -> tuple[list[str], object]:
    """(task names, fn(event_type, weight) -> labels) from what the training events hold."""
    types = sorted(data.train["event_type"].unique().to_list())
    if len(types) > 1:
        return ["interact", *types], lambda et, w: [1.0, *(float(et == t) for t in types)]
    weights = data.train["weight"]
    if weights.n_unique() > 1 and float(weights.max()) >= like_min_weight:
        return ["interact", "like"], lambda et, w: [1.0, float(w >= like_min_weight)]
    return ["interact"], lambda et, w: [1.0]


def candidate_lists(retriever, data, features: RankerFeatures, split: str, n: int,
                    labels=None, users: np.ndarray | None = None) -> tuple[Lists, np.ndarray]:
    """The retriever's top-n unseen items per user of `split` (history: the splits before it), as Lists.

    With `labels` (training): only lists whose target is among the candidates, with positive and task labels.
    Returns (lists, users kept)."""
    from tapestry.training.evaluate import HISTORY_SPLITS
    from tapestry.training.rerank_fit import _candidates

    histories = data.sequences(HISTORY_SPLITS[split])
    frame = getattr(data, split)
    target = {u: (i, et, w) for u, i, et, w in frame.select("user_idx", "item_idx", "event_type", "weight").iter_rows()}
    users = np.array(sorted(target), dtype=np.int64) if users is None else users
    rows = []
    for u, hist, cands, scores in _candidates(retriever, users, histories, n):
        item, et, w = target.get(int(u), (0, "", 0.0))
        hit = np.flatnonzero(cands == item)
        if labels is not None and not hit.size:
            continue
        rows.append((int(u), hist, cands, scores, int(hit[0]) if hit.size else -1, labels(et, w) if labels else None))
    width = max((len(r[2]) for r in rows), default=n)
    cands = np.zeros((len(rows), width), np.int64)
    dense = []
    for i, (u, hist, c, s, _, _) in enumerate(rows):
        cands[i, :len(c)] = c
        d = features.dense(c, s, hist, features.rerank.user_attrs[u])
        dense.append(np.pad(d, ((0, width - len(c)), (0, 0))))
    lists = Lists(cands, np.stack(dense) if dense else np.zeros((0, width, len(DENSE)), np.float32),
                  [r[1][r[1] > 0][-features.history_len:] for r in rows],
                  [np.flatnonzero(features.rerank.user_attrs[r[0]] > 0) for r in rows],
                  np.array([r[0] for r in rows], np.int64),
                  np.array([r[4] for r in rows], np.int64) if labels else None,
                  np.array([r[5] for r in rows], np.float32) if labels else None)
    return lists, lists.users


class DLRMRecommender(Recommender):
    Config = DLRMConfig
    parallelism = "model"  # TorchRec-sharded tables under torchrun (tapestry.training.distributed), not DDP
    processes = 1          # set by the training pipeline (`tapestry train --distributed N`)

    def __init__(self, config: DLRMConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self.retriever: Recommender | None = None
        self.graph_vectors: np.ndarray | None = None
        self.ranker: DLRMRanker | None = None
        self.report: dict = {}

    def bind(self, upstream: dict[str, Recommender]) -> None:
        self.retriever = self.upstream_model(upstream, "retriever")      # the model whose candidates it reranks
        if self.cfg.graph_from is not None and self.ranker is None:     # a loaded ranker carries its vectors
            self.graph_vectors = (self.upstream_model(upstream, "graph_from").item_embeddings().detach().cpu()
                                  .float().numpy())

    def fit(self, data, graph=None) -> "DLRMRecommender":
        if self.retriever is None:
            raise RuntimeError("dlrm needs its retriever: call bind() first (the training pipeline does)")
        c = self.cfg
        self.num_items = data.num_items
        max_history = int(getattr(getattr(self.retriever, "cfg", None), "max_len", 100) or 100)
        feats = build_ranker_features(data, history_len=min(c.history_len, max_history), max_history=max_history,
                                     cross_buckets=c.cross_buckets, graph=self.graph_vectors)
        names, labels = task_spec(data, c.like_min_weight)
        lists, _ = candidate_lists(self.retriever, data, feats, "valid", c.num_candidates, labels)
        if len(lists) < 2:
            raise ValueError(f"dlrm: only {len(lists)} validation targets among the retriever's candidates; "
                             "it needs a validation split (leave-one-out) to train on")
        vectors = self.retriever.item_embeddings().detach().cpu().float().numpy() if c.item_init else None
        result = self._train(feats, names, lists, vectors)
        self.report = {k: v for k, v in result.items() if k not in ("state", "config")}
        self.loss_history_ = [h["loss"] for h in result["history"]]
        self.ranker = DLRMRanker(dataclasses.asdict(c), feats, names, result["state"], result["task_mix"], result["temperature"])
        return self

    def _train(self, feats, names, lists, vectors) -> dict:
        if self.processes <= 1:
            return train_lists(self.cfg, feats, names, lists, log=self._log, item_vectors=vectors)
        with tempfile.TemporaryDirectory(prefix="tapestry-dlrm-") as tmp:
            torch.save({"config": self.cfg, "features": feats, "task_names": names, "lists": lists,
                        "item_vectors": vectors},
                       Path(tmp) / "job.pt")
            stdout = torchrun("tapestry.training.dlrm_loop", tmp, self.processes, "dlrm")
            for line in stdout.splitlines():
                if line.startswith("[dlrm]"):
                    self._log(line)
            return torch.load(Path(tmp) / "result.pt", map_location="cpu", weights_only=False)

    def _log(self, msg: str) -> None:
        if self.progress is not False:
            print(msg, flush=True)

    @torch.no_grad()
    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        """The served path as full-catalogue scores: reranked candidates, -inf for every other item."""
        from tapestry.training.rerank_fit import _candidates

        if self.ranker is None or self.retriever is None:
            raise RuntimeError("dlrm is not fitted and bound to its retriever")
        feats = self.ranker.feats
        out = torch.full((len(user_idx), self.num_items), float("-inf"))
        index = {int(u): i for i, u in enumerate(user_idx)}
        table = {int(u): h for u, h in zip(user_idx, histories)}
        attrs = feats.rerank.user_attrs
        for u, hist, cands, scores in _candidates(self.retriever, np.asarray(user_idx), table, self.cfg.num_candidates):
            ua = attrs[u] if 0 < u < len(attrs) else np.zeros(attrs.shape[1], np.float32)
            final = self.ranker.log_scores(self.ranker.features(cands, scores, hist, ua))[0]
            out[index[int(u)], torch.from_numpy(cands)] = final[:len(cands)]
        return out

    def _get_state(self):
        return {"num_items": self.num_items, "ranker": self.ranker.payload(), "report": plain(self.report)}

    def _set_state(self, state):
        self.num_items = int(state["num_items"])
        self.ranker = DLRMRanker.from_payload(state["ranker"])
        self.report = state.get("report", {})

