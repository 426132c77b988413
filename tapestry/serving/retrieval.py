"""Stage 3: FAISS top-N over the item embeddings (inner product); popularity candidates for a cold user.

It asks FAISS for N + |seen| + |exclude| so that N candidates remain after the filter removes those. The user vector
must have the index's dimension and be finite (FAISS asserts on the first and returns garbage for the second).
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from tapestry.serving import validate as v
from tapestry.serving.stage import Stage, export_manifest


class Retrieval(Stage):
    name = "retrieval"
    inputs = ("TENANT", "USER_EMB", "SEEN", "EXCLUDE")
    outputs = ("CANDIDATES", "CANDIDATE_SCORES")

    def __init__(self, tenant: str, index: faiss.Index, popularity: np.ndarray, num_candidates: int):
        self.tenant = tenant
        self.index = index
        self.popularity = popularity.astype(np.float32)
        self.num_candidates = num_candidates
        self._popular_order = np.argsort(-self.popularity[1:], kind="stable") + 1  # never item 0

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "Retrieval":
        artifact_dir = Path(artifact_dir)
        index = faiss.read_index(str(artifact_dir / "items.faiss"))
        m = export_manifest(artifact_dir)
        return cls(m["tenant"], index, np.load(artifact_dir / "popularity.npy"), m["num_candidates"])

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        v.tenant(t, self.tenant)
        emb = v.floats(t, "USER_EMB", size=self.index.d).reshape(1, -1)
        num_items = self.popularity.size  # row 0 is padding
        seen = v.item_indices(t, "SEEN", num_items, max_size=num_items)
        exclude = v.item_indices(t, "EXCLUDE", num_items, max_size=num_items)
        n = min(self.num_candidates + seen.size + exclude.size, self.index.ntotal)
        if not emb.any():
            items = self._popular_order[:n]
            return {"CANDIDATES": items.astype(np.int64),
                    "CANDIDATE_SCORES": np.log1p(self.popularity[items]).astype(np.float32)}
        scores, ids = self.index.search(np.ascontiguousarray(emb), n)
        keep = ids[0] >= 0
        return {"CANDIDATES": ids[0][keep].astype(np.int64), "CANDIDATE_SCORES": scores[0][keep].astype(np.float32)}
