"""Item content as token ids that mean the same thing in every tenant: what a global model can transfer.

Item ids are private to a tenant (item 17 of one shop is not item 17 of another), so cross-tenant transfer goes
through what items SHARE:
- attribute NAMES: every (entity_type, entity_value) row of the ETL's item_entities becomes the string
  "genre=Comedy"; a vocabulary of those strings (`AttributeVocab`) is fixed by the global model's pre-training
  tenants, and a new tenant's names are looked up by string: the same name gets the same row, an unknown name
  the out-of-vocabulary row (learned while the tenant fine-tunes);
- title words: lowercase word unigrams and bigrams, hashed (blake2b, stable across processes, unlike hash())
  into a fixed number of buckets, so no vocabulary has to be agreed at all.

Index 0 is padding in both token tables (items have different numbers of tokens; row 0 of the item table, the
padding item, has none). Data preparation only: the nn.Module that embeds these ids is
tapestry.models.sequential.content_sasrec.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import polars as pl

PAD, OOV = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class AttributeVocab:
    """Attribute name strings -> rows 2..n+1 (0 = padding, 1 = out of vocabulary)."""
    names: tuple[str, ...]

    @classmethod
    def build(cls, names) -> "AttributeVocab":
        return cls(tuple(sorted(set(names))))

    def __len__(self) -> int:
        """Embedding table size, padding and OOV rows included."""
        return len(self.names) + 2

    def index(self) -> dict[str, int]:
        return {name: i + 2 for i, name in enumerate(self.names)}

    def encode(self, names: list[str]) -> list[int]:
        lookup = self.index()
        return [lookup.get(n, OOV) for n in names]


def attribute_names(item_entities: pl.DataFrame) -> pl.DataFrame:
    """(item_idx, name) with name = "<entity_type>=<entity_value>", in a stable order."""
    return item_entities.select("item_idx", pl.concat_str("entity_type", pl.lit("="), "entity_value").alias("name")
                                ).unique().sort("item_idx", "name")


def title_tokens(title: str | None, buckets: int, max_tokens: int) -> list[int]:
    """Hashed word unigrams then bigrams of `title`, each in 1..buckets, at most `max_tokens` (0 ids are padding)."""
    words = _WORD.findall((title or "").lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    out = []
    for g in grams[:max_tokens]:
        digest = hashlib.blake2b(g.encode("utf-8"), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") % buckets + 1)
    return out


def _padded(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), max(width, 1)), dtype=np.int64)
    for i, r in enumerate(rows):
        r = r[:width]
        out[i, :len(r)] = r
    return out


def item_token_tables(data, vocab: AttributeVocab, title_buckets: int, max_attributes: int,
                      max_title_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """([num_items, max_attributes] attribute rows, [num_items, max_title_tokens] title buckets) for `data`'s items,
    row = item_idx, 0-padded. Names outside `vocab` map to OOV; an item's extra attributes beyond the width are cut
    (in name order: deterministic)."""
    attrs: list[list[int]] = [[] for _ in range(data.num_items)]
    named = attribute_names(data.item_entities)
    for idx, row in zip(named["item_idx"].to_list(), vocab.encode(named["name"].to_list())):
        if 0 < idx < data.num_items:
            attrs[idx].append(row)
    titles: list[list[int]] = [[] for _ in range(data.num_items)]
    for idx, title in data.items.select("item_idx", "title").iter_rows():
        if 0 < idx < data.num_items:
            titles[idx] = title_tokens(title, title_buckets, max_title_tokens)
    return _padded(attrs, max_attributes), _padded(titles, max_title_tokens)
