"""Stage 5: score the filtered candidates with the feature reranker, keep the top K, attach ids and titles."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tapestry.serving.stage import RequestError, Stage, bytes_array, export_manifest
from tapestry.training.reranker import FeatureReranker


class Rerank(Stage):
    name = "rerank"
    inputs = ("FILTERED", "FILTERED_SCORES", "HISTORY", "SEEN", "USER_ATTRS", "K")
    outputs = ("ITEM_IDS", "SCORES", "TITLES", "STRATEGY")

    def __init__(self, reranker: FeatureReranker, item_ids: list[str], titles: list[str], max_k: int):
        self.reranker = reranker
        self.item_ids = item_ids
        self.titles = titles
        self.max_k = max_k

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "Rerank":
        artifact_dir = Path(artifact_dir)
        items = pl.read_parquet(artifact_dir / "items.parquet")
        size = int(items["item_idx"].max()) + 1
        ids, titles = [""] * size, [""] * size
        for idx, iid, title in items.select("item_idx", "item_id", "title").iter_rows():
            ids[idx], titles[idx] = iid, title or ""
        return cls(FeatureReranker.load(artifact_dir / "rerank.npz"), ids, titles,
                   export_manifest(artifact_dir)["max_k"])

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        k = int(t["K"].reshape(-1)[0])
        if not 1 <= k <= self.max_k:
            raise RequestError(f"K must be between 1 and {self.max_k}, got {k}")
        cands, scores = t["FILTERED"].reshape(-1), t["FILTERED_SCORES"].reshape(-1)
        keep = cands > 0
        cands, scores = cands[keep], scores[keep]
        if cands.size == 0:
            raise RequestError("no items left to recommend after removing seen and excluded items")
        history = t["HISTORY"].reshape(-1)
        feats = self.reranker.features(cands, scores, t["SEEN"].reshape(-1), t["USER_ATTRS"].reshape(-1))
        final = self.reranker.score(feats)
        order = np.argsort(-final, kind="stable")[:k]
        top = cands[order]
        return {
            "ITEM_IDS": bytes_array(self.item_ids[i] for i in top),
            "SCORES": final[order].astype(np.float32),
            "TITLES": bytes_array(self.titles[i] for i in top),
            "STRATEGY": bytes_array(["personalized" if (history > 0).any() else "popularity"]),
        }
