"""Stage 3: FAISS top-N over the item embeddings (inner product); popularity candidates for a cold user.

It asks FAISS for N + |seen| + |exclude| so that N candidates remain after the filter removes those.
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from tapestry.serving.stage import Stage, export_manifest


class Retrieval(Stage):
    name = "retrieval"
    inputs = ("USER_EMB", "SEEN", "EXCLUDE")
    outputs = ("CANDIDATES", "CANDIDATE_SCORES")

    def __init__(self, index: faiss.Index, popularity: np.ndarray, num_candidates: int):
        self.index = index
        self.popularity = popularity.astype(np.float32)
        self.num_candidates = num_candidates
        self._popular_order = np.argsort(-self.popularity[1:], kind="stable") + 1  # never item 0

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "Retrieval":
        artifact_dir = Path(artifact_dir)
        index = faiss.read_index(str(artifact_dir / "items.faiss"))
        return cls(index, np.load(artifact_dir / "popularity.npy"),
                   export_manifest(artifact_dir)["num_candidates"])

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = t["USER_EMB"].reshape(1, -1).astype(np.float32)
        n = min(self.num_candidates + t["SEEN"].size + t["EXCLUDE"].size, self.index.ntotal)
        if not emb.any():
            items = self._popular_order[:n]
            return {"CANDIDATES": items.astype(np.int64),
                    "CANDIDATE_SCORES": np.log1p(self.popularity[items]).astype(np.float32)}
        scores, ids = self.index.search(emb, n)
        keep = ids[0] >= 0
        return {"CANDIDATES": ids[0][keep].astype(np.int64), "CANDIDATE_SCORES": scores[0][keep].astype(np.float32)}
