"""Run by test_data_parallel.py as `torchrun --nproc_per_node 2 data_parallel_check.py ETL_DIR OUT_PT`.

Every rank fits each model family of `FAMILIES` data-parallel (the real trainers, through the shared minibatch loop
inside a gloo process group); rank 0 writes each fitted module's state dict and loss history. The test fits the same
configurations in one process and compares: one torchrun start for all families keeps the test to seconds.
"""
import sys

import torch

# One place for the configurations: the test imports this module for the single-process reference.
# Dropout and BERT4Rec's random masking are off: with them on, each process draws its own masks, so the steps are
# alike in distribution, not bit for bit (tapestry.training.data_parallel). Batch sizes give several steps per
# epoch, a last global batch of uneven shares, and shares with different numbers of predicted positions.
_SEQ = dict(hidden_dim=8, max_len=10, epochs=1, patience=0, seed=3)
FAMILIES = {
    "sasrec": ("sasrec", dict(_SEQ, num_blocks=1, num_heads=1, dropout=0.0, batch_size=61, loss="softmax")),
    "sasrec_sampled": ("sasrec", dict(_SEQ, num_blocks=1, num_heads=1, dropout=0.0, batch_size=61, loss="sampled",
                                      num_negatives=16)),
    "bert4rec": ("bert4rec", dict(_SEQ, num_blocks=1, num_heads=1, dropout=0.0, mask_prob=0.0, batch_size=61)),
    "comirec": ("comirec", dict(_SEQ, num_interests=2, attn_dim=8, dropout=0.0, positions_per_user=4,
                                batch_size=301)),
    "srgnn": ("srgnn", dict(_SEQ, max_prefixes_per_user=4, batch_size=301)),
    "two_tower": ("two_tower", dict(embedding_dim=8, hidden_dim=16, max_len=10, dropout=0.0, epochs=1, patience=0,
                                    batch_size=301, max_examples_per_user=4, seed=3)),
    "lightgcn_bpr": ("lightgcn", dict(embedding_dim=8, num_layers=1, epochs=1, patience=0, batch_size=1001,
                                      loss="bpr", seed=3)),
    "lightgcn_softmax": ("lightgcn", dict(embedding_dim=8, num_layers=1, epochs=1, patience=0, batch_size=1001,
                                          loss="softmax", num_negatives=32, seed=3)),
}
# The neighbour-sampled GNNs (tapestry.training.link_steps): the FULL neighbourhood (-1 per hop) makes a seed's
# L-hop computation the same in the global batch's subgraph and in a share's; no dropout (SAGE's ID dropout
# included). HGT with its "sampled" loss: its "softmax" scores against each share's own subgraph items.
_GNN = dict(epochs=1, seed=3, num_negatives=2, batch_size=1001)
FAMILIES.update({
    "sage": ("sage", dict(_GNN, embedding_dim=8, num_neighbors=(-1, -1), id_dropout=0.0, dropout=0.0)),
    # PinSage walk neighbourhoods (drawn once per fit, alike on every rank) and walk hard negatives (drawn for
    # the global batch from the steps' generator, like the uniform ones).
    "sage_walks": ("sage", dict(_GNN, embedding_dim=8, num_neighbors=(-1, -1), id_dropout=0.0, dropout=0.0,
                                neighbourhood="walks", walks_per_item=5, walk_top_t=3, hard_negative_ratio=0.5,
                                hard_window=(3, 20))),
    "rsage": ("rsage", dict(_GNN, embedding_dim=8, num_neighbors=(-1,), dropout=0.0)),
    "hgt": ("hgt", dict(_GNN, hidden_dim=8, heads=1, num_layers=2, out_dim=8, num_neighbors=(-1, -1),
                        loss="sampled")),
    "hgt_typed": ("hgt_typed", dict(_GNN, hidden_dim=8, heads=1, num_layers=1, out_dim=8, num_neighbors=(-1,),
                                    loss="sampled")),
    # The reranker over popularity's candidates (closed-form, so both runs rerank the same lists).
    "fusion": ("fusion", dict(retriever="popularity", graph_from=None, cross_fit=False, item_init=False, dim=8,
                              num_heads=1, history_len=10, mlp=(16,), dropout=0.0, num_candidates=20, positions=2,
                              epochs=1, patience=1, batch_size=61, seed=3, sgd_lr=0.05)),   # 0.5 diverges
    # LightGCN with an item content encoder (hashed bags with sparse gradients, SparseAdam beside Adam).
    "lightgcn_content": ("lightgcn_content", dict(embedding_dim=8, num_layers=1, epochs=1, patience=0,
                                                  batch_size=1001, num_negatives=32, text_buckets=1 << 10,
                                                  category_buckets=1 << 8, seed=3)),
    "lightgcn_content_bpr": ("lightgcn_content", dict(embedding_dim=8, num_layers=1, epochs=1, patience=0,
                                                      batch_size=1001, loss="bpr", text_buckets=1 << 10,
                                                      category_buckets=1 << 8, seed=3)),
})


