"""The reranker protocol and the registry of servable rerankers, keyed by the name the export manifest gives.

An export's manifest says `"reranker": "<kind>"`; the rerank stage calls `load_reranker(kind, artifact_dir)` and
then only the protocol below. Adding a reranker is one class that follows the protocol and one entry here. Classes
load lazily, so TorchRec is imported only where a DLRM is served.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Reranker(Protocol):
    """What the rerank stage calls, per request then per dynamic batch."""

    ordered_history: bool   # True: reads the time-ordered HISTORY window; False: the SEEN set
    num_user_attrs: int     # the width of the USER_ATTRS multi-hot it reads

    def features(self, candidates: np.ndarray, retrieval_scores: np.ndarray, history: np.ndarray,
                 user_attrs: np.ndarray) -> Any:
        """One request's features (whatever `score_many` reads)."""

    def score_many(self, features: list[Any]) -> list[np.ndarray]:
        """One score per candidate of each request, higher first, computed in one call for the whole batch."""


@dataclass(frozen=True)
class RerankerKind:
    name: str
    target: str        # "module:Class" with a `load(path)` classmethod
    filename: str      # the artifact the export writes

    def load(self, artifact_dir: Path) -> Reranker:
        module, _, cls = self.target.partition(":")
        reranker = getattr(importlib.import_module(module), cls).load(Path(artifact_dir) / self.filename)
        if not isinstance(reranker, Reranker):
            raise TypeError(f"{self.target} does not follow the reranker protocol (tapestry.inference.rerankers)")
        return reranker


RERANKERS: dict[str, RerankerKind] = {k.name: k for k in (
    RerankerKind("feature", "tapestry.inference.feature_reranker:FeatureReranker", "rerank.npz"),
    RerankerKind("dlrm", "tapestry.inference.dlrm_ranker:DLRMRanker", "dlrm_ranker.pt"),
    RerankerKind("fusion", "tapestry.inference.fusion_ranker:FusionReranker", "fusion_ranker.pt"),
)}


def reranker_kind(name: str) -> RerankerKind:
    try:
        return RERANKERS[name]
    except KeyError:
        raise ValueError(f"unknown reranker {name!r} in the export manifest; known: {', '.join(RERANKERS)}") from None


def load_reranker(name: str, artifact_dir: Path) -> Reranker:
    return reranker_kind(name).load(artifact_dir)
