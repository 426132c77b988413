"""Hashed word and character n-grams (the fastText trick): any text -> bucket ids, with no vocabulary to fit or
ship, so a brand-new item's title hashes into the same space at request time.

The hash is CRC32 of the UTF-8 token (stable across processes and machines; Python's `hash()` is salted per run),
with a prefix per n-gram kind so a word and a character trigram never share a bucket by construction.
"""
from __future__ import annotations

import re
import zlib

import numpy as np
import torch

_WORD = re.compile(r"\w+", re.UNICODE)


def tokens(text: str, word_ngrams: int = 2, char_ngrams: tuple[int, ...] = (3,)) -> list[str]:
    """Lower-cased words, word n-grams up to `word_ngrams`, and character n-grams of each `<word>`."""
    words = _WORD.findall(text.lower())
    out = [f"w:{w}" for w in words]
    for n in range(2, word_ngrams + 1):
        out += [f"w{n}:" + " ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    for n in char_ngrams:
        for w in words:
            padded = f"<{w}>"
            out += [f"c{n}:{padded[i:i + n]}" for i in range(len(padded) - n + 1)]
    return out


def bucket(token: str, num_buckets: int) -> int:
    return zlib.crc32(token.encode("utf-8")) % num_buckets


def hashed_bags(token_lists: list[list[str]], num_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat bucket ids, offsets) for nn.EmbeddingBag: bag r holds row r's tokens (an empty bag is allowed)."""
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, dtype=np.int64)
    flat = np.fromiter((bucket(t, num_buckets) for toks in token_lists for t in toks), dtype=np.int64,
                       count=int(lengths.sum()))
    return torch.from_numpy(flat), torch.from_numpy(offsets.astype(np.int64))
