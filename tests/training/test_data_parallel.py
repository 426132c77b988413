"""Data-parallel training (tapestry.training.data_parallel): 2 CPU processes (gloo) take the same steps as one process
with the same global batch, for every family the shared minibatch loop trains — sequential (SASRec with a full and a
sampled softmax, BERT4Rec, ComiRec, SR-GNN), two-tower (in-batch negatives gathered over the processes), graph
(LightGCN, BPR and sampled softmax; LightGCN with content), the neighbour-sampled GNNs (SAGE, relational SAGE, HGT on the given and the
typed graph: each process samples its share's subgraph, full neighbourhoods) and the fusion reranker — and `tapestry train --distributed 2` runs through torchrun end to end.

The strict comparison steps with SGD (data_parallel_check._SGD says why Adam is not bitwise comparable); the same
fits with the trainers' own Adam are checked for equal losses and all but a few near-zero-gradient elements equal.
One torchrun start runs every family (data_parallel_check.py); the single-process references run here.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from data_parallel_check import FAMILIES, fit_family  # noqa: E402

from tapestry.config import TrainConfig
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.training import data_parallel
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.pipeline import _check_config, run_train

CHECK = Path(__file__).with_name("data_parallel_check.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def etl(tmp_path_factory) -> Path:
    """Its own tenant and root: the end-to-end run writes model versions no other test should see."""
    root = tmp_path_factory.mktemp("ddp-artifacts")
    return run_etl(synthetic_tables(num_users=200, num_items=100, seed=0), "ddp", root=root, log=lambda *_: None).path


@pytest.fixture(scope="module")
def data(etl) -> InteractionData:
    return InteractionData.load(etl)


@pytest.fixture(scope="module")
def two_processes(etl, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp") / "fits.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(CHECK), str(etl),
           str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_processes_take_the_single_process_steps(two_processes, data, family):
    module, init, rec = fit_family(family, data, "sgd")
    ref, got = module.state_dict(), two_processes["sgd", family]
    assert set(got["state"]) == set(ref)
    moved = max(float((ref[k] - init[k]).abs().max()) for k in ref if ref[k].numel())
    worst = {k: float((ref[k] - got["state"][k]).abs().max()) for k in ref if ref[k].numel()}
    assert moved > 1e-4, moved                               # the steps really moved the weights
    assert max(worst.values()) <= 1e-6 + 1e-4 * moved, worst  # ... and identically (float rounding apart)
    np.testing.assert_allclose(got["loss"], rec.loss_history_, rtol=1e-6)   # the epoch loss is the global batch's


@pytest.mark.parametrize("family", list(FAMILIES))
def test_with_adam_only_near_zero_gradients_differ(two_processes, data, family):
    module, _, rec = fit_family(family, data, "adam")
    ref, got = module.state_dict(), two_processes["adam", family]
    diffs = torch.cat([(ref[k].float() - got["state"][k].float()).abs().flatten() for k in ref])
    np.testing.assert_allclose(got["loss"], rec.loss_history_, rtol=1e-6)
    assert float(torch.quantile(diffs, 0.99)) < 1e-6          # nearly every element equal
    assert float(diffs.max()) < rec.cfg.lr                    # and none a whole Adam step apart


def test_tapestry_train_distributed_end_to_end(etl):
    """`tapestry train --distributed 2`: data-parallel fits through torchrun (rank 0 validates and stops early for
    every rank), their state back in the pipeline, evaluated and saved; the same losses as one process."""
    root = etl.parents[2]
    # lr 0.2: validation peaks at epoch 8 of 12 on this data, so patience 1 stops the run after epoch 9.
    seq = dict(hidden_dim=8, num_blocks=1, num_heads=1, max_len=10, dropout=0.0, epochs=12, patience=1, lr=0.2,
               batch_size=61, seed=1)
    cfg = TrainConfig(models=("popularity", "sasrec"), params={"sasrec": seq}, serve="sasrec", session="",
                      device="cpu", distributed=2)
    lines: list[str] = []
    two = run_train("ddp", root=root, cfg=cfg, log=lines.append)
    one = run_train("ddp", root=root, cfg=dataclasses.replace(cfg, distributed=1), log=lambda *_: None)
    m2, m1 = two.metrics["sasrec"], one.metrics["sasrec"]
    assert m2["processes"] == 2 and "processes" not in m1 and "processes" not in two.metrics["popularity"]
    # The chunked softmax CE (training/softmax_ce.py) sums each rank's half-batch in another order than one
    # process does; over nine Adam epochs at lr 0.2 that float32 rounding reaches ~1.5e-5 relative.
    np.testing.assert_allclose(m2["loss_history"], m1["loss_history"], rtol=1e-4)
    assert m2["best_epoch"] == m1["best_epoch"] < len(m2["loss_history"]) == len(m1["loss_history"]) < 12
    assert len(m2["valid_history"]) == len(m1["valid_history"])    # stopped early, at the same epoch
    np.testing.assert_allclose(m2["valid_history"], m1["valid_history"], atol=5e-3)   # same rounding drift
    loaded = Recommender.load(two.path / "sasrec.pt", device="cpu")
    hist = InteractionData.load(etl).sequences(("train",))
    users = np.arange(1, 6)
    reference = Recommender.load(one.path / "sasrec.pt", device="cpu")
    # Nine Adam epochs at lr 0.2 let float rounding grow (the losses still agree to ~1e-6): scores within 0.02.
    torch.testing.assert_close(loaded.score(users, [hist[u] for u in users]),
                               reference.score(users, [hist[u] for u in users]), atol=2e-2, rtol=0)


class _OneProcessOnly:
    parallelism = "single"          # a trainer without a multi-process path


def test_models_that_cannot_are_refused_clearly():
    with pytest.raises(ValueError, match="nothing in models"):
        _check_config(TrainConfig(models=("popularity", "graph_filter"), serve="", distributed=2))
    _check_config(TrainConfig(models=("popularity", "lightgcn", "sasrec_lightgcn", "two_tower", "srgnn_shared"),
                              distributed=2))                # the default line-up trains data-parallel
    _check_config(TrainConfig(models=("popularity", "sage", "rsage", "hgt", "hgt_typed"), serve="", distributed=2))
    with pytest.raises(ValueError, match="_OneProcessOnly does not train data-parallel"):
        data_parallel.check(_OneProcessOnly(), 2)


def test_outside_a_process_group_nothing_changes():
    assert not data_parallel.active() and data_parallel.is_lead()
    t = torch.arange(6.0).reshape(3, 2)
    assert data_parallel.gather_batch(t) == (t, 0) and data_parallel.from_lead({"a": 1}) == {"a": 1}


def test_a_bound_reranker_fits_through_torchrun_and_comes_back(data):
    """data_parallel.fit round trip for a model with an upstream (fusion over popularity's lists): pickled with its
    bound retriever into the job, trained on 2 processes, its ranker loaded back; the same loss and scores as one."""
    from tapestry.training import registry

    entry, params = FAMILIES["fusion"]
    params = {k: v for k, v in params.items() if k != "sgd_lr"}
    popularity = registry.build("popularity", None, device="cpu").fit(data)
    fits = []
    for processes in (1, 2):
        rec = registry.build(entry, params, device="cpu", progress=False)
        rec.bind({"popularity": popularity})
        fits.append(data_parallel.fit(rec, data, None, processes))
    one, two = fits
    assert two.processes_ == 2 and not hasattr(one, "processes_")
    np.testing.assert_allclose(two.loss_history_, one.loss_history_, rtol=1e-6)
    assert two.best_epoch_ == one.best_epoch_ and two.valid_history_ == one.valid_history_   # rank 0 validated
    users = np.arange(1, 6)
    hist = data.sequences(("train",))
    s1, s2 = (r.score(users, [hist[u] for u in users]) for r in fits)
    assert torch.equal(torch.isfinite(s1), torch.isfinite(s2))          # the same candidate lists
    torch.testing.assert_close(s2[torch.isfinite(s2)], s1[torch.isfinite(s1)], atol=1e-4, rtol=0)
