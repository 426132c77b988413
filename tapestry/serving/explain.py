"""Explanations: one reason per recommended item, computed at request time from what the export holds
(tapestry.serving.item_facts) and the user's HISTORY window (newest last).

The ensemble's REASONS output is BYTES [k], aligned with ITEM_IDS: each entry is one UTF-8 JSON object,

    {"kind": "history_item", "item_id": "1", "title": "Toy Story (1995)", "similarity": 0.812,
     "shared": {"type": "genre", "value": "Comedy", "count": 7},
     "text": "because you watched Toy Story (1995); shares genre: Comedy"}

- kind "history_item": the history item whose vector is most similar (cosine of the served model's item vectors)
  to the recommended one; ties go to the most recent. "shared", when present, is the recommended item's entity
  value (genre, brand, category, creator, tag: whatever the ETL's item_entities hold) that appears most often in
  the history ("count" history items carry it; ties: the first value in name order).
- kind "shared_entity": an export without item vectors (made before item_facts.npz) but with entities: the shared
  value only.
- kind "popular": no history (a cold visitor, or the store fallback without recent events): the popularity list.
- kind "history": history but nothing to name (an old export without item_facts.npz).

"text" is a ready-made English line (what `tapestry recommend` and the demo print); the other fields are for
clients that render their own. Similarities are rounded to 3 decimals and computed in float64 with plain numpy (no
BLAS), so Triton's answer and the in-process pipeline's are the same bytes.
"""
from __future__ import annotations

import json

import numpy as np

from tapestry.serving.item_facts import ItemFacts


def _encode(reason: dict) -> bytes:
    return json.dumps(reason, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _quoted(text: str) -> str:
    """`text` as a JSON string body (escaped, no surrounding quotes): escaped pieces concatenate into one string."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


POPULAR = _encode({"kind": "popular", "text": "popular right now"})
DENSE_ENTITY_LIMIT = 64_000_000   # items x entity values up to which the item -> values matrix is kept dense


class Explainer:
    """Per request: one small matmul (the top items against the history), a few array operations for the shared
    values, and JSON strings assembled from escaped pieces cached per item and per entity value (one json.dumps
    per reason cost more than all the rest: benchmarks/rules_quality.py)."""

    def __init__(self, facts: ItemFacts | None, item_ids: list[str], titles: list[str]):
        self.facts = facts
        self.item_ids = item_ids
        self.titles = titles
        self._has_vectors = facts is not None and facts.vectors.size > 0
        self._num_entities = len(facts.entity_names) if facts is not None else 0
        self._items: dict[int, tuple[str, str, str]] = {}   # item -> its "item_id" field, "because ..." text, title
        self._entities: list[tuple[str, str]] = []          # value -> its "type"/"value" fields, its "shares" text
        for name in facts.entity_names if facts is not None else ():
            kind, _, value = name.partition("=")
            self._entities.append((f'"type":"{_quoted(kind)}","value":"{_quoted(value)}"',
                                   _quoted(f"shares {kind}: {value}")))
        self._dense = None     # [num_items, E] bool: a row gather instead of the CSR gather, when it fits
        if self._num_entities and facts.num_items * self._num_entities <= DENSE_ENTITY_LIMIT:
            self._dense = np.zeros((facts.num_items, self._num_entities), dtype=bool)
            pos, values = facts.entity_pairs(np.arange(facts.num_items))
            self._dense[pos, values] = True

    def reasons(self, top: np.ndarray, history: np.ndarray) -> list[bytes]:
        """One JSON reason per item of `top` (item indices); `history` may hold 0 padding, newest last."""
        hist = np.asarray(history, dtype=np.int64)
        hist = hist[hist > 0][::-1]                    # newest first: argmax's first hit is the most recent
        if hist.size == 0:
            return [POPULAR] * len(top)
        shared, counts = self._shared_entities(top, hist)
        if shared is None:
            shared, counts = [-1] * len(top), [0] * len(top)
        else:
            shared, counts = shared.tolist(), counts.tolist()
        # Keys in sorted order, as json.dumps(sort_keys=True) writes them (a test holds the two equal).
        out = []
        if not self._has_vectors:
            for entity, count in zip(shared, counts):
                if entity < 0:
                    out.append(b'{"kind":"history","text":"matches your history"}')
                    continue
                fields, text = self._entities[entity]
                out.append(f'{{"kind":"shared_entity","shared":{{"count":{count},{fields}}},"text":"{text}"}}'
                           .encode("utf-8"))
            return out
        best_item, best_sim = self._supporting_items(top, hist)
        for item, sim, entity, count in zip(best_item.tolist(), best_sim.tolist(), shared, counts):
            item_field, because, title = self._items.get(item) or self._item(item)
            if entity < 0:
                reason = (f'{{{item_field},"kind":"history_item","similarity":{sim},"text":"{because}",'
                          f'"title":"{title}"}}')
            else:
                fields, text = self._entities[entity]
                reason = (f'{{{item_field},"kind":"history_item","shared":{{"count":{count},{fields}}},'
                          f'"similarity":{sim},"text":"{because}; {text}","title":"{title}"}}')
            out.append(reason.encode("utf-8"))
        return out

    def _item(self, h: int) -> tuple[str, str, str]:
        title = self.titles[h] or self.item_ids[h]
        cached = self._items[h] = (f'"item_id":"{_quoted(self.item_ids[h])}"',
                                   _quoted(f"because you watched {title}"), _quoted(title))
        return cached

    def _supporting_items(self, top: np.ndarray, hist: np.ndarray):
        """Per top item: the most similar history item (ties: the most recent) and the cosine, rounded."""
        v = self.facts.vectors
        sims = v[top] @ v[hist].T      # [k, L]: a single-threaded BLAS call at this size
        best = np.argmax(sims, axis=1)
        return hist[best], np.round(sims[np.arange(len(top)), best].astype(np.float64), 3)

    def _shared_entities(self, top: np.ndarray, hist: np.ndarray):
        """Per top item: its entity value carried by the most history items (-1: none; ties: the first value in
        name order) and that count."""
        if not self._num_entities:
            return None, None
        if self._dense is not None:
            counts = self._dense[np.unique(hist)].sum(axis=0)
            score = np.where(self._dense[top], counts, -1)
            best = np.argmax(score, axis=1)
            best_count = score[np.arange(len(top)), best]
            return np.where(best_count > 0, best, -1), best_count
        f = self.facts
        counts = np.bincount(f.entity_pairs(np.unique(hist))[1], minlength=self._num_entities)
        pos, values = f.entity_pairs(top)
        best = np.full(len(top), -1, dtype=np.int64)
        best_count = np.zeros(len(top), dtype=np.int64)
        if values.size:
            c = counts[values]
            order = np.lexsort((values, -c, pos))      # per position: most carried first, then name order
            first = order[np.r_[True, pos[order][1:] != pos[order][:-1]]]
            keep = c[first] > 0
            best[pos[first][keep]] = values[first][keep]
            best_count[pos[first][keep]] = c[first][keep]
        return best, best_count
