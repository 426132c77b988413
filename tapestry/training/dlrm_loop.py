"""The DLRM ranker's training loop: one entry point for one process or many (`torchrun --nproc_per_node N`).

    python -m tapestry.training.dlrm_loop JOB_DIR                          # one process
    torchrun --nproc_per_node 2 -m tapestry.training.dlrm_loop JOB_DIR     # tables sharded over 2 processes

JOB_DIR/job.pt (written by tapestry.training.dlrm.DLRMRecommender.fit, or by hand) holds the config, the feature
tables and the candidate lists; rank 0 writes JOB_DIR/result.pt: the unsharded model state (gathered from the
shards), the chosen task mix and calibration temperature, and the loss / holdout history.

Loss: softmax cross-entropy over each list's retrieved candidates (the lists serving reranks), one term per task,
plus optionally TransE over (item, has-<type>, value) triples on the same tables. Model selection: NDCG@10 of the
target within its candidates on a held-out share of the lists (early stopping, then the task mix); the
temperature of the final softmax is fitted there too, so the served score is a calibrated probability that the
candidate is the user's next interaction.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tapestry.inference.dlrm_ranker import DLRMArchitecture, build_dlrm, final_scores
from tapestry.models.ranking.dlrm import DLRM, listwise_loss, transe_loss
from tapestry.training import distributed as D
from tapestry.training.dlrm_features import Lists, RankerFeatures, to_kjt


@dataclass
class DLRMConfig:
    retriever: str = "sasrec_lightgcn"   # registry name of the model whose candidates are reranked
    graph_from: str | None = "lightgcn"  # registry name of a model whose item vectors give `graph_similarity`
    num_candidates: int = 100            # per list, as serving retrieves them
    embedding_dim: int = 64              # every table's width (= the bottom MLP's output; = SASRec's width)
    bottom_mlp: tuple[int, ...] = (64,)  # hidden widths before the final embedding_dim layer
    top_mlp: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    history_len: int = 20                # items in the history bag and the co-occurrence features
    user_table: bool = False             # a user-id table: off, as each user gives one training list
    item_init: bool = True               # start the item table from the retriever's item vectors (L2-normalised,
                                         # randomly projected to embedding_dim if wider): ~2k training lists
                                         # cannot learn 3k+ item vectors from scratch
    cross_buckets: int = 1 << 14
    like_min_weight: float = 4.0         # single-event-type data with weights (ratings): weight >= this = "like"
    task_mixes: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)   # candidates for the extra tasks' weight, chosen on holdout
    epochs: int = 30
    patience: int = 4                    # epochs without holdout improvement before stopping
    batch_size: int = 32                 # lists per global step (split over the processes)
    sparse_optimizer: str = "rowwise_adagrad"   # sgd | adagrad | rowwise_adagrad (fused into the backward)
    dense_optimizer: str = "adamw"               # adamw | sgd
    sparse_lr: float = 0.01
    # The item table's own lr (None = sparse_lr); 0 keeps it frozen at item_init (with item_init=False: random).
    # On ML-1M, trained: +8.8% on the validation holdout but -3.0% on test; frozen: +5.9% / +0.5% (README, Results).
    item_lr: float | None = 0.0
    dense_lr: float = 5e-4
    weight_decay: float = 1e-4
    kg_weight: float = 0.0               # TransE auxiliary loss weight (0 = off)
    kg_margin: float = 1.0
    kg_batch: int = 128                  # true triples per global step (as many corrupted ones)
    holdout: float = 0.15                # share of lists kept out of training for selection and calibration
    sharding_types: tuple[str, ...] = ("table_wise", "column_wise")
    seed: int = 0


def build_model(cfg: DLRMConfig, features: RankerFeatures, num_tasks: int) -> DLRM:
    return build_dlrm(DLRMArchitecture.from_config(dataclasses.asdict(cfg)), features, num_tasks)


def batch_tensors(features: RankerFeatures, lists: Lists, user_table: bool, kg=None):
    """(dense [R, F], KJT, kg_relation) for a batch; `kg` = (items, relation, values) rows appended after."""
    parts = features.sparse(lists, user_table)
    keys = features.keys(user_table)
    rel = None
    if kg is not None:
        items, rel_np, values = kg
        for k in keys:
            v, ln = parts[k]
            extra = np.zeros(len(items), np.int64)
            if k == "item":
                v, extra = np.concatenate([v, items]), np.ones(len(items), np.int64)
            for r, t in enumerate(features.item_types):
                if k == f"item_{t}":
                    sel = rel_np == r          # a row's tail goes in its own relation's key only
                    v, extra = np.concatenate([v, values[sel]]), sel.astype(np.int64)
            parts[k] = (v, np.concatenate([ln, extra]))
        rel = torch.from_numpy(rel_np)
    dense = torch.from_numpy(lists.dense.reshape(-1, lists.dense.shape[-1]))
    return dense, to_kjt(keys, parts), rel


def kg_triples(features: RankerFeatures, n: int, rng: np.random.Generator):
    """n true (item, relation, value) triples and n corrupted ones (same item and relation, random value)."""
    rels = [(r, *features.item_attr[t]) for r, t in enumerate(features.item_types)]
    r_idx = rng.integers(len(rels), size=n)
    items, values, neg = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    for r, offsets, vals in rels:
        sel = np.flatnonzero(r_idx == r)
        pick = rng.integers(len(vals), size=len(sel))
        items[sel] = np.searchsorted(offsets, pick, side="right") - 1      # the item whose range holds `pick`
        values[sel] = vals[pick]
        neg[sel] = rng.integers(1, features.item_vocab[features.item_types[r]], size=len(sel))
    return np.concatenate([items, items]), np.concatenate([r_idx, r_idx]), np.concatenate([values, neg])


def list_logits(module, features: RankerFeatures, lists: Lists, user_table: bool) -> torch.Tensor:
    dense, kjt, _ = batch_tensors(features, lists, user_table)
    logits, _ = module(dense, kjt)
    return logits.view(len(lists), lists.cands.shape[1], -1)


def ndcg_sum(scores: torch.Tensor, positive: torch.Tensor, k: int = 10) -> float:
    """Sum over lists of 1/log2(rank + 2) when the target ranks in the top k (ties pessimistic)."""
    target = scores[torch.arange(len(positive)), positive].unsqueeze(1)
    rank = (scores >= target).sum(1) - 1
    return float(torch.where(rank < k, 1.0 / torch.log2(rank.double() + 2), torch.zeros_like(rank.double())).sum())


def _fit_temperature(score: torch.Tensor, positive: torch.Tensor) -> float:
    """The T minimising the NLL of softmax(score / T) at the target (a 1-D search over log T)."""
    best, best_nll = 1.0, float("inf")
    finite = torch.isfinite(score)
    for t in np.exp(np.linspace(np.log(0.01), np.log(100), 81)):
        s = torch.where(finite, score / float(t), torch.full_like(score, float("-inf")))
        nll = float(-torch.log_softmax(s, 1)[torch.arange(len(positive)), positive].mean())
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def step_loss(module, features: RankerFeatures, lists: Lists, cfg: DLRMConfig, task_weights: torch.Tensor,
              kg=None, device=torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits [B, N, T]) of one batch: listwise per task, plus TransE on the KG rows when given."""
    dense, kjt, rel = batch_tensors(features, lists, cfg.user_table, kg)
    logits, dist_kg = module(dense.to(device), kjt.to(device), None if rel is None else rel.to(device))
    b, n = lists.cands.shape
    logits = logits.view(b, n, -1)
    loss = listwise_loss(logits, torch.from_numpy(lists.cands > 0).to(device),
                         torch.from_numpy(lists.positive).to(device),
                         torch.from_numpy(lists.task_labels).to(device), task_weights.to(device))
    if dist_kg is not None:
        half = len(dist_kg) // 2               # kg_triples: the true triples first, then their corruptions
        loss = loss + cfg.kg_weight * transe_loss(dist_kg[:half], dist_kg[half:], cfg.kg_margin)
    return loss, logits


