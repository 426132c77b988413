"""The shared epoch loop: early stopping keeps the best validation epoch's weights; the heartbeat logs on time."""
from __future__ import annotations

import io

import numpy as np
import torch

from tapestry.training import loop
from tapestry.training.loop import Heartbeat, run_epochs


class _Fake:
    """A recommender stand-in: the loop only needs the progress flag, the bar and the histories."""
    progress = False

    def __init__(self):
        self.loss_history_ = []

    def _epoch_bar(self, epochs, desc):
        from tqdm.auto import tqdm

        return tqdm(range(epochs), disable=True)


def test_early_stopping_restores_the_best_epoch_and_stops_after_patience(monkeypatch):
    rec, module = _Fake(), torch.nn.Linear(1, 1, bias=False)
    curve = iter([0.10, 0.30, 0.20, 0.25, 0.28, 0.99])       # best at epoch 2; then 3 checks without gain
    monkeypatch.setattr(loop, "validation_metric", lambda model, data: ("ndcg@10", next(curve)))
    weights = []

    def epoch(beat):
        with torch.no_grad():
            module.weight.fill_(float(len(rec.loss_history_) + 1))    # epoch e leaves weight e
        weights.append(float(module.weight))
        return 1.0 / (len(rec.loss_history_) + 1)

    run_epochs(rec, module, epochs=10, desc="fake", run_epoch=epoch, data=object(), patience=3)
    assert len(rec.loss_history_) == 5                     # epochs 3, 4, 5 gave no gain: stopped after the 5th
    assert rec.best_epoch_ == 2 and rec.valid_history_ == [0.1, 0.3, 0.2, 0.25, 0.28]
    assert float(module.weight) == 2.0                     # the 2nd epoch's weights, not the last one's (5)


def test_without_patience_every_epoch_runs_and_the_last_is_kept(monkeypatch):
    rec, module = _Fake(), torch.nn.Linear(1, 1, bias=False)
    monkeypatch.setattr(loop, "validation_metric", lambda *a: (_ for _ in ()).throw(AssertionError("evaluated")))
    run_epochs(rec, module, epochs=4, desc="fake", run_epoch=lambda beat: 0.5, data=object(), patience=0)
    assert len(rec.loss_history_) == 4 and rec.best_epoch_ == 4 and rec.valid_history_ == []


def test_heartbeat_prints_only_when_a_line_is_due():
    now = [0.0]
    out = io.StringIO()
    beat = Heartbeat(enabled=True, every=30.0, clock=lambda: now[0], out=out)
    for t in np.arange(0, 95, 5.0):           # a call every 5 s for 95 s: lines at 30, 60 and 90 s
        now[0] = float(t)
        beat(lambda: f"t={now[0]:.0f}")
    assert out.getvalue().split() == ["t=30", "t=60", "t=90"]
    Heartbeat(enabled=False, clock=lambda: 1e9, out=out)(lambda: "never", force=True)
    assert "never" not in out.getvalue()
