"""Stage 4: drop already-seen items and the request's exclude list, keep retrieval order."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tapestry.serving import validate as v
from tapestry.serving.stage import Stage, export_manifest


class CandidateFilter(Stage):
    name = "filter"
    inputs = ("TENANT", "CANDIDATES", "CANDIDATE_SCORES", "SEEN", "EXCLUDE")
    outputs = ("FILTERED", "FILTERED_SCORES")

    def __init__(self, tenant: str, num_candidates: int, num_items: int):
        self.tenant = tenant
        self.num_candidates = num_candidates
        self.num_items = num_items

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "CandidateFilter":
        m = export_manifest(artifact_dir)
        return cls(m["tenant"], m["num_candidates"], m["num_items"])

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        v.tenant(t, self.tenant)
        n = self.num_items
        cands = v.item_indices(t, "CANDIDATES", n, max_size=n)
        scores = v.floats(t, "CANDIDATE_SCORES", size=cands.size)
        # One membership test against everything blocked (isin sorts once; no need to deduplicate first). The
        # padding id 0 is never a recommendation.
        blocked = np.concatenate([v.item_indices(t, "SEEN", n, max_size=n), v.item_indices(t, "EXCLUDE", n, max_size=n),
                                  [0]])
        keep = ~np.isin(cands, blocked)
        cands, scores = cands[keep][: self.num_candidates], scores[keep][: self.num_candidates]
        if cands.size == 0:
            # Keep the tensor non-empty; rerank reports "nothing left" as a clear request error.
            return {"FILTERED": np.zeros(1, np.int64), "FILTERED_SCORES": np.full(1, -np.inf, np.float32)}
        return {"FILTERED": cands.astype(np.int64), "FILTERED_SCORES": scores.astype(np.float32)}
