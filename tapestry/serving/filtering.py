"""Stage 4: drop already-seen items and the request's exclude list, keep retrieval order."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tapestry.serving.stage import Stage, export_manifest


class CandidateFilter(Stage):
    name = "filter"
    inputs = ("CANDIDATES", "CANDIDATE_SCORES", "SEEN", "EXCLUDE")
    outputs = ("FILTERED", "FILTERED_SCORES")

    def __init__(self, num_candidates: int):
        self.num_candidates = num_candidates

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "CandidateFilter":
        return cls(export_manifest(artifact_dir)["num_candidates"])

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cands, scores = t["CANDIDATES"].reshape(-1), t["CANDIDATE_SCORES"].reshape(-1)
        blocked = np.union1d(t["SEEN"].reshape(-1), t["EXCLUDE"].reshape(-1))
        blocked = np.union1d(blocked, [0])  # the padding id is never a recommendation
        keep = ~np.isin(cands, blocked)
        cands, scores = cands[keep][: self.num_candidates], scores[keep][: self.num_candidates]
        if cands.size == 0:
            # Keep the tensor non-empty; rerank reports "nothing left" as a clear request error.
            return {"FILTERED": np.zeros(1, np.int64), "FILTERED_SCORES": np.full(1, -np.inf, np.float32)}
        return {"FILTERED": cands.astype(np.int64), "FILTERED_SCORES": scores.astype(np.float32)}
