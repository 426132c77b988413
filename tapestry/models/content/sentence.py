"""Text vectors from a LOCAL sentence-transformers checkpoint, strictly offline.

The tenant configures a directory (e.g. an all-MiniLM-L6-v2 copy); nothing is ever downloaded at run time:
HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are set before the library is imported and `local_files_only=True` is
passed, so a missing file is an error here, not a network call. sentence-transformers is an optional extra
(`pip install 'tapestry[content]'`): without it, a clear ImportError names that extra.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

EXTRA = "content"


def _library():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(f"a sentence-transformers text encoder needs the optional extra: "
                          f"pip install 'tapestry[{EXTRA}]' (or leave text_checkpoint empty for the hashed "
                          f"n-gram encoder)") from e
    return SentenceTransformer


def checkpoint_dim(checkpoint: str | Path) -> int:
    model = _load(checkpoint)
    # Renamed in sentence-transformers 6 (the old name warns); 5.x has only the old one.
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get_dim())


@functools.lru_cache(maxsize=2)      # a fit asks for the dimension, then the vectors: load the checkpoint once
def _load(checkpoint: str | Path):
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"sentence-transformers checkpoint {path} is not a local directory (nothing is "
                                "downloaded at run time: point text_checkpoint at a saved model)")
    SentenceTransformer = _library()
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def embed_texts_offline(checkpoint: str | Path, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """[len(texts), d] float32 CPU tensor, L2-normalised; an empty text gets the zero vector."""
    model = _load(checkpoint)
    with torch.no_grad():
        vectors = model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                               normalize_embeddings=True, show_progress_bar=False).float().cpu().clone()
    empty = torch.tensor([not t.strip() for t in texts], dtype=torch.bool)
    vectors[empty] = 0.0
    return vectors
