"""Run by test_dlrm_distributed.py as `torchrun --nproc_per_node 2 dlrm_sharded_check.py ETL_DIR OUT_JSON`.

Every rank builds the same tiny DLRM twice: whole (the reference, fed the global batch) and sharded by TorchRec
(fed this rank's half). For each sharding type it records how far apart the two are: the outputs, the outputs
after one training step (listwise + TransE loss; Adagrad on the tables, SGD on the rest: see tapestry.training.distributed on Adam) and the
gathered tables. Then the real training loop runs five epochs sharded and rank 0 checks that the gathered state
loads into the unsharded inference model. Rank 0 writes the numbers; the test judges them.
"""
import json
import sys

import numpy as np
import torch

from tapestry.training import distributed as D
from tapestry.training.data import InteractionData
from tapestry.training.dlrm_features import Lists, RankerFeatures, build_ranker_features
from tapestry.training.dlrm_loop import DLRMConfig, build_model, kg_triples, step_loss, train_lists


def tiny_lists(data, feats: RankerFeatures, n_lists: int, n_cands: int, seed: int) -> Lists:
    rng = np.random.default_rng(seed)
    hist = data.sequences(("train",))
    users = rng.choice(np.flatnonzero([len(h) > 0 for h in hist]), n_lists, replace=False)
    cands = np.stack([rng.choice(np.arange(1, data.num_items), n_cands, replace=False) for _ in users])
    attrs = feats.rerank.user_attrs
    dense = np.stack([feats.dense(c, rng.normal(size=n_cands).astype(np.float32), hist[u], attrs[u])
                      for u, c in zip(users, cands)])
    return Lists(cands, dense, [hist[u][-feats.history_len:] for u in users],
                 [np.flatnonzero(attrs[u] > 0) for u in users], users.astype(np.int64),
                 rng.integers(n_cands, size=n_lists), rng.integers(0, 2, size=(n_lists, 2)).astype(np.float32))


def main(etl_dir: str, out_path: str) -> None:
    torch.set_num_threads(1)
    device = D.init_process_group()
    rank, size = D.world()
    data = InteractionData.load(etl_dir)
    feats = build_ranker_features(data, history_len=5, max_history=20)
    lists = tiny_lists(data, feats, n_lists=8, n_cands=6, seed=0)
    mine = lists.take(np.arange(len(lists))[D.rank_slice(len(lists), rank, size)])
    items, rel, values = kg_triples(feats, 8, np.random.default_rng(1))       # 8 true + 8 corrupted, global
    half = len(items) // 2
    pos, neg = np.arange(half)[D.rank_slice(half, rank, size)], np.arange(half, 2 * half)[D.rank_slice(half, rank, size)]
    kg_local = tuple(a[np.concatenate([pos, neg])] for a in (items, rel, values))
    weights = torch.ones(2)
    report = {}
    # Row-wise Adagrad keeps one accumulator per row and column shard, so column-wise takes elementwise Adagrad.
    for sharding, sparse_opt in (("table_wise", "rowwise_adagrad"), ("column_wise", "adagrad"),
                                 ("row_wise", "rowwise_adagrad")):
        cfg = DLRMConfig(embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,), dropout=0.0, kg_weight=0.5,
                         sharding_types=(sharding,), sparse_optimizer=sparse_opt, sparse_lr=0.1, item_lr=None,
                         dense_optimizer="sgd", dense_lr=0.1)
        places = {}
        for name, shard in (("ref", False), ("sharded", True)):
            torch.manual_seed(0)
            model = build_model(cfg, feats, 2)
            places[name] = D.Placement.create(model, model.embedding_bag_collection, device, cfg.sparse_optimizer,
                                              cfg.sparse_lr, cfg.dense_lr, cfg.weight_decay, cfg.sharding_types,
                                              cfg.embedding_dim // size, shard=shard,
                                              dense_optimizer=cfg.dense_optimizer)
        rows = D.rank_slice(len(lists), rank, size)
        diffs = {}
        for when in ("forward", "after_step"):
            ref_loss, ref_logits = step_loss(places["ref"].module, feats, lists, cfg, weights, (items, rel, values))
            loss, logits = step_loss(places["sharded"].module, feats, mine, cfg, weights, kg_local)
            diffs[when] = float((ref_logits[rows] - logits).detach().abs().max())
            if when == "forward":
                for p, l in ((places["ref"], ref_loss), (places["sharded"], loss)):
                    p.optimizer.zero_grad()
                    l.backward()
                    p.optimizer.step()
        full = places["sharded"].full_state()
        if rank == 0:
            ref_state = places["ref"].module.state_dict()
            diffs["state"] = {k: float((full[k] - ref_state[k]).abs().max()) for k in ref_state}
            diffs["plan"] = str(places["sharded"].plan)
        report[sharding] = diffs
    # Learning rates high enough that a few epochs of 3 steps visibly lower the training loss; no early stop.
    cfg = DLRMConfig(embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,), epochs=5, patience=5, batch_size=4,
                     holdout=0.25, kg_weight=0.5, sparse_lr=0.1, dense_lr=3e-3)
    result = train_lists(cfg, feats, ["interact", "like"], tiny_lists(data, feats, 16, 6, seed=2), log=lambda *_: None)
    if rank == 0:
        model = build_model(cfg, feats, 2)
        model.load_state_dict(result["state"])          # the gathered state loads into the unsharded model
        report["train"] = {"processes": result["processes"], "epochs": len(result["history"]),
                           "loss": [h["loss"] for h in result["history"]]}
        with open(out_path, "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
