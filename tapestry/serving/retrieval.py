"""Stage 3: FAISS top-N for the user's K interest vectors (one search call), merged by max-sim; popularity
candidates for a cold user (an all-zero USER_EMB).

Each of the K rows asks FAISS for N + |seen| + |exclude| items, so that N candidates remain after the filter; an
item's merged score is its best inner product over the K interests, which is exactly the multi-interest model's
score: an item in the true top-N of max-over-K is in the top-N of the interest that attains its max, so searching
each interest for N and merging loses nothing. The vectors must have the index's dimension and be finite (FAISS
asserts on the first and returns garbage for the second).
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from tapestry.serving import validate as v
from tapestry.serving.ann import load_index
from tapestry.serving.stage import Stage, export_manifest


def merge_max_sim(scores: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[K, M] per-interest FAISS results -> the top n distinct ids by their best score (ties: first seen)."""
    flat_ids, flat_scores = ids.ravel(), scores.ravel()
    valid = flat_ids >= 0                       # FAISS pads with -1 when an index has fewer than M items
    flat_ids, flat_scores = flat_ids[valid], flat_scores[valid]
    order = np.argsort(-flat_scores, kind="stable")
    _, first = np.unique(flat_ids[order], return_index=True)   # each id's best (earliest in score order) hit
    best = order[np.sort(first)][:n]
    return flat_ids[best], flat_scores[best]


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
        index = load_index(artifact_dir / "items.faiss")    # with its tuned nprobe / efSearch (items.faiss.json)
        m = export_manifest(artifact_dir)
        return cls(m["tenant"], index, np.load(artifact_dir / "popularity.npy"), m["num_candidates"])

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        v.tenant(t, self.tenant)
        emb = v.float_rows(t, "USER_EMB", cols=self.index.d, max_rows=v.MAX_INTERESTS)
        num_items = self.popularity.size  # row 0 is padding
        seen = v.item_indices(t, "SEEN", num_items, max_size=num_items)
        exclude = v.item_indices(t, "EXCLUDE", num_items, max_size=num_items)
        n = min(self.num_candidates + seen.size + exclude.size, self.index.ntotal)
        if not emb.any():
            items = self._popular_order[:n]
            return {"CANDIDATES": items.astype(np.int64),
                    "CANDIDATE_SCORES": np.log1p(self.popularity[items]).astype(np.float32)}
        scores, ids = self.index.search(np.ascontiguousarray(emb), n)
        items, best = merge_max_sim(scores, ids, n)
        return {"CANDIDATES": items.astype(np.int64), "CANDIDATE_SCORES": best.astype(np.float32)}
