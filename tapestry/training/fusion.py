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

Leak precautions. The served retriever was trained on the training split, INCLUDING the targets of these lists:
its scores and ranks at training positions are optimistic (on ML-1M the target sits far higher than at
validation time), so a ranker trained on them learns to over-trust retrieval. With `cross_fit` (default) the
lists are built by a second retriever of the same class and config trained on the training split minus each
user's last `positions` events (`base`), so every training target is as new to it as a validation or test target
is to the served one; `report` gives both retrievers' NDCG@10 at the training positions, measuring the optimism
avoided. The popularity table is computed from `base` too (a training target's own event would add to its count)
and the id table starts from the cross-fitted retriever's items. Not cross-fitted: the frozen graph vectors
(LightGCN over all training edges; item-level, a user's own edges are one of thousands) and, in the served
model, the validation lists, which only select (epochs); with `valid_train_share` > 0 a share of them trains too
and the remaining share selects (then the metrics' "valid" row is partly in-sample).

`score` = the served path: the served retriever's top `num_candidates` unseen items, reranked; -inf elsewhere,
so the shared full-ranking evaluation measures exactly what the rerank stage serves.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from tapestry.inference.fusion_ranker import DENSE, FusionFeatures, FusionReranker, collate
from tapestry.models.ranking.fusion import FusionRanker, listwise_loss
from tapestry.training.base import Recommender, seeded


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
    mlp: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    epochs: int = 12                     # upper bound; early stopping usually ends sooner
    patience: int = 3                    # epochs without a better validation NDCG@10 before stopping
    batch_size: int = 128                # lists per step
    lr: float = 1e-3
    # The id table's own lr (None = lr; 0 = frozen at the retriever's item vectors): ~17k lists on ML-1M for 3.6k
    # item rows invite memorising which items were training targets.
    item_lr: float | None = None
    weight_decay: float = 0.0
    seed: int = 0


def tail_split(data, positions: int):
    """The data the list retriever is cross-fitted on: each user's training events minus the last
    p_u = min(positions, n_u - 1) (every user keeps one event to predict from) as `train`, and the first removed
    event as `valid`: a retriever that selects its epoch on validation then predicts the next item after its
    training data, as the served one does on the real validation split (the real one, `positions` events further
    on, is a much harder target for a sequential model and stopped the twin too early on ML-1M)."""
    tr = data.train.with_row_index("_order").sort("user_idx", "timestamp", "_order")
    tr = tr.with_columns(pl.int_range(pl.len()).over("user_idx").alias("_pos"), pl.len().over("user_idx").alias("_n"))
    tr = tr.with_columns((pl.col("_n") - pl.min_horizontal(pl.lit(positions), pl.col("_n") - 1)).alias("_cut"))
    helpers = ["_order", "_pos", "_n", "_cut"]
    base = tr.filter(pl.col("_pos") < pl.col("_cut")).sort("_order").drop(helpers)
    valid = tr.filter(pl.col("_pos") == pl.col("_cut")).sort("user_idx", "_order").drop(helpers)
    return dataclasses.replace(data, train=base, valid=valid)


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


class FusionRecommender(Recommender):
    Config = FusionConfig
    reranker_kind = "fusion"             # tapestry.inference.rerankers: what the export writes and serves
    served_if_better = True              # the export serves it only when it wins on validation (choose_ranker)

    def __init__(self, config: FusionConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self.retriever: Recommender | None = None
        self.graph_vectors: np.ndarray | None = None
        self.ranker: FusionReranker | None = None
        self.report: dict = {}
        self._upstream: dict[str, Recommender] = {}

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
    def _list_retriever(self, base, graph) -> Recommender:
        """The retriever that builds the training lists: a twin of the served one fitted on `base`."""
        if not self.cfg.cross_fit:
            return self.retriever
        from tapestry.training.sequential import SequentialRecommender

        r = self.retriever
        twin = type(r)(r.cfg, device=r.device_name, progress=self.progress)
        twin.bind(self._upstream)
        if graph is not None and not isinstance(twin, SequentialRecommender):
            from tapestry.graph.hetero import build_hetero_graph
            graph = build_hetero_graph(base)     # the graph of `base`: no edge to a training target
        t0 = time.perf_counter()
        twin.fit(base, None if isinstance(twin, SequentialRecommender) else graph)
        self._log(f"[fusion] cross-fitted {type(r).__name__} on the training split minus each user's last "
                  f"{self.cfg.positions} events ({time.perf_counter() - t0:.0f}s)")
        return twin

    def _lists(self, retriever, ranker: FusionReranker, users, histories, targets, user_attrs):
        """(FusionFeatures with the target inside, its position, retrieval-order NDCG@10 summed over ALL rows, the
        user of each list)."""
        feats, positive, retrieval_ndcg, kept = [], [], 0.0, []
        for (cands, scores), u, hist, t in zip(topk_unseen(retriever, users, histories, self.cfg.num_candidates),
                                               users, histories, targets):
            hit = np.flatnonzero(cands == t)
            if not hit.size:
                continue
            retrieval_ndcg += 1.0 / np.log2(hit[0] + 2.0) if hit[0] < 10 else 0.0
            feats.append(ranker.features(cands, scores, hist, user_attrs[u]))
            positive.append(int(hit[0]))
            kept.append(int(u))
        return feats, np.asarray(positive, np.int64), retrieval_ndcg, np.asarray(kept, np.int64)

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
        base = tail_split(data, c.positions) if c.cross_fit else data
        tables = build_rerank_tables(base)
        self._attrs = tables.user_attrs
        lister = self._list_retriever(base, graph)
        with seeded(torch.device("cpu"), c.seed):
            module = self._new_module(tables, lister)
        ranker = FusionReranker(module.init_args, module.state_dict(), tables.log_pop, tables.user_attrs.shape[1])

        # Training lists: the last `positions` training events of each user, each from the prefix before it.
        seqs = data.sequences(("train",))
        users, prefixes, targets = [], [], []
        for u, s in enumerate(seqs):
            for p in range(1, min(c.positions, len(s) - 1) + 1):
                users.append(u)
                prefixes.append(s[:len(s) - p])
                targets.append(int(s[len(s) - p]))
        users = np.asarray(users, np.int64)
        train_feats, train_pos, lister_ndcg, list_users = self._lists(lister, ranker, users, prefixes, targets,
                                                                      tables.user_attrs)
        self.report = {"training_positions": len(users), "train_lists": len(train_feats),
                       "train_positions_retrieval_ndcg@10": lister_ndcg / max(len(users), 1)}
        if c.cross_fit:   # how optimistic the served retriever is where it was trained: the leak avoided
            served = sum(1.0 / np.log2(np.flatnonzero(cands == t)[0] + 2.0) for (cands, _), t in zip(
                topk_unseen(self.retriever, users, prefixes, 10), targets) if t in cands)
            self.report["train_positions_served_retriever_ndcg@10"] = served / max(len(users), 1)

        # Validation lists: the served retriever given the training history, as the evaluation builds them.
        vu = data.valid["user_idx"].to_numpy().astype(np.int64)
        val_feats, val_pos, val_retrieval, _ = self._lists(self.retriever, ranker, vu, [seqs[u] for u in vu],
                                                           data.valid["item_idx"].to_list(), tables.user_attrs)
        n_valid = len(vu)
        if c.valid_train_share > 0:
            rng = np.random.default_rng(c.seed)
            moved = rng.random(len(val_feats)) < c.valid_train_share
            train_feats += [f for f, m in zip(val_feats, moved) if m]
            train_pos = np.concatenate([train_pos, val_pos[moved]])
            val_feats, val_pos = [f for f, m in zip(val_feats, ~moved) if not m], val_pos[~moved]
            # The held-out share's NDCG is scaled to all of its users: misses are spread evenly by the random split.
            n_valid = int(round(n_valid * (1 - c.valid_train_share)))
        self.report.update({"valid_lists": len(val_feats), "valid_retrieval_ndcg@10": val_retrieval / len(vu)})
        if len(train_feats) < 2 or not val_feats:
            raise ValueError(f"fusion: {len(train_feats)} training lists and {len(val_feats)} validation lists "
                             "with the target among the candidates; too few to train and select")
        self._log(f"[fusion] {len(train_feats):,} training lists from {len(users):,} positions, {len(val_feats):,} "
                  f"validation lists; retrieval-order ndcg@10 at training positions "
                  f"{self.report['train_positions_retrieval_ndcg@10']:.4f}"
                  + (f" (served retriever: {self.report['train_positions_served_retriever_ndcg@10']:.4f})"
                     if c.cross_fit else "") + f", validation {self.report['valid_retrieval_ndcg@10']:.4f}")
        probe = None
        if c.probe_users > 0:
            held = (np.random.default_rng(c.seed + 1).random(data.num_users) < c.probe_users)[list_users]
            probe = (collate([f for f, h in zip(train_feats, held) if h]), torch.from_numpy(train_pos[held]))
            train_feats, train_pos = [f for f, h in zip(train_feats, held) if not h], train_pos[~held]
        best = self._train(module, collate(train_feats), torch.from_numpy(train_pos), collate(val_feats),
                           torch.from_numpy(val_pos), n_valid, probe)
        ranker.model.load_state_dict(best)
        ranker.model.eval()
        self.ranker = ranker
        self.report["fit_seconds"] = round(time.perf_counter() - t_all, 1)
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
        module = FusionRanker(self.num_items, c.dim, c.num_heads, c.history_len, entity.shape[1], width,
                              0 if graph is None else graph.shape[1], tables.user_attrs.shape[1], len(DENSE),
                              tuple(c.mlp), c.dropout)
        init = lister.item_embeddings().detach().cpu().float().numpy()
        if init.shape[1] != c.dim:       # a fixed random projection keeps the geometry (Johnson-Lindenstrauss)
            init = init @ (np.random.default_rng(c.seed).normal(size=(init.shape[1], c.dim)) / np.sqrt(c.dim))
        init = init / max(float(init[1:].std()), 1e-12) * c.dim ** -0.5      # rows of about unit norm
        g = None
        if graph is not None:
            g = torch.from_numpy((graph / np.maximum(np.linalg.norm(graph, axis=1, keepdims=True), 1e-12))
                                 .astype(np.float32))
        module.set_item_tables(torch.from_numpy(init.astype(np.float32)), torch.from_numpy(attrs), g)
        return module

    def _train(self, module: FusionRanker, train, train_pos, val, val_pos, n_valid: int, probe=None) -> dict:
        c = self.cfg
        module = module.to(self.device)
        items = [module.item_emb.weight]
        rest = [p for p in module.parameters() if p is not module.item_emb.weight]
        item_lr = c.lr if c.item_lr is None else c.item_lr
        module.item_emb.weight.requires_grad_(item_lr > 0)
        groups = [{"params": rest}] + ([{"params": items, "lr": item_lr}] if item_lr > 0 else [])
        opt = torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
        best, best_state, best_epoch, stale, history = -1.0, None, 0, 0, []
        dev = lambda b: dataclasses.replace(b, **{f: getattr(b, f).to(self.device)  # noqa: E731
                                                   for f in ("cands", "dense", "history", "user_attrs")})
        with seeded(self.device, c.seed):
            for epoch in range(1, c.epochs + 1):
                t0 = time.perf_counter()
                module.train()
                perm = torch.randperm(len(train))
                total = 0.0
                for s in range(0, len(train), c.batch_size):
                    idx = perm[s:s + c.batch_size]
                    b = dev(train.take(idx))
                    loss = listwise_loss(module(b.cands, b.dense, b.history, b.user_attrs), b.cands,
                                         train_pos[idx].to(self.device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                ndcg = self._valid_ndcg(module, val, val_pos) / n_valid
                loss = total / len(train)
                self.loss_history_.append(loss)
                history.append({"epoch": epoch, "loss": round(loss, 5), "valid_ndcg@10": round(ndcg, 5),
                                "seconds": round(time.perf_counter() - t0, 1)})
                if probe is not None:     # mean over the probe lists (all hold their target), then retrieval order
                    history[-1]["probe_ndcg@10"] = round(self._valid_ndcg(module, *probe) / len(probe[1]), 5)
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
                             f"{history[-1]['probe_retrieval_ndcg@10']:.4f}" if probe is not None else ""))
                if stale >= c.patience:
                    break
        self.report.update({"best_epoch": best_epoch, "best_valid_ndcg@10": best, "history": history})
        # What the training pipeline records in metrics.json for models that stop early on validation.
        self.best_epoch_, self.valid_history_ = best_epoch, [h["valid_ndcg@10"] for h in history]
        return best_state

    @torch.no_grad()
    def _valid_ndcg(self, module, val, val_pos, chunk: int = 512) -> float:
        module.eval()
        total = 0.0
        for s in range(0, len(val), chunk):
            b = val.take(slice(s, s + chunk))
            logits = module(b.cands.to(self.device), b.dense.to(self.device), b.history.to(self.device),
                            b.user_attrs.to(self.device)).masked_fill(b.cands.to(self.device) <= 0, float("-inf"))
            total += float(ndcg_at_10(logits.cpu(), val_pos[s:s + chunk]).sum())
        return total

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
            feats.append(self.ranker.features(cands, scores, np.asarray(hist, np.int64), ua))
            cands_all.append(cands)
        for row, (cands, final) in enumerate(zip(cands_all, self.ranker.score_many(feats))):
            out[row, torch.from_numpy(cands)] = torch.from_numpy(final)
        return out

    def _user_attrs(self) -> np.ndarray:
        """The user-attribute multi-hot the served path reads (the rerank tables' columns; saved with the model)."""
        return self._attrs

    def _get_state(self):
        return {"num_items": self.num_items, "ranker": self.ranker.payload(), "user_attrs": torch.from_numpy(self._attrs),
                "report": _plain(self.report)}

    def _set_state(self, state):
        self.num_items = int(state["num_items"])
        self.ranker = FusionReranker.from_payload(state["ranker"])
        self._attrs = state["user_attrs"].numpy()
        self.report = state.get("report", {})


def _plain(x):
    """JSON-like copy (floats, ints, strings, lists, dicts) for a weights_only-loadable file."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