class _SGD(torch.optim.SGD):
    """Stands in for Adam / AdamW (same call): the strict comparison steps with plain SGD, because Adam divides by
    the gradient's root mean square and so turns rounding noise (~1e-9) on parameters whose exact gradient is zero
    (the attention's key bias: a softmax is blind to a shift shared by a row) into moves of a sizeable share of lr.
    The same caveat as the DLRM's equality test (tapestry.training.distributed)."""

    def __init__(self, params, lr, betas=None, weight_decay=0.0, **_):
        super().__init__(params, lr=lr, weight_decay=weight_decay)


SGD_LR = 0.5     # large enough that one step moves the tiny models by ~1e-2 and more


def fit_family(name: str, data, optimizer: str = "adam"):
    """Fit one family: (the module it trained, its weights before training, the recommender)."""
    import importlib

    from tapestry.training import registry

    entry, params = FAMILIES[name]
    params = dict(params)
    sgd_lr = params.pop("sgd_lr", SGD_LR)
    if optimizer == "sgd":
        params["lr"] = sgd_lr
    rec = registry.build(entry, params, device="cpu", progress=False)
    trainer = importlib.import_module(type(rec).__module__)
    captured = {}
    if entry == "fusion":                            # its own epoch loop: spy on the method that trains
        rec.bind({"popularity": registry.build("popularity", None, device="cpu").fit(data)})
        owner, attr, real_loop = type(rec), "_train", type(rec)._train

        def spy(rec_, module, *args, **kwargs):
            captured["module"], captured["init"] = module, {k: v.clone() for k, v in module.state_dict().items()}
            return real_loop(rec_, module, *args, **kwargs)
    else:
        owner, attr, real_loop = trainer, "run_epochs", trainer.run_epochs

        def spy(rec_, module, *args, **kwargs):      # the module the epoch loop trains, and its starting weights
            captured["module"], captured["init"] = module, {k: v.clone() for k, v in module.state_dict().items()}
            return real_loop(rec_, module, *args, **kwargs)

    real_adam, real_adamw, real_sparse = torch.optim.Adam, torch.optim.AdamW, torch.optim.SparseAdam
    setattr(owner, attr, spy)
    if optimizer == "sgd":
        torch.optim.Adam = torch.optim.AdamW = torch.optim.SparseAdam = _SGD   # SGD takes sparse gradients too
    try:
        rec.fit(data)
    finally:
        setattr(owner, attr, real_loop)
        torch.optim.Adam, torch.optim.AdamW, torch.optim.SparseAdam = real_adam, real_adamw, real_sparse
    return captured["module"], captured["init"], rec


def main(etl_dir: str, out_path: str) -> None:
    from tapestry.training import data_parallel
    from tapestry.training import distributed as D
    from tapestry.training.data import InteractionData

    torch.set_num_threads(1)
    D.init_process_group(cuda=False)           # a CPU test (gloo), whatever the machine has
    assert data_parallel.active()
    data = InteractionData.load(etl_dir)
    out = {}
    for optimizer in ("sgd", "adam"):
        for name in FAMILIES:
            module, _, rec = fit_family(name, data, optimizer)
            out[optimizer, name] = {"state": {k: v.detach().clone() for k, v in module.state_dict().items()},
                                    "loss": list(rec.loss_history_)}
    if data_parallel.is_lead():
        torch.save(out, out_path)
    D.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
