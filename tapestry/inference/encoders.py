"""User-encoder modules as serving files: the module's class, its constructor arguments and its weights.

Any model the export serves follows one contract (the Recommender's `serving_module()`): an nn.Module with
`num_items`, `max_len`, `init_args` (plain constructor kwargs), `encode(seqs [B, L] left-padded) -> [B, D]` or
`[B, K, D]` (K interest vectors) and `item_embeddings() -> [num_items, D]`, where the model's scores are the inner
products of the two (the max over K). A behaviour-aware encoder also has `num_event_types` and `event_types` and
takes `encode(seqs, events)`, `events` [B, L] its aligned event-type indices (0 = unknown). So one file format and one stage serve SASRec, BERT4Rec, ComiRec and SR-GNN.

Only classes under `tapestry.models.` are rebuilt: a file names the class it holds, and loading must not become a way
to import arbitrary code.
"""
from __future__ import annotations

import importlib
import io
from pathlib import Path

import torch

from tapestry.artifacts import atomic_write_bytes

FORMAT = "tapestry.encoder/1"
ALLOWED_PREFIX = "tapestry.models."


def check_servable(module: torch.nn.Module, name: str = "model") -> None:
    missing = [a for a in ("num_items", "max_len", "init_args", "encode", "item_embeddings") if not hasattr(module, a)]
    if missing:
        raise TypeError(f"{name} ({type(module).__name__}) cannot be served as a user encoder: it lacks {missing} "
                        "(see tapestry/inference/encoders.py for the contract)")


def save_encoder(module: torch.nn.Module, path: Path) -> None:
    """Write the module (class path + init_args + weights) atomically."""
    check_servable(module)
    target = f"{type(module).__module__}:{type(module).__qualname__}"
    if not target.startswith(ALLOWED_PREFIX):
        raise TypeError(f"only modules under {ALLOWED_PREFIX} are served, not {target}")
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "target": target, "kwargs": dict(module.init_args),
                "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_encoder(path: Path) -> torch.nn.Module:
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    target = state.get("target", "tapestry.models.sequential.sasrec:SASRec")   # exports before this format
    if not target.startswith(ALLOWED_PREFIX):
        raise ValueError(f"{path} names {target!r}; only {ALLOWED_PREFIX}* modules are loaded")
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    model = cls(**state["kwargs"])
    model.load_state_dict(state["state_dict"])
    return model.eval()


def event_vocabulary(module: torch.nn.Module) -> list[str] | None:
    """The event-type names a behaviour-aware encoder reads (name i is type index i + 1), or None: it reads items
    only. A behaviour model saved before its names were recorded has indices but no names: "type<i>"."""
    count = int(getattr(module, "num_event_types", 0) or 0)
    if not count:
        return None
    names = getattr(module, "event_types", None)
    return list(names) if names is not None else [f"type{i}" for i in range(1, count + 1)]


def interest_vectors(module: torch.nn.Module, seqs: torch.Tensor, events: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """encode() as [B, K, D] whatever the model: single-vector encoders give K = 1. `events` [B, L], aligned with
    `seqs` (0 = unknown type), go to a behaviour-aware encoder (tapestry.models.sequential.behaviour_sasrec) and
    are ignored by the others, which read items only."""
    out = module.encode(seqs, events) if events is not None and event_vocabulary(module) else module.encode(seqs)
    return out.unsqueeze(1) if out.dim() == 2 else out
