"""The fusion-transformer reranker as a Recommender (`fusion` in the registry); serving loads its FusionReranker
(tapestry.inference.fusion_ranker), the module is tapestry.models.ranking.fusion.

    tapestry train --tenant ml1m --models popularity,lightgcn,sasrec_lightgcn,fusion

Training data: MANY candidate lists per user. For each user the last `positions` training events are targets;
the list of target t is the retriever's top `num_candidates` items given the prefix before t (the prefix's items
excluded, as serving excludes the seen), kept when t is among them; the target is never in its own history.
Loss: softmax cross-entropy over each list. Early stopping on the validation lists (the served retriever's
candidates given the training history, target = the validation item): NDCG@10 over ALL validation users (a
target outside the candidates counts 0, as in the full-ranking evaluation), `patience` epochs; the best epoch's
weights are kept and its number recorded (`report["best_epoch"]`).

Leak precautions (tapestry.training.fusion_lists). The served retriever and the graph model it reads were trained
on the training split, INCLUDING these lists' targets: their scores there are optimistic (ML-1M: the target's
NDCG@10 in retrieval order is 0.207 at training positions vs 0.171 on validation), so a ranker trained on them
learns to over-trust retrieval. With `cross_fit` (default) the lists come from twins of that chain (same classes
and configs, here LightGCN and SASRec) fitted on `base`: the training split minus each user's last `positions`
events, so a training target is as new to them as a validation or test item is to the served models (ML-1M:
0.167 at training positions, matching validation). Everything else the ranker reads is built from `base` too and
served as trained: popularity and co-occurrence counts (a target's own event would add to them), the graph
vectors (the twin LightGCN's: the served one has an edge to every training target) and the id table's start.
`report` keeps both retrievers' NDCG@10 at the training positions: the optimism avoided. The user's LATER items
among a training list's candidates are kept out of its softmax (`mask_future`). The validation lists only select
the epoch; with `valid_train_share` > 0 a share of them trains too (then the metrics' "valid" row is partly
in-sample).

`score` = the served path: the served retriever's top `num_candidates` unseen items, reranked; -inf elsewhere,
so the shared full-ranking evaluation measures exactly what the rerank stage serves.

`behaviour=True` (issue 19): each history token also carries its event type (tapestry.models.ranking.behaviour_fusion;
the vocabulary and the per-user type log of tapestry.training.behaviour, as SASRec's behaviour option). Every list
(training, validation, `score`) gets its history's types from that log; served, the rerank stage reads HISTORY_TYPES.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from tapestry.inference.fusion_ranker import DENSE, LOGP, LOGP_SCALE, FusionReranker, collate
from tapestry.models.ranking.behaviour_fusion import BehaviourFusionRanker
from tapestry.models.ranking.fusion import FusionRanker, listwise_loss
from tapestry.training import data_parallel
from tapestry.training.base import Recommender, plain, seeded, shuffled_epoch
from tapestry.training.behaviour import BehaviourLog, event_vocabulary
from tapestry.training.fusion_lists import (build_lists, cross_fit, ndcg_at_10, tail_split, topk_unseen,
                                            training_positions)

__all__ = ["FusionConfig", "FusionRecommender", "tail_split", "topk_unseen"]


@dataclass
class FusionConfig:
    retriever: str = "sasrec_lightgcn"   # registry name of the model whose candidates are reranked
    graph_from: str | None = "lightgcn"  # registry name of a model whose item vectors join the item tokens (frozen)
    num_candidates: int = 100            # per list, as serving retrieves them
    positions: int = 8                   # training targets per user: their last `positions` training events
    cross_fit: bool = True               # build the training lists with a retriever that never saw their targets
    valid_train_share: float = 0.0       # share of validation lists that also train (the rest select epochs)
    # Diagnostic: a share of users whose training-position lists are held out and scored every epoch (history's
    # "probe_ndcg@10", beside retrieval order on the same lists): tells overfitting from a train/serve mismatch.
    probe_users: float = 0.0
    dim: int = 64                        # token width (= SASRec's, so the id table copies its items as they are)
    num_heads: int = 2
    history_len: int = 50                # newest history items the candidate attends to
    cooc: bool = True                    # co-occurrence features (counted on the split the lists were cut from)
    recent: int = 20                     # newest history items the co-occurrence features read
    # Start from the retriever's own ranking: the wide weight on its list log-probabilities at 1 (unscaled) and
    # the MLP's output at 0, so training learns corrections to a strong ranking instead of re-learning it.
    start_from_retriever: bool = True
    # The user's LATER training items among a training list's candidates are left out of its softmax: they are not
    # negatives (the user takes them a few steps on), and as negatives, repeated over a user's overlapping lists,
    # they taught the model to push down exactly what the user takes next (ML-1M: validation fell every epoch
    # while held-out users' training-position lists improved; see the README).
    mask_future: bool = True
    mlp: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    epochs: int = 12                     # upper bound; early stopping usually ends sooner
    patience: int = 3                    # epochs without a better validation NDCG@10 before stopping
    batch_size: int = 128                # lists per step
    lr: float = 1e-3
    # The id table's own lr (None = lr; 0 = frozen at the retriever's item vectors): ~17k lists on ML-1M for 3.6k
    # item rows invite memorising which items were training targets.
    item_lr: float | None = None
    item_init: bool = True               # the id table starts from the list retriever's item table (else random)
    weight_decay: float = 0.0
    behaviour: bool = False              # history tokens also read their event type (issue 19)
    seed: int = 0


class FusionRecommender(Recommender):
    Config = FusionConfig
    reranker_kind = "fusion"             # tapestry.inference.rerankers: what the export writes and serves
    served_if_better = True              # the export serves it only when it wins on validation (choose_ranker)
    parallelism = "data"                 # shuffled_epoch over the lists: DDP under --distributed N

    def __init__(self, config: FusionConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self.retriever: Recommender | None = None
        self.graph_vectors: np.ndarray | None = None
        self.ranker: FusionReranker | None = None
        self.report: dict = {}
        self._upstream: dict[str, Recommender] = {}
        self.event_types_: list[str] = []           # behaviour vocabulary (index i + 1 = event_types_[i])
        self.behaviour_log_: BehaviourLog | None = None

    def bind(self, upstream: dict[str, Recommender]) -> None:
        self._upstream = dict(upstream)          # the cross-fitted retriever is bound to the same inputs
        self.retriever = self.upstream_model(upstream, "retriever")
        if self.cfg.graph_from is not None and self.ranker is None:     # a loaded ranker carries its vectors
            self.graph_vectors = (self.upstream_model(upstream, "graph_from").item_embeddings().detach().cpu()
                                  .float().numpy())

    def _log(self, msg: str) -> None:
        if self.progress is not False:
            print(msg, flush=True)

    # ---- training -----------------------------------------------------------------------------------------
    def _twins(self, base) -> dict[str, Recommender]:
        """The models that build the training lists: twins of the retriever chain fitted on `base` (cross_fit),
        else the served ones (whose scores there are optimistic: an ablation)."""
        if not self.cfg.cross_fit:
            return dict(self._upstream)
        names = [self.cfg.retriever, *([self.cfg.graph_from] if self.cfg.graph_from else [])]
        return cross_fit(names, self._upstream, base, progress=self.progress, log=self._log)

    def fit(self, data, graph=None) -> "FusionRecommender":
        from tapestry.training.reranker import build_rerank_tables

        if self.retriever is None:
            raise RuntimeError("fusion needs its retriever: call bind() first (the training pipeline does)")
        c = self.cfg
        if not 0.0 <= c.valid_train_share < 1.0:
            raise ValueError(f"valid_train_share must be in [0, 1), got {c.valid_train_share}")
        if data.valid.height == 0:
            raise ValueError("fusion selects its epoch on the validation split; this data set has none")
        t_all = time.perf_counter()
        self.num_items = data.num_items
        types_of = None
        if c.behaviour:   # every list's history types come from the user's logged events (all splits)
            self.event_types_ = event_vocabulary(data)
            self.behaviour_log_ = BehaviourLog.from_data(data, self.event_types_)
            types_of = self._types_of
        base = tail_split(data, c.positions) if c.cross_fit else data
        tables = build_rerank_tables(base)          # popularity and co-occurrence: no training target counted
        self._attrs = tables.user_attrs
        twins = self._twins(base)
        lister = twins[c.retriever]
        if c.graph_from is not None:                # the graph vectors the module reads, also when served
            self.graph_vectors = twins[c.graph_from].item_embeddings().detach().cpu().float().numpy()
        with seeded(torch.device("cpu"), c.seed):
            module = self._new_module(tables, lister)
        cooc = None
        if c.cooc:
            from tapestry.training.dlrm_features import cooccurrence

            cooc = cooccurrence([q for q in base.sequences(("train",)) if len(q)], data.num_items, 3, 200)
        ranker = FusionReranker(module.init_args, module.state_dict(), tables.log_pop, tables.user_attrs.shape[1],
                                cooc, c.recent)

        seqs = data.sequences(("train",))
        users, prefixes, targets, futures = training_positions(seqs, c.positions, c.mask_future)
        train = build_lists(lister, ranker, c.num_candidates, users, prefixes, targets, tables.user_attrs, futures,
                            types_of)
        r = self.report = {"training_positions": len(users), "train_lists": len(train.feats),
                           "train_positions_retrieval_ndcg@10": train.retrieval_ndcg / max(len(users), 1)}
        if c.cross_fit:   # how optimistic the served retriever is where it was trained: the leak avoided
            r["train_positions_served_retriever_ndcg@10"] = sum(
                1.0 / np.log2(np.flatnonzero(cands == t)[0] + 2.0) for (cands, _), t in zip(
                    topk_unseen(self.retriever, users, prefixes, 10), targets) if t in cands) / max(len(users), 1)
        # Validation lists: the served retriever given the training history, as the evaluation builds them.
        vu = data.valid["user_idx"].to_numpy().astype(np.int64)
        val = build_lists(self.retriever, ranker, c.num_candidates, vu, [seqs[u] for u in vu],
                          data.valid["item_idx"].to_list(), tables.user_attrs, types_of=types_of)
        r["valid_retrieval_ndcg@10"] = val.retrieval_ndcg / len(vu)
        n_valid = len(vu)
        if c.valid_train_share > 0:
            moved, val = val.split(np.random.default_rng(c.seed).random(len(val.feats)) < c.valid_train_share)
            train = train + moved
            # The held-out share's NDCG is scaled to its users: misses are spread evenly by the random split.
            n_valid = int(round(n_valid * (1 - c.valid_train_share)))
        r["valid_lists"] = len(val.feats)
        if len(train.feats) < 2 or not val.feats:
            raise ValueError(f"fusion: {len(train.feats)} training lists and {len(val.feats)} validation lists "
                             "with the target among the candidates; too few to train and select")
        self._log(f"[fusion] {len(train.feats):,} training lists from {len(users):,} positions, {len(val.feats):,} "
                  f"validation lists; retrieval-order ndcg@10 at training positions "
                  f"{r['train_positions_retrieval_ndcg@10']:.4f}"
                  + (f" (served retriever: {r['train_positions_served_retriever_ndcg@10']:.4f})" if c.cross_fit
                     else "") + f", validation {r['valid_retrieval_ndcg@10']:.4f}")
        probe = None
        if c.probe_users > 0:
            probe_user = np.random.default_rng(c.seed + 1).random(data.num_users) < c.probe_users
            held, train = train.split(probe_user[train.users])
            probe = (collate(held.feats), torch.from_numpy(held.positive), torch.from_numpy(probe_user[val.users]))
        batch = collate(train.feats)
        ignore = train.ignore_mask(batch.cands.shape[1])
        r["masked_future_candidates_per_list"] = round(float(ignore.sum(1).mean()), 3)
        best = self._train(module, batch, torch.from_numpy(train.positive), collate(val.feats),
                           torch.from_numpy(val.positive), n_valid, probe, torch.from_numpy(ignore))
        ranker.model.load_state_dict(best)
        ranker.model.eval()
        self.ranker = ranker
        r["fit_seconds"] = round(time.perf_counter() - t_all, 1)
        return self

    def _new_module(self, tables, lister) -> FusionRanker:
        c = self.cfg
        entity = tables.item_entity > 0                                        # [num_items, E] multi-hot
        width = int(entity.sum(1).max()) if entity.size else 0
        attrs = np.zeros((self.num_items, width), np.int64)
        for i, row in enumerate(entity):
            ids = np.flatnonzero(row) + 1
            attrs[i, :len(ids)] = ids
        graph = self.graph_vectors
        kwargs = dict(dim=c.dim, num_heads=c.num_heads, max_history=c.history_len, num_attr_values=entity.shape[1],
                      attr_width=width, graph_dim=0 if graph is None else graph.shape[1],
                      num_user_attrs=tables.user_attrs.shape[1], num_dense=len(DENSE), mlp=tuple(c.mlp),
                      dropout=c.dropout)
        module = (BehaviourFusionRanker(self.num_items, max(len(self.event_types_), 1), self.event_types_, **kwargs)
                  if c.behaviour else FusionRanker(self.num_items, **kwargs))
        init = None
        if c.item_init:
            init = lister.item_embeddings().detach().cpu().float().numpy()
            if init.shape[1] != c.dim:   # a fixed random projection keeps the geometry (Johnson-Lindenstrauss)
                init = init @ (np.random.default_rng(c.seed).normal(size=(init.shape[1], c.dim)) / np.sqrt(c.dim))
            init = torch.from_numpy((init / max(float(init[1:].std()), 1e-12) * c.dim ** -0.5).astype(np.float32))
        g = None
        if graph is not None:
            g = torch.from_numpy((graph / np.maximum(np.linalg.norm(graph, axis=1, keepdims=True), 1e-12))
                                 .astype(np.float32))
        module.set_item_tables(init, torch.from_numpy(attrs), g)
        if c.start_from_retriever:
            with torch.no_grad():
                module.wide.weight[0, LOGP] = LOGP_SCALE
                module.mlp[-1].weight.zero_()
                module.mlp[-1].bias.zero_()
        return module

    def _train(self, module: FusionRanker, train, train_pos, val, val_pos, n_valid: int, probe=None,
               ignore=None) -> dict:
        c = self.cfg
        module = module.to(self.device)
        items = [module.item_emb.weight]
        rest = [p for p in module.parameters() if p is not module.item_emb.weight]
        item_lr = c.lr if c.item_lr is None else c.item_lr
        module.item_emb.weight.requires_grad_(item_lr > 0)
        groups = [{"params": rest}] + ([{"params": items, "lr": item_lr}] if item_lr > 0 else [])
        opt = torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
        best, best_state, best_epoch, stale, history = -1.0, None, 0, 0, []
        self.epoch_seconds_ = []
        dev = lambda b: dataclasses.replace(b, **{f: getattr(b, f).to(self.device)  # noqa: E731
                                                   for f in ("cands", "dense", "history", "user_attrs",
                                                             "history_types") if getattr(b, f) is not None})
        with seeded(self.device, c.seed):
            for epoch in range(1, c.epochs + 1):
                t0 = time.perf_counter()
                def batch_loss(idx):        # a mean over the lists `idx` (this process's share under DDP)
                    b = dev(train.take(idx))
                    return listwise_loss(module(*b.model_inputs()), b.cands,
                                         train_pos[idx].to(self.device), ignore[idx].to(self.device)), len(idx)

                # The shared minibatch loop: DDP under torchrun (tapestry.training.data_parallel); rank 0 validates.
                loss = shuffled_epoch(module, opt, len(train), c.batch_size, batch_loss)
                self.epoch_seconds_.append(round(time.perf_counter() - t0, 4))   # training only (benchmarks)
                ndcg = data_parallel.from_lead(self._valid_ndcg(module, val, val_pos) / n_valid
                                               if data_parallel.is_lead() else None)
                self.loss_history_.append(loss)
                history.append({"epoch": epoch, "loss": round(loss, 5), "valid_ndcg@10": round(ndcg, 5),
                                "seconds": round(time.perf_counter() - t0, 1)})
                if probe is not None and data_parallel.is_lead():   # probe lists: mean, then retrieval order
                    history[-1]["probe_ndcg@10"] = round(self._valid_ndcg(module, *probe[:2]) / len(probe[1]), 5)
                    # Validation lists of the probe users (never trained on) and of the others, each list's mean.
                    per = self._valid_ndcg(module, val, val_pos, per_list=True)
                    history[-1]["valid_probe_users_ndcg@10"] = round(float(per[probe[2]].mean()), 5)
                    history[-1]["valid_other_users_ndcg@10"] = round(float(per[~probe[2]].mean()), 5)
                    history[-1]["probe_retrieval_ndcg@10"] = round(float(ndcg_at_10(
                        -torch.arange(probe[0].cands.shape[1]).double().expand(len(probe[1]), -1),
                        probe[1]).mean()), 5)
                if ndcg > best:
                    best, best_epoch, stale = ndcg, epoch, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                else:
                    stale += 1
                self._log(f"[fusion] epoch {epoch}/{c.epochs}: loss {loss:.4f}, valid ndcg@10 {ndcg:.4f} (best "
                          f"{best:.4f} at epoch {best_epoch}), {history[-1]['seconds']:.0f}s"
                          + (f"; probe {history[-1]['probe_ndcg@10']:.4f} vs retrieval order "
                             f"{history[-1]['probe_retrieval_ndcg@10']:.4f}, validation lists of probe users "
                             f"{history[-1]['valid_probe_users_ndcg@10']:.4f} / others "
                             f"{history[-1]['valid_other_users_ndcg@10']:.4f}" if "probe_ndcg@10" in history[-1]
                             else ""))
                if stale >= c.patience:
                    break
        self.report.update({"best_epoch": best_epoch, "best_valid_ndcg@10": best, "history": history})
        # What the training pipeline records in metrics.json for models that stop early on validation.
        self.best_epoch_, self.valid_history_ = best_epoch, [h["valid_ndcg@10"] for h in history]
        return best_state

    @torch.no_grad()
    def _valid_ndcg(self, module, val, val_pos, chunk: int = 512, per_list: bool = False):
        """Summed NDCG@10 of the lists (or, `per_list`, each list's)."""
        module.eval()
        total, parts = 0.0, []
        for s in range(0, len(val), chunk):
            b = val.take(slice(s, s + chunk))
            logits = module(*(x.to(self.device) for x in b.model_inputs())).masked_fill(
                b.cands.to(self.device) <= 0, float("-inf"))
            parts.append(ndcg_at_10(logits.cpu(), val_pos[s:s + chunk]))
            total += float(parts[-1].sum())
        return torch.cat(parts) if per_list else total

    # ---- the served path ----------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        """Reranked candidates of the served retriever (log P over each list), -inf for every other item."""
        if self.ranker is None or self.retriever is None:
            raise RuntimeError("fusion is not fitted and bound to its retriever")
        users = np.asarray(user_idx, np.int64)
        out = torch.full((len(users), self.num_items), float("-inf"))
        attrs = self._user_attrs()
        feats, cands_all = [], []
        for (cands, scores), u, hist in zip(topk_unseen(self.retriever, users, list(histories),
                                                        self.cfg.num_candidates), users, histories):
            ua = attrs[u] if 0 < u < len(attrs) else np.zeros(attrs.shape[1], np.float32)
            hist = np.asarray(hist, np.int64)
            feats.append(self.ranker.features(cands, scores, hist, ua) if not self.cfg.behaviour
                         else self.ranker.features(cands, scores, hist, ua, self._types_of(int(u), hist)))
            cands_all.append(cands)
        for row, (cands, final) in enumerate(zip(cands_all, self.ranker.score_many(feats))):
            out[row, torch.from_numpy(cands)] = torch.from_numpy(final)
        return out

    def _types_of(self, user: int, history: np.ndarray) -> np.ndarray:
        """The event types of `history` when it is a prefix of the user's logged events, else unknown (0)."""
        return self.behaviour_log_.types_for(user, history)

    def _user_attrs(self) -> np.ndarray:
        """The user-attribute multi-hot the served path reads (the rerank tables' columns; saved with the model)."""
        return self._attrs

    def _get_state(self):
        state = {"num_items": self.num_items, "ranker": self.ranker.payload(),
                 "user_attrs": torch.from_numpy(self._attrs), "report": plain(self.report)}
        if self.cfg.behaviour:
            state["event_types"] = list(self.event_types_)
            state["behaviour_log"] = self.behaviour_log_.state()
        return state

    def _set_state(self, state):
        self.num_items = int(state["num_items"])
        self.ranker = FusionReranker.from_payload(state["ranker"])
        self._attrs = state["user_attrs"].numpy()
        self.report = state.get("report", {})
        if self.cfg.behaviour:
            self.event_types_ = [str(t) for t in state["event_types"]]
            self.behaviour_log_ = BehaviourLog.from_state(state["behaviour_log"])

