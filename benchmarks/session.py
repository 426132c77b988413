"""Session-based recommendation on the DIGINETICA sample, with SR-GNN's own protocol.

    python benchmarks/session.py                      # -> benchmarks/results/session-diginetica-sample.json
    python benchmarks/session.py --seeds 0,1,2 --device cpu

Data: `tapestry.etl.diginetica.load_diginetica()` reproduces SR-GNN's preprocess.py on the sample it ships
(../shared/datasets/diginetica-srgnn-sample): train = every prefix of the training sessions, test = every prefix
of the last week's sessions. Metrics exactly as SR-GNN reports them: P@20 (= hit rate @20: the next click is in
the top 20) and MRR@20 (1 / rank, 0 beyond 20), ranking ALL items, with NO exclusion of the session's items
(sessions revisit items, and a revisit is a correct prediction). Ties are ranked pessimistically (the reference's
topk breaks them arbitrarily; our models give no exact ties in practice, the count baselines do).

Models:
- `popularity`: training click counts.
- `last_item_transitions`: how often each item directly followed the session's last click in training sessions,
  ties (and unseen transitions) broken by popularity.
- `sasrec_session`: SASRec trained on the training sessions (its causal loss already predicts every prefix's
  next item), scoring the test prefix as a history.
- `srgnn_reference_schedule`: SR-GNN with the reference's hyper-parameters verbatim (hidden 100, batch 100, Adam
  lr 1e-3 x0.1 every 3 epochs, L2 1e-5, one GNN step, 30 epochs), every training prefix, last epoch. On the
  sample an epoch is 13 batches, so the lr decays before the model has learned much: it underfits.
- `srgnn`: the same model without the decay, its epoch count chosen on validation.
Epoch counts of `srgnn` and `sasrec_session` are chosen on a VALIDATION split, never on test: the last 10% of the
training sessions (by date, like the test split) are held out, each candidate is trained on the rest (seed 0),
the best P@20 (then MRR@20) wins, and the model is retrained on all training sessions. (The reference instead
reports its best epoch on the test set.) Learned models then run once per seed; the JSON holds every seed, their
mean, and the validation results.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tapestry.etl.diginetica import load_diginetica, session_prefixes
from tapestry.training.metrics import ranks_from_scores
from tapestry.training.sasrec import SASRecRecommender
from tapestry.training.srgnn import SRGNNRecommender

RESULTS = Path(__file__).resolve().parent / "results"
K = 20
# The reference's SR-GNN hyper-parameters (pytorch_code/main.py defaults).
SRGNN_REFERENCE = dict(hidden_dim=100, num_steps=1, max_len=50, epochs=30, batch_size=100, lr=1e-3, l2=1e-5,
                       lr_decay=0.1, lr_decay_every=3, max_prefixes_per_user=None)
SRGNN = dict(SRGNN_REFERENCE, lr_decay_every=10_000)         # no decay; epochs from EPOCH_CANDIDATES
SASREC = dict(hidden_dim=64, num_blocks=2, num_heads=1, max_len=50, dropout=0.2, batch_size=64, lr=1e-3)
EPOCH_CANDIDATES = {"srgnn": (15, 30, 60), "sasrec_session": (30, 60, 120)}
VALID_SHARE = 0.1
PAPER = {"dataset": "full DIGINETICA", "p@20": 0.5073, "mrr@20": 0.1759}
NOTE = ("Trained and tested on the SAMPLE that SR-GNN ships to test its code (~12k clicks; after preprocessing 309 "
        "items, 1,205 training prefixes, 99 test prefixes from 39 sessions), not on the full DIGINETICA (~1M clicks, "
        "43,097 items). The numbers are NOT comparable with the paper's full-data P@20 50.73 / MRR@20 17.59, and "
        "come out higher, not lower: the top 20 covers 6.5% of a 309-item catalogue, and 55% of the test targets "
        "already occur in their prefix (43% repeat the last click), which models that learn to repeat exploit. "
        "With 99 test prefixes one hit moves P@20 by 0.0101. Epoch counts were chosen on a validation split of the "
        "training sessions (the reference reports its best epoch on the test set); the reference's own lr schedule "
        "(srgnn_reference_schedule) decays after 39 steps on this sample and underfits.")


def _machine() -> dict:
    return {"device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}


class _Sessions:
    """The two things SASRecRecommender.fit reads from an InteractionData: the sequences and the table size."""

    def __init__(self, sessions: list[np.ndarray], num_items: int):
        self._sessions, self.num_items = sessions, num_items

    def sequences(self, splits=("train",)) -> list[np.ndarray]:
        return self._sessions


def session_metrics(score_fn, prefixes: list[np.ndarray], targets: np.ndarray, batch_size: int = 512) -> dict:
    """P@K and MRR@K over (prefix, next click) pairs; score_fn(prefixes) -> [B, num_items] (column 0 = -inf)."""
    ranks = []
    for start in range(0, len(prefixes), batch_size):
        scores = score_fn(prefixes[start:start + batch_size]).float().cpu()
        ranks.append(ranks_from_scores(scores, targets[start:start + batch_size]).numpy())
    r = np.concatenate(ranks)
    return {f"p@{K}": float(np.mean(r < K)), f"mrr@{K}": float(np.mean(np.where(r < K, 1.0 / (r + 1), 0.0))),
            "num_test_prefixes": int(len(r))}


def _counts_baselines(split) -> dict:
    popularity = np.zeros(split.num_items)
    transitions = np.zeros((split.num_items, split.num_items))
    for s in split.train_sessions:
        np.add.at(popularity, s, 1.0)
        np.add.at(transitions, (s[:-1], s[1:]), 1.0)
    popularity[0] = -np.inf
    # Popularity / (max + 1) < 1: breaks ties between equal transition counts without ever overriding a count.
    tie_break = popularity / (popularity[1:].max() + 1.0)

    def pop(prefixes):
        return torch.from_numpy(np.tile(popularity, (len(prefixes), 1)))

    def last_item(prefixes):
        return torch.from_numpy(transitions[[p[-1] for p in prefixes]] + tie_break)

    out = {}
    for name, fn in (("popularity", pop), ("last_item_transitions", last_item)):
        t0 = time.perf_counter()
        metrics = session_metrics(fn, split.test_prefixes, split.test_targets)
        out[name] = {**metrics, "fit_seconds": 0.0, "eval_seconds": round(time.perf_counter() - t0, 3)}
    return out


def _score_fn(model):
    return lambda prefixes: model.score(np.zeros(len(prefixes), np.int64), prefixes)


def _select_epochs(name: str, make, split, candidates) -> tuple[int, dict]:
    """Best epoch count on the validation split: the last VALID_SHARE of the (date-sorted) training sessions."""
    n_valid = max(1, round(VALID_SHARE * len(split.train_sessions)))
    fit_sessions, valid_sessions = split.train_sessions[:-n_valid], split.train_sessions[-n_valid:]
    prefixes, targets = session_prefixes(valid_sessions)
    results = {}
    for epochs in candidates:
        model = make(0, epochs, fit_sessions)
        results[epochs] = session_metrics(_score_fn(model), prefixes, targets)
        print(f"[session] {name} valid epochs={epochs}: P@{K} {results[epochs][f'p@{K}']:.4f}  "
              f"MRR@{K} {results[epochs][f'mrr@{K}']:.4f}", flush=True)
    best = max(candidates, key=lambda e: (results[e][f"p@{K}"], results[e][f"mrr@{K}"]))
    return best, {"valid_sessions": n_valid, "chosen_epochs": best, **{f"epochs_{e}": r for e, r in results.items()}}


def _learned(name: str, make, split, seeds: list[int], epochs: int) -> dict:
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        model = make(seed, epochs, split.train_sessions)
        fit_seconds = time.perf_counter() - t0
        metrics = session_metrics(_score_fn(model), split.test_prefixes, split.test_targets)
        runs.append({"seed": seed, **metrics, "fit_seconds": round(fit_seconds, 2),
                     "final_train_loss": round(model.loss_history_[-1], 4)})
        print(f"[session] {name} seed {seed}: P@{K} {metrics[f'p@{K}']:.4f}  MRR@{K} {metrics[f'mrr@{K}']:.4f}  "
              f"fit {fit_seconds:.1f}s", flush=True)
    mean = {key: float(np.mean([r[key] for r in runs])) for key in (f"p@{K}", f"mrr@{K}", "fit_seconds")}
    return {**mean, "epochs": epochs, "num_test_prefixes": runs[0]["num_test_prefixes"], "seeds": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", help="item-views CSV (default: the sample under tapestry.config.datasets_dir())")
    p.add_argument("--output", default=str(RESULTS / "session-diginetica-sample.json"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    split = load_diginetica(args.data)
    print(f"[session] {split.counts}", flush=True)
    metrics = _counts_baselines(split)

    def sasrec(seed, epochs, sessions):
        return SASRecRecommender(**SASREC, epochs=epochs, seed=seed, device=args.device, progress=False).fit(
            _Sessions(sessions, split.num_items))

    def srgnn(config):
        def make(seed, epochs, sessions):
            # fit_sequences builds every prefix of every session: on the training sessions, exactly
            # preprocess.py's training set.
            model = SRGNNRecommender(**dict(config, epochs=epochs), seed=seed, device=args.device, progress=False)
            return model.fit_sequences(sessions, split.num_items)
        return make

    validation = {}
    for name, make in (("sasrec_session", sasrec), ("srgnn", srgnn(SRGNN))):
        epochs, validation[name] = _select_epochs(name, make, split, EPOCH_CANDIDATES[name])
        metrics[name] = _learned(name, make, split, seeds, epochs)
    metrics["srgnn_reference_schedule"] = _learned("srgnn_reference_schedule", srgnn(SRGNN_REFERENCE), split,
                                                   seeds, SRGNN_REFERENCE["epochs"])

    report = {"benchmark": "session", "dataset": "diginetica-srgnn-sample",
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv),
              "machine": _machine(), "protocol": f"SR-GNN: P@{K} = hit rate @{K}, MRR@{K}; rank among all items, "
                                                 "session items not excluded, pessimistic ties",
              "data": {**split.counts, "num_items": split.num_items - 1, "split_date": str(split.split_date)},
              "config": {"srgnn": SRGNN, "srgnn_reference_schedule": SRGNN_REFERENCE, "sasrec_session": SASREC,
                         "epoch_candidates": EPOCH_CANDIDATES, "valid_share": VALID_SHARE, "seeds": seeds},
              "validation": validation, "metrics": metrics, "paper": PAPER, "note": NOTE}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    for name, m in metrics.items():
        print(f"  {name:24s} P@{K} {m[f'p@{K}']:.4f}  MRR@{K} {m[f'mrr@{K}']:.4f}")
    print(f"[session] {out}")


if __name__ == "__main__":
    main()
