"""Stage 2: the user's recent history -> a user vector (SASRec over graph-initialised item embeddings).

An all-padding history (unknown user, or no events) gives the zero vector: retrieval reads that as "cold".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tapestry.artifacts import atomic_write_bytes
from tapestry.serving import validate as v
from tapestry.serving.stage import Stage, export_manifest


def sasrec_kwargs(model) -> dict:
    """The constructor arguments of a SASRec module, read back from the module itself."""
    return {"num_items": model.item_emb.num_embeddings, "hidden_dim": model.hidden_dim,
            "num_blocks": len(model.blocks), "num_heads": model.blocks[0].num_heads if len(model.blocks) else 1,
            "max_len": model.max_len, "dropout": model.emb_drop.p, "side_dim": model.side_dim, "fusion": model.fusion}


def save_sasrec_module(model, path: Path) -> None:
    """The inference-only part of SASRec (kwargs + weights), written atomically for the serving side."""
    import io

    buf = io.BytesIO()
    torch.save({"kwargs": sasrec_kwargs(model),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_sasrec_module(path: Path):
    from tapestry.models.sequential.sasrec import SASRec

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = SASRec(**state["kwargs"])
    model.load_state_dict(state["state_dict"])
    return model.eval()


class UserEncoder(Stage):
    name = "user_encoder"
    inputs = ("TENANT", "HISTORY")
    outputs = ("USER_EMB",)

    def __init__(self, tenant: str, model: torch.nn.Module):
        self.tenant = tenant
        self.model = model.eval()
        self.num_items, self.max_len = model.item_emb.num_embeddings, model.max_len

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "UserEncoder":
        artifact_dir = Path(artifact_dir)
        return cls(export_manifest(artifact_dir)["tenant"], load_sasrec_module(artifact_dir / "sasrec.pt"))

    @torch.inference_mode()
    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        v.tenant(t, self.tenant)
        # An index past the item table would be an IndexError inside torch; a longer history than the positional
        # table would be cut silently. Both mean the caller is not feature_lookup: say so.
        history = v.item_indices(t, "HISTORY", self.num_items, max_size=self.max_len)
        if not (history > 0).any():
            dim = self.model.item_embeddings().shape[1]
            return {"USER_EMB": np.zeros(dim, dtype=np.float32)}
        emb = self.model.encode(torch.from_numpy(history).unsqueeze(0))[0]
        return {"USER_EMB": emb.float().numpy()}
