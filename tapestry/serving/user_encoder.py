"""Stage 2: the user's recent history -> a user vector (SASRec over graph-initialised item embeddings).

An all-padding history (unknown user, or no events) gives the zero vector: retrieval reads that as "cold".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tapestry.serving.stage import Stage


class UserEncoder(Stage):
    name = "user_encoder"
    inputs = ("HISTORY",)
    outputs = ("USER_EMB",)

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "UserEncoder":
        from tapestry.training.sasrec import SASRec

        # One request is a handful of small matmuls: extra threads only add contention between model instances.
        torch.set_num_threads(1)
        return cls(SASRec.load_module(Path(artifact_dir) / "sasrec.pt"))

    @torch.inference_mode()
    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        history = t["HISTORY"].reshape(-1).astype(np.int64)
        if not (history > 0).any():
            dim = self.model.item_embeddings().shape[1]
            return {"USER_EMB": np.zeros(dim, dtype=np.float32)}
        emb = self.model.encode(torch.from_numpy(history).unsqueeze(0))[0]
        return {"USER_EMB": emb.float().numpy()}
