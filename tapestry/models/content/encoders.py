"""Item content encoders: one protocol, two implementations.

- HashedNgramEncoder (the default): trained on the tenant's own text. Title/description -> hashed word and
  character n-grams (tapestry.models.content.hashing) -> a mean EmbeddingBag; categories (`type=value` tokens,
  e.g. brand, genre) -> a second hashed bag; numeric columns -> a linear layer; the sum goes through a learned
  projection. Every parameter trains jointly with the graph model that uses it.
- SentenceTransformerEncoder: the same, but the text part is a FROZEN sentence-transformers embedding computed
  once from a LOCAL checkpoint the tenant configures (tapestry.models.content.sentence: nothing is downloaded),
  followed by a learned projection.

Both split the work the same way: `featurize(texts, categories, numeric)` runs once per fit (hashing, or the
frozen transformer) and returns tensors; `forward(features)` is the differentiable part, run every step.

The hashed bags are large (65k x 64 by default) and a step touches few rows: their gradients are SPARSE
(`sparse_parameters`, for torch.optim.SparseAdam); a dense Adam over them cost ~90 ms per step on one core.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from tapestry.models.content.hashing import hashed_bags, tokens


class ContentEncoder(Protocol):
    dim: int

    def featurize(self, texts: list[str], categories: list[list[str]], numeric: np.ndarray) -> dict[str, torch.Tensor]:
        """Per-item inputs of `forward` (no gradient): computed once, kept on the model's device."""

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, dim] item content vectors."""


class AttributeEncoder(nn.Module):
    """Categorical tokens (a hashed mean bag) + standardised numeric columns (linear): the non-text part."""

    def __init__(self, dim: int, category_buckets: int, num_numeric: int):
        super().__init__()
        self.category_buckets = category_buckets
        self.categories = nn.EmbeddingBag(category_buckets, dim, mode="mean", sparse=True)
        self.numeric = nn.Linear(num_numeric, dim, bias=False) if num_numeric else None
        nn.init.normal_(self.categories.weight, std=0.1)

    def featurize(self, categories: list[list[str]], numeric: np.ndarray) -> dict[str, torch.Tensor]:
        ids, offsets = hashed_bags([[f"cat:{t}" for t in toks] for toks in categories], self.category_buckets)
        return {"cat_ids": ids, "cat_offsets": offsets, "numeric": torch.as_tensor(numeric, dtype=torch.float32)}

    def forward(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.categories(f["cat_ids"], f["cat_offsets"])
        if self.numeric is not None:
            out = out + self.numeric(f["numeric"])
        return out


def sparse_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters with sparse gradients (the hashed bags): optimise them with torch.optim.SparseAdam."""
    return [m.weight for m in module.modules() if isinstance(m, (nn.EmbeddingBag, nn.Embedding)) and m.sparse]


class HashedNgramEncoder(nn.Module):
    def __init__(self, dim: int = 64, text_buckets: int = 1 << 16, category_buckets: int = 1 << 14,
                 num_numeric: int = 0, word_ngrams: int = 2, char_ngrams: tuple[int, ...] = (3,)):
        super().__init__()
        self.dim, self.text_buckets = dim, text_buckets
        self.word_ngrams, self.char_ngrams = word_ngrams, tuple(char_ngrams)
        self.text = nn.EmbeddingBag(text_buckets, dim, mode="mean", sparse=True)
        self.attributes = AttributeEncoder(dim, category_buckets, num_numeric)
        self.project = nn.Linear(dim, dim)
        nn.init.normal_(self.text.weight, std=0.1)

    def featurize(self, texts, categories, numeric) -> dict[str, torch.Tensor]:
        ids, offsets = hashed_bags([tokens(t, self.word_ngrams, self.char_ngrams) for t in texts], self.text_buckets)
        return {"text_ids": ids, "text_offsets": offsets, **self.attributes.featurize(categories, numeric)}

    def forward(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.project(self.text(f["text_ids"], f["text_offsets"]) + self.attributes(f))


class SentenceTransformerEncoder(nn.Module):
    """Frozen local sentence-transformers text vectors -> learned projection, plus the attribute part."""

    def __init__(self, checkpoint: str, text_dim: int, dim: int = 64, category_buckets: int = 1 << 14,
                 num_numeric: int = 0):
        super().__init__()
        self.dim, self.checkpoint = dim, checkpoint
        self.text = nn.Linear(text_dim, dim)
        self.attributes = AttributeEncoder(dim, category_buckets, num_numeric)
        self.project = nn.Linear(dim, dim)

    def featurize(self, texts, categories, numeric) -> dict[str, torch.Tensor]:
        from tapestry.models.content.sentence import embed_texts_offline

        vectors = embed_texts_offline(self.checkpoint, texts)
        if vectors.shape[1] != self.text.in_features:
            raise ValueError(f"{self.checkpoint} gives {vectors.shape[1]}-d vectors, the encoder expects "
                             f"{self.text.in_features}")
        return {"text_vectors": vectors, **self.attributes.featurize(categories, numeric)}

    def forward(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.project(self.text(f["text_vectors"]) + self.attributes(f))
