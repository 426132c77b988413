"""The small API every recommender shares (modelled on the `implicit` library).

    model = LightGCNRecommender(epochs=5).fit(data, graph)
    scores = model.score(user_idx, histories)        # [B, num_items], column 0 = -inf
    items, scores = model.recommend(user_idx, history, k=10)
    model.save(path); same = Recommender.load(path)

Hyper-parameters live in one documented dataclass per model (`Config`, the TorchRec habit): the constructor takes
it whole or as keyword overrides, `model.cfg` holds the result, and a saved file stores `asdict(cfg)`, so every
default is written exactly once.

    LightGCNRecommender(LightGCNConfig(epochs=5))  ==  LightGCNRecommender(epochs=5)

Conventions shared by all models:
- item index 0 is padding / out-of-vocabulary: `score` always returns -inf there, so it is never recommended;
- `score` returns a tensor on the model's device (evaluation on GPU never round-trips through the CPU);
- a saved file is a plain dict of tensors and Python scalars (`torch.load(weights_only=True)` can read it),
  written atomically (temp file + os.replace) so a reader never sees half a model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from tapestry.artifacts import atomic_write_bytes
from tapestry.config import resolve_device

FORMAT = "tapestry.recommender/1"


@contextlib.contextmanager
def seeded(device: torch.device, seed: int):
    """Fork the global RNGs (CPU, and the CUDA device in use) and seed them: fits are reproducible and leave
    the caller's random state untouched."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def shuffled_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, num_examples: int, batch_size: int,
                   batch_loss, heartbeat=None) -> float:
    """One training pass over `num_examples` in random order, `batch_size` at a time: the minibatch loop every
    gradient-trained model shares. `batch_loss(indices)` returns (the loss of those examples, its weight in the
    epoch's mean: examples, predicted positions or 1 per step), or None to skip the batch; a third element, when
    the weight is not it, is the number of units the loss is a mean over (data parallelism needs it). Returns the
    weighted mean loss. `heartbeat()` (tapestry.training.loop) is called after every step: a log line when one is due.

    Inside a torchrun process group the same loop runs data-parallel (tapestry.training.data_parallel): the same
    global batch, split over the processes, with DDP averaging the gradients."""
    from tapestry.training import data_parallel

    if data_parallel.active():
        return data_parallel.shuffled_epoch(model, opt, num_examples, batch_size, batch_loss, heartbeat)
    model.train()
    perm = torch.randperm(num_examples)
    total, weight = 0.0, 0
    for start in range(0, num_examples, batch_size):
        out = batch_loss(perm[start:start + batch_size])
        if out is None:
            continue
        loss, n = out[:2]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, weight = total + float(loss.detach()) * n, weight + n
        if heartbeat is not None:
            heartbeat()
    return total / max(weight, 1)


def user_queries(user_emb: torch.Tensor, item_emb: torch.Tensor, known: torch.Tensor, user_idx: np.ndarray,
                 histories: list[np.ndarray]) -> torch.Tensor:
    """[B, D] query vectors of a graph model that learned a vector per user (HGT, relational SAGE): a known user's
    own vector; a cold one (unknown, out of range, or without training interactions) gets the mean of its history's
    item vectors (out-of-vocabulary items dropped); an empty history keeps the zero vector: flat scores, the
    caller serves popularity then."""
    num_users, num_items, device = user_emb.shape[0], item_emb.shape[0], user_emb.device
    u = torch.as_tensor(np.array(user_idx, dtype=np.int64), device=device)
    in_range = (u > 0) & (u < num_users)
    safe = torch.where(in_range, u, torch.zeros_like(u))
    known = in_range & known[safe]
    query = user_emb[safe].clone()
    for row in torch.nonzero(~known).flatten().tolist():
        h = np.asarray(histories[row], dtype=np.int64)
        h = h[(h > 0) & (h < num_items)]
        if h.size:
            query[row] = item_emb[torch.as_tensor(h, device=device)].mean(0)
    return query


