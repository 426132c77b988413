"""Stage 2: the user's history -> USER_EMB [K, D], the user's interest vectors (K = 1 for single-vector models).

The encoder is whatever model the export serves (SASRec and its graph hybrids, BERT4Rec: one vector; ComiRec: K
interest vectors), rebuilt from `user_encoder.pt` (tapestry.inference.encoders). An anonymous visitor (USER_KIND
SESSION: an unknown id with recent events) is encoded by the session encoder when the export has one
(`session_encoder.pt`, SR-GNN over the served item table, so its vector searches the same FAISS index), else by
the served encoder from those events alone. No events at all (COLD) gives a zero row: retrieval reads it as cold.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from tapestry.inference.encoders import interest_vectors, load_encoder
from tapestry.inference.padding import left_pad, trim_padding
from tapestry.serving import validate as v
from tapestry.serving.stage import USER_SESSION, Stage, checked_rows, export_manifest, one_row


class UserEncoder(Stage):
    name = "user_encoder"
    inputs = ("TENANT", "HISTORY", "USER_KIND")
    outputs = ("USER_EMB",)

    def __init__(self, tenant: str, model: torch.nn.Module, session_model: torch.nn.Module | None = None,
                 device: str | torch.device = "cpu"):
        """`device`: where the encoders run ("auto": CUDA when torch sees a GPU); answers always come back as
        numpy on the CPU."""
        from tapestry.config import resolve_device

        self.tenant = tenant
        self.device = resolve_device(str(device))
        self.model = model.eval().to(self.device)
        self.session_model = session_model.eval().to(self.device) if session_model is not None else None
        self.num_items, self.max_len = model.num_items, model.max_len
        self.dim = int(model.item_embeddings().shape[1])

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "UserEncoder":
        artifact_dir = Path(artifact_dir)
        m = export_manifest(artifact_dir)
        session = m.get("session_encoder")
        return cls(m["tenant"], load_encoder(artifact_dir / m.get("user_encoder", "sasrec.pt")),
                   load_encoder(artifact_dir / session) if session else None,
                   device=os.environ.get("TAPESTRY_SERVING_DEVICE", "auto"))

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return one_row(self.batch([t]))

    def _row(self, t: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
        v.tenant(t, self.tenant)
        # An index past the item table would be an IndexError inside torch; a longer history than the positional
        # table would be cut silently. Both mean the caller is not feature_lookup: say so.
        history = v.item_indices(t, "HISTORY", self.num_items, max_size=self.max_len)
        kind = int(v.tensor(t, "USER_KIND", "int", max_size=1)[0])
        return history, kind

    @torch.inference_mode()
    def batch(self, rows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """One forward per encoder over every row it serves (left-padded, trimmed to the longest history among
        them); cold rows get a zero row without a forward."""
        out, passed = checked_rows(rows, self._row)
        groups: dict[bool, list[tuple[int, np.ndarray]]] = {False: [], True: []}
        for i, (history, kind) in passed:
            if not (history > 0).any():
                out[i] = {"USER_EMB": np.zeros((1, self.dim), dtype=np.float32)}
            else:
                groups[kind == USER_SESSION and self.session_model is not None].append((i, history))
        for session, members in groups.items():
            if not members:
                continue
            model = self.session_model if session else self.model
            seqs = left_pad([history for _, history in members], model.max_len, width=model.max_len)
            # Only as wide as the longest history in the group: attention costs grow with the square of the width,
            # and the encoders give the same vectors at any padding width (their contract; tested).
            seqs = trim_padding(torch.from_numpy(seqs))
            vectors = interest_vectors(model, seqs.to(self.device)).float().cpu().numpy()
            for (i, _), vec in zip(members, vectors):
                out[i] = {"USER_EMB": vec}
        return out