def init_item_table(model: DLRM, vectors: np.ndarray) -> None:
    """Copy L2-normalised item vectors into the item table (unit norm keeps the dot interactions in [-1, 1]).
    Rows that are all zero (padding) stay zero."""
    table = model.embedding_bag_collection.embedding_bags["item"].weight
    if vectors.shape[0] != table.shape[0]:
        raise ValueError(f"item_init: {vectors.shape[0]} item vectors for an item table of {table.shape[0]} rows")
    if vectors.shape[1] != table.shape[1]:
        # A fixed random projection to the table's width keeps the vectors' geometry (Johnson-Lindenstrauss).
        proj = np.random.default_rng(0).normal(size=(vectors.shape[1], table.shape[1])) / np.sqrt(table.shape[1])
        vectors = vectors @ proj
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    with torch.no_grad():
        table.copy_(torch.from_numpy(v.astype(np.float32)))


def train_lists(cfg: DLRMConfig, features: RankerFeatures, task_names: list[str], lists: Lists,
                log=print, item_vectors: np.ndarray | None = None) -> dict:
    """Train on `lists` (a `holdout` share kept apart); the result on rank 0, None on other ranks.
    `item_vectors` [num_items, embedding_dim] start the item table when `cfg.item_init`."""
    device = D.init_process_group()
    rank, size = D.world()
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(lists))
    n_hold = int(round(len(lists) * cfg.holdout)) if len(lists) > 1 else 0
    n_hold -= n_hold % size          # equal shares: every rank makes the same number of (collective) forwards
    hold, train = lists.take(np.sort(order[:n_hold])), lists.take(np.sort(order[n_hold:]))
    torch.manual_seed(cfg.seed)                    # every rank builds the same initial weights
    model = build_model(cfg, features, len(task_names))
    if cfg.item_init and item_vectors is not None:
        init_item_table(model, item_vectors)
    place = D.Placement.create(model, model.embedding_bag_collection, device, cfg.sparse_optimizer, cfg.sparse_lr,
                               cfg.dense_lr, cfg.weight_decay, cfg.sharding_types, cfg.embedding_dim // max(size, 1),
                               dense_optimizer=cfg.dense_optimizer,
                               table_lrs=None if cfg.item_lr is None else {"item": cfg.item_lr})
    weights = torch.ones(len(task_names))
    history, best, best_state, stale = [], -1.0, None, 0
    kg_rng = np.random.default_rng(cfg.seed + 1000 * (rank + 1))
    seconds, examples = 0.0, 0
    for epoch in range(cfg.epochs):
        place.module.train()
        perm = rng.permutation(len(train))
        total, steps = 0.0, 0
        t0 = time.perf_counter()
        for start in range(0, len(train) - size + 1, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            idx = idx[:len(idx) - len(idx) % size]
            local = train.take(idx[D.rank_slice(len(idx), rank, size)])
            kg = kg_triples(features, max(cfg.kg_batch // size, 1), kg_rng) if cfg.kg_weight > 0 else None
            loss, _ = step_loss(place.module, features, local, cfg, weights, kg, device)
            b, n = local.cands.shape
            place.optimizer.zero_grad()
            loss.backward()
            place.optimizer.step()
            total, steps, examples = total + loss.item(), steps + 1, examples + b * n
        seconds += time.perf_counter() - t0
        # The epoch's loss over every rank's share (each rank's step loss is the mean over its equal share).
        total, steps = D.all_reduce_sum([total, float(steps)])
        epoch_loss = total / max(steps, 1)
        ndcg = _holdout_ndcg(place, features, hold, cfg, rank, size, device)
        history.append({"epoch": epoch + 1, "loss": epoch_loss, "holdout_ndcg@10": ndcg})
        if rank == 0:
            log(f"[dlrm] epoch {epoch + 1}: loss {epoch_loss:.4f}, holdout ndcg@10 {ndcg:.4f}")
        if ndcg > best:
            best, stale, best_state = ndcg, 0, place.full_state()
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    examples_total = D.all_reduce_sum([float(examples)])[0]
    D.shutdown()
    if rank != 0:
        return None
    mix, temperature, final = _select_mix_and_temperature(cfg, features, task_names, best_state, hold)
    # The same holdout lists in retrieval order (candidates arrive sorted by the retriever): the baseline.
    gain = np.where(hold.positive < 10, 1.0 / np.log2(hold.positive + 2.0), 0.0)
    return {"state": best_state, "task_names": list(task_names), "task_mix": mix, "temperature": temperature,
            "holdout_retrieval_ndcg@10": float(gain.mean()) if len(hold) else 0.0, "holdout_final_ndcg@10": final,
            "history": history, "holdout_ndcg@10": best, "train_seconds": seconds, "processes": size,
            "examples_per_second": examples_total / max(seconds, 1e-9), "train_lists": len(train),
            "holdout_lists": len(hold), "config": dataclasses.asdict(cfg)}


@torch.no_grad()
def _holdout_ndcg(place, features, hold: Lists, cfg, rank, size, device) -> float:
    """Mean NDCG@10 (interaction task alone) over the holdout lists, each rank scoring its share."""
    place.module.eval()
    mine = hold.take(np.arange(len(hold))[D.rank_slice(len(hold), rank, size)])
    total = 0.0
    for s in range(0, len(mine), 64):
        part = mine.take(np.arange(s, min(s + 64, len(mine))))
        logits = list_logits(place.module, features, part, cfg.user_table).cpu()
        total += ndcg_sum(final_scores(logits, torch.from_numpy(part.cands > 0), 0.0), torch.from_numpy(part.positive))
    total, count = D.all_reduce_sum([total, float(len(mine))])
    return total / max(count, 1.0)


@torch.no_grad()
def _select_mix_and_temperature(cfg, features, task_names, state, hold: Lists) -> tuple[float, float, float]:
    """(task mix, temperature, holdout NDCG@10 of the final score)."""
    if len(hold) == 0:
        return 0.0, 1.0, 0.0
    model = build_model(cfg, features, len(task_names))
    model.load_state_dict(state)
    model.eval()
    logits = list_logits(model, features, hold, cfg.user_table)
    mask, pos = torch.from_numpy(hold.cands > 0), torch.from_numpy(hold.positive)
    mixes = cfg.task_mixes if len(task_names) > 1 else (0.0,)
    # Ties keep the first (smallest) mix: an extra task has to earn its weight.
    mix = max(mixes, key=lambda m: (ndcg_sum(final_scores(logits, mask, m), pos), -m))
    final = final_scores(logits, mask, mix)
    return float(mix), _fit_temperature(final, pos), ndcg_sum(final, pos) / len(hold)


def main(argv=None) -> None:
    job = Path((argv or sys.argv[1:])[0])
    # Our own file, written by the parent process a moment ago: it holds dataclasses, hence weights_only=False.
    payload = torch.load(job / "job.pt", map_location="cpu", weights_only=False)
    torch.set_num_threads(int(payload.get("threads", 1)))
    out = train_lists(payload["config"], payload["features"], payload["task_names"], payload["lists"],
                      item_vectors=payload.get("item_vectors"))
    if out is not None:
        torch.save(out, job / "result.pt")


if __name__ == "__main__":
    main()