def plain(x):
    """JSON-like copy (floats, ints, strings, lists, dicts) of a report, for a weights_only-loadable file."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


class Recommender(ABC):
    """Subclasses set `Config` and implement `fit`, `score` and `_get_state` / `_set_state`."""

    # Every concrete subclass is registered by name so `Recommender.load` can rebuild whatever a file holds.
    _registry: ClassVar[dict[str, type["Recommender"]]] = {}
    Config: ClassVar[type | None] = None      # the model's hyper-parameter dataclass (None: it has none)
    # How `tapestry train --distributed N` (N > 1) trains it: "data" (DDP through the shared minibatch loop,
    # tapestry.training.data_parallel), "model" (its own sharded path: the DLRM), "closed_form" (nothing to
    # distribute: fitted once in the launching process) or "single" (one process only: refused with N > 1).
    parallelism: ClassVar[str] = "single"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Recommender._registry[cls.__name__] = cls

    def __init__(self, config=None, *, device: str = "auto", progress: bool | None = None, **overrides):
        if self.Config is None:
            if config is not None or overrides:
                raise TypeError(f"{type(self).__name__} takes no hyper-parameters, got {config or overrides}")
            self.cfg = None
        else:
            base = config if config is not None else self.Config()
            if not isinstance(base, self.Config):
                raise TypeError(f"{type(self).__name__} expects a {self.Config.__name__}, got {type(base).__name__}")
            names = {f.name for f in dataclasses.fields(self.Config)}
            unknown = sorted(set(overrides) - names)
            if unknown:
                raise TypeError(f"{type(self).__name__} got unknown hyper-parameter(s) {unknown}; "
                                f"{self.Config.__name__} has {sorted(names)}")
            self.cfg = dataclasses.replace(base, **overrides)
        self.device_name = device
        self.device = resolve_device(device)
        # None = tqdm's own choice (a bar on a terminal, silent in logs and CI); True/False force it.
        self.progress = progress
        self.num_items: int | None = None
        self.loss_history_: list[float] = []      # per-epoch training loss, for logs and tests

    # ---- the API --------------------------------------------------------------------------------------------
    @abstractmethod
    def fit(self, data, graph=None) -> "Recommender":
        """Train on `data.train` (an InteractionData); `graph` is build_hetero_graph(data) where used."""

    @abstractmethod
    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        """Scores [B, num_items] for users `user_idx` (B,) with item histories (time order). Higher is better."""

    def recommend(self, user_idx: int, history: np.ndarray, k: int = 10,
                  exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (item_idx, score), best first. Never returns index 0; with exclude_seen never the history.

        Fewer than k items come back only when fewer than k candidates exist.
        """
        history = np.asarray(history, dtype=np.int64)
        scores = self.score(np.array([user_idx], dtype=np.int64), [history])[0].float().clone()
        scores[0] = -torch.inf
        if exclude_seen and history.size:
            scores[torch.as_tensor(history, device=scores.device)] = -torch.inf
        finite = int(torch.isfinite(scores).sum())
        top = torch.topk(scores, min(k, finite))
        return top.indices.cpu().numpy(), top.values.cpu().numpy()

    def bind(self, upstream: dict[str, "Recommender"]) -> None:
        """Called by the training pipeline before `fit` with the models trained so far (by registry name).

        Models that read another model's output (e.g. graph item vectors) take it here; the default reads nothing.
        """

    def upstream_model(self, upstream: dict[str, "Recommender"], field: str) -> "Recommender":
        """The model that config field `field` names, among those trained so far (for `bind`), or a clear error."""
        name = getattr(self.cfg, field)
        if name not in upstream:
            raise ValueError(f"{type(self).__name__} {field}={name!r}: that model must be trained earlier in the same "
                             f"run (trained so far: {sorted(upstream)})")
        return upstream[name]

    # ---- persistence ----------------------------------------------------------------------------------------
    def _init_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild an untrained twin (plain Python values)."""
        return dataclasses.asdict(self.cfg) if self.cfg is not None else {}

    @abstractmethod
    def _get_state(self) -> dict[str, Any]:
        """Learned state as CPU tensors / Python scalars."""

    @abstractmethod
    def _set_state(self, state: dict[str, Any]) -> None:
        """Inverse of `_get_state`; tensors arrive on the CPU and must be moved to `self.device`."""

    def save(self, path: str | Path) -> Path:
        if self.num_items is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; nothing to save")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "class": type(self).__name__, "kwargs": self._init_kwargs(),
                   "state": self._get_state()}
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Recommender":
        """Rebuild a saved model. `Recommender.load` accepts any model; `LightGCNRecommender.load` only its own."""
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tapestry recommender file")
        klass = Recommender._registry.get(payload["class"])
        if klass is None:
            # Model classes are imported lazily (tapestry.training.registry): import the one this file names.
            from tapestry.training.registry import MODELS

            for spec in MODELS.values():
                if spec.target.rpartition(":")[2] == payload["class"]:
                    spec.recommender_class()
            klass = Recommender._registry.get(payload["class"])
        if klass is None:
            raise ValueError(f"{path} holds unknown recommender class {payload['class']!r}")
        if not issubclass(klass, cls):
            raise TypeError(f"{path} holds a {payload['class']}, not a {cls.__name__}")
        model = klass(**{**payload["kwargs"], "device": device})
        model._set_state(payload["state"])
        return model

    # ---- helpers for subclasses -----------------------------------------------------------------------------
    def _epoch_bar(self, epochs: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(range(epochs), desc=desc, unit="epoch", leave=False,
                    disable=None if self.progress is None else not self.progress)

    def _mask_padding(self, scores: torch.Tensor) -> torch.Tensor:
        scores[:, 0] = -torch.inf
        return scores

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._init_kwargs().items())
        return f"{type(self).__name__}({args})"
