"""Stage 2: the user's history -> USER_EMB [K, D], the user's interest vectors (K = 1 for single-vector models).

The encoder is whatever model the export serves (SASRec and its graph hybrids, BERT4Rec: one vector; ComiRec: K
interest vectors), rebuilt from `user_encoder.pt` (tapestry.serving.encoders). An anonymous visitor (USER_KIND
SESSION: an unknown id with recent events) is encoded by the session encoder when the export has one
(`session_encoder.pt`, SR-GNN over the served item table, so its vector searches the same FAISS index), else by
the served encoder from those events alone. No events at all (COLD) gives a zero row: retrieval reads it as cold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tapestry.serving import validate as v
from tapestry.serving.encoders import interest_vectors, load_encoder
from tapestry.serving.stage import USER_SESSION, Stage, export_manifest


class UserEncoder(Stage):
    name = "user_encoder"
    inputs = ("TENANT", "HISTORY", "USER_KIND")
    outputs = ("USER_EMB",)

    def __init__(self, tenant: str, model: torch.nn.Module, session_model: torch.nn.Module | None = None):
        self.tenant = tenant
        self.model = model.eval()
        self.session_model = session_model.eval() if session_model is not None else None
        self.num_items, self.max_len = model.num_items, model.max_len
        self.dim = int(model.item_embeddings().shape[1])

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "UserEncoder":
        artifact_dir = Path(artifact_dir)
        m = export_manifest(artifact_dir)
        session = m.get("session_encoder")
        return cls(m["tenant"], load_encoder(artifact_dir / m.get("user_encoder", "sasrec.pt")),
                   load_encoder(artifact_dir / session) if session else None)

    @torch.inference_mode()
    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        v.tenant(t, self.tenant)
        # An index past the item table would be an IndexError inside torch; a longer history than the positional
        # table would be cut silently. Both mean the caller is not feature_lookup: say so.
        history = v.item_indices(t, "HISTORY", self.num_items, max_size=self.max_len)
        kind = int(v.tensor(t, "USER_KIND", "int", max_size=1)[0])
        if not (history > 0).any():
            return {"USER_EMB": np.zeros((1, self.dim), dtype=np.float32)}
        model = self.session_model if kind == USER_SESSION and self.session_model is not None else self.model
        seqs = torch.from_numpy(history[-model.max_len:]).unsqueeze(0)
        return {"USER_EMB": interest_vectors(model, seqs)[0].float().numpy()}
