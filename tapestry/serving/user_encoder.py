"""Stage 2: the user's history -> USER_EMB [K, D], the user's interest vectors (K = 1 for single-vector models).

The encoder is whatever model the export serves (SASRec and its graph hybrids, BERT4Rec: one vector; ComiRec: K
interest vectors), rebuilt from `user_encoder.pt` (tapestry.inference.encoders). An anonymous visitor (USER_KIND
SESSION: an unknown id with recent events) is encoded by the session encoder when the export has one
(`session_encoder.pt`, SR-GNN over the served item table, so its vector searches the same FAISS index), else by
the served encoder from those events alone. No events at all (COLD) gives a zero row: retrieval reads it as cold.

HISTORY_TYPES (optional, aligned with HISTORY): each event's type index in the export's event-type vocabulary
(manifest "event_types": name i is index i + 1; 0 = unknown), which feature_lookup builds from the stored types and
the request's EVENT_TYPES. A behaviour-aware encoder (SASRec trained with behaviour=True) reads them beside the
items; absent, every type is unknown (0), what the model reads for an event of a type it never saw. Encoders
without event types ignore them, and so does the session encoder (SR-GNN reads items only).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from tapestry.inference.encoders import event_vocabulary, interest_vectors, load_encoder
from tapestry.inference.padding import left_pad, trim_padding
from tapestry.serving import validate as v
from tapestry.serving.stage import USER_SESSION, RequestError, Stage, checked_rows, export_manifest, one_row


class UserEncoder(Stage):
    name = "user_encoder"
    inputs = ("TENANT", "HISTORY", "USER_KIND", "HISTORY_TYPES")
    optional_inputs = frozenset({"HISTORY_TYPES"})
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
        # Type indices 1..num_event_types mean something to the model; None: it reads items only.
        vocabulary = event_vocabulary(model)
        self.num_event_types = len(vocabulary) if vocabulary else 0

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

    def _row(self, t: dict[str, np.ndarray]) -> tuple[np.ndarray, int, np.ndarray]:
        v.tenant(t, self.tenant)
        # An index past the item table would be an IndexError inside torch; a longer history than the positional
        # table would be cut silently. Both mean the caller is not feature_lookup: say so.
        history = v.item_indices(t, "HISTORY", self.num_items, max_size=self.max_len)
        kind = int(v.tensor(t, "USER_KIND", "int", max_size=1)[0])
        return history, kind, self._types(t, history)

    def _types(self, t: dict[str, np.ndarray], history: np.ndarray) -> np.ndarray:
        """HISTORY_TYPES checked against the vocabulary (zeros when absent or when the model reads no types);
        padding positions of HISTORY never carry a type."""
        if not self.num_event_types or t.get("HISTORY_TYPES") is None:
            return np.zeros_like(history)
        types = v.tensor(t, "HISTORY_TYPES", "int", min_size=0, max_size=self.max_len).astype(np.int64, copy=False)
        v.same_size("HISTORY_TYPES", types, "HISTORY", history)
        bad = types[(types < 0) | (types > self.num_event_types)]
        if bad.size:
            raise RequestError(f"HISTORY_TYPES holds {bad.size} event type index(es) outside "
                                 f"0..{self.num_event_types} (this export's event types), e.g. {int(bad[0])}")
        return np.where(history > 0, types, 0)

    @torch.inference_mode()
    def batch(self, rows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """One forward per encoder over every row it serves (left-padded, trimmed to the longest history among
        them); cold rows get a zero row without a forward."""
        out, passed = checked_rows(rows, self._row)
        groups: dict[bool, list[tuple[int, np.ndarray, np.ndarray]]] = {False: [], True: []}
        for i, (history, kind, types) in passed:
            if not (history > 0).any():
                out[i] = {"USER_EMB": np.zeros((1, self.dim), dtype=np.float32)}
            else:
                groups[kind == USER_SESSION and self.session_model is not None].append((i, history, types))
        for session, members in groups.items():
            if not members:
                continue
            model = self.session_model if session else self.model
            seqs = left_pad([history for _, history, _ in members], model.max_len, width=model.max_len)
            # Only as wide as the longest history in the group: attention costs grow with the square of the width,
            # and the encoders give the same vectors at any padding width (their contract; tested).
            seqs = trim_padding(torch.from_numpy(seqs))
            events = None
            if self.num_event_types and not session:   # the same columns as the trimmed item histories
                events = torch.from_numpy(left_pad([types for _, _, types in members], model.max_len,
                                                   width=model.max_len))[:, model.max_len - seqs.shape[1]:]
                events = events.to(self.device)
            vectors = interest_vectors(model, seqs.to(self.device), events).float().cpu().numpy()
            for (i, _, _), vec in zip(members, vectors):
                out[i] = {"USER_EMB": vec}
        return out
