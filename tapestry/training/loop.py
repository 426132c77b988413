"""The epoch loop every gradient-trained recommender shares: progress, heartbeat logs and early stopping.

- On a terminal, a tqdm bar. Anywhere else (a log file, CI, `docker logs`) a line at least every 30 s — epoch, loss
  and the latest validation metric — so a long fit never looks hung (`heartbeat` is also called between minibatches).
- With `patience > 0` and a validation split, the validation NDCG@k (the data set's protocol cut-off) is measured
  every `eval_every` epochs; training stops after `patience` measurements without improvement and the best epoch's
  weights are restored. The recommender records `best_epoch_` and `valid_history_` (metrics.json keeps both).
- Data-parallel (tapestry.training.data_parallel, under torchrun): rank 0 alone shows progress and measures
  validation; its measurement is broadcast, so every rank keeps the same best epoch and stops at the same one.
"""
from __future__ import annotations

import copy
import sys
import time
from typing import Callable

import torch

HEARTBEAT_SECONDS = 30.0


class Heartbeat:
    """Prints `message()` when `every` seconds have passed since the last line (never on a terminal: the bar
    shows progress there)."""

    def __init__(self, enabled: bool, every: float = HEARTBEAT_SECONDS, clock=time.monotonic, out=None):
        self.enabled, self.every, self.clock = enabled, every, clock
        self.out = out or sys.stdout
        self.last = clock()

    def __call__(self, message: Callable[[], str], force: bool = False) -> None:
        if self.enabled and (force or self.clock() - self.last >= self.every):
            print(message(), file=self.out, flush=True)
            self.last = self.clock()


def validation_metric(model, data) -> tuple[str, float] | None:
    """(name, value) of the protocol's NDCG on the validation split, or None when there is no validation split."""
    from tapestry.training.evaluate import evaluate, is_multi_target

    if data is None or data.valid.height == 0:
        return None
    k = 20 if is_multi_target(data, "valid") else 10
    return f"ndcg@{k}", float(evaluate(model, data, "valid", k=k)[f"ndcg@{k}"])


def run_epochs(rec, module: torch.nn.Module, epochs: int, desc: str, run_epoch: Callable[[Callable], float],
               data=None, patience: int = 0, eval_every: int = 1, refresh: Callable[[], None] | None = None) -> None:
    """Train `module` for up to `epochs`. `run_epoch(heartbeat)` runs one epoch and returns its mean loss;
    `refresh()` makes `rec.score` reflect the module's current weights (e.g. LightGCN's propagated tables)."""
    from tapestry.training import data_parallel

    lead = data_parallel.is_lead()
    bar = rec._epoch_bar(epochs, desc) if lead else range(epochs)
    beat = Heartbeat(enabled=lead and rec.progress is not False and not sys.stdout.isatty())
    rec.best_epoch_, rec.valid_history_ = epochs, []
    start = len(rec.loss_history_)
    best, best_state, waited, metric_name = float("-inf"), None, 0, ""
    done = lambda: len(rec.loss_history_) - start   # noqa: E731  (epochs finished in this fit)
    status = lambda: (f"[{desc}] epoch {done()}/{epochs} done, loss {rec.loss_history_[-1]:.4f}"  # noqa: E731
                      if done() else f"[{desc}] epoch 0/{epochs} done") + (
        f", valid {metric_name} {rec.valid_history_[-1]:.4f} (best {best:.4f} at epoch {rec.best_epoch_})"
        if rec.valid_history_ else "")
    running = lambda: f"[{desc}] epoch {done() + 1}/{epochs} running; " + status().split("] ", 1)[1]  # noqa: E731
    rec.epoch_seconds_ = []                      # training time per epoch, validation excluded (benchmarks)
    for epoch in bar:
        t0 = time.perf_counter()
        rec.loss_history_.append(run_epoch(lambda: beat(running)))
        rec.epoch_seconds_.append(round(time.perf_counter() - t0, 4))
        if lead:
            bar.set_postfix(loss=f"{rec.loss_history_[-1]:.4f}")
        if patience > 0 and (epoch + 1) % eval_every == 0:
            if refresh is not None and lead:
                refresh()
            measured = data_parallel.from_lead(validation_metric(rec, data) if lead else None)
            module.train()
            if measured is not None:
                metric_name, value = measured
                rec.valid_history_.append(round(value, 6))
                if value > best:
                    best, best_state, waited, rec.best_epoch_ = value, copy.deepcopy(module.state_dict()), 0, epoch + 1
                else:
                    waited += 1
                if waited >= patience:
                    beat(lambda: status() + f": no gain in {patience} checks, stopping", force=True)
                    break
        beat(status)
    if best_state is not None:
        module.load_state_dict(best_state)
    else:
        rec.best_epoch_ = done()
    module.eval()
    if refresh is not None:
        refresh()
    beat(lambda: status() + (f"; kept epoch {rec.best_epoch_}" if best_state is not None else ""), force=True)
