"""Stage 3: FAISS top-N for the user's K interest vectors (one search call), merged by max-sim; popularity
candidates for a cold user (an all-zero USER_EMB).

Each of the K rows asks FAISS for N + |seen| + |exclude| items, so that N candidates remain after the filter; an
item's merged score is its best inner product over the K interests, which is exactly the multi-interest model's
score: an item in the true top-N of max-over-K is in the top-N of the interest that attains its max, so searching
each interest for N and merging loses nothing. The vectors must have the index's dimension and be finite (FAISS
asserts on the first and returns garbage for the second).
"""
from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from tapestry.serving import validate as v
from tapestry.serving.ann import load_index, to_device
from tapestry.serving.stage import Stage, checked_rows, export_manifest, one_row


GPU_MAX_K = 2048   # GPU FAISS's largest k


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

    def __init__(self, tenant: str, index: faiss.Index, popularity: np.ndarray, num_candidates: int,
                 device_index: faiss.Index | None = None):
        """`device_index`: a GPU copy of `index` (tapestry.serving.ann.to_device) for searches within GPU FAISS's
        k <= 2048; larger ones, and every search on a CPU host, use `index`."""
        self.tenant = tenant
        self.index = index
        self.device_index = device_index if device_index is not index else None
        self.popularity = popularity.astype(np.float32)
        self.num_candidates = num_candidates
        self._popular_order = np.argsort(-self.popularity[1:], kind="stable") + 1  # never item 0

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "Retrieval":
        artifact_dir = Path(artifact_dir)
        index = load_index(artifact_dir / "items.faiss")    # with its tuned nprobe / efSearch (items.faiss.json)
        m = export_manifest(artifact_dir)
        # The same index on the GPU where FAISS sees one (set TAPESTRY_FAISS_GPU=0 to keep it on the CPU).
        device = to_device(index) if os.environ.get("TAPESTRY_FAISS_GPU", "1") != "0" else None
        return cls(m["tenant"], index, np.load(artifact_dir / "popularity.npy"), m["num_candidates"], device)

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return one_row(self.batch([t]))

    def _row(self, t: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
        """(the row's interest vectors without all-zero rows, how many candidates it needs)."""
        v.tenant(t, self.tenant)
        emb = v.float_rows(t, "USER_EMB", cols=self.index.d, max_rows=v.MAX_INTERESTS)
        num_items = self.popularity.size  # row 0 is padding
        seen = v.item_indices(t, "SEEN", num_items, max_size=num_items)
        exclude = v.item_indices(t, "EXCLUDE", num_items, max_size=num_items)
        # An all-zero vector is no interest: the cold user's row, or padding when a batched request stacks users
        # with K interests next to users with one.
        return emb[emb.any(axis=1)], min(self.num_candidates + seen.size + exclude.size, self.index.ntotal)

    def _popular(self, n: int) -> dict[str, np.ndarray]:
        items = self._popular_order[:n]
        return {"CANDIDATES": items.astype(np.int64),
                "CANDIDATE_SCORES": np.log1p(self.popularity[items]).astype(np.float32)}

    def batch(self, rows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """ONE FAISS search for every interest vector of every row, asking for the largest n any row needs; each
        row keeps its first n columns (a top-n is the start of a top-n' for n <= n') and merges them by max-sim."""
        out, passed = checked_rows(rows, self._row)
        warm: list[tuple[int, np.ndarray, int]] = []
        for i, (emb, n) in passed:
            if emb.shape[0]:
                warm.append((i, emb, n))
            else:
                out[i] = self._popular(n)
        if warm:
            k = max(n for _, _, n in warm)
            index = self.device_index if self.device_index is not None and k <= GPU_MAX_K else self.index
            scores, ids = index.search(np.ascontiguousarray(np.concatenate([e for _, e, _ in warm])), k)
            start = 0
            for i, emb, n in warm:
                rows_of_i = slice(start, start + emb.shape[0])
                start += emb.shape[0]
                items, best = merge_max_sim(scores[rows_of_i, :n], ids[rows_of_i, :n], n)
                out[i] = {"CANDIDATES": items.astype(np.int64), "CANDIDATE_SCORES": best.astype(np.float32)}
        return out
