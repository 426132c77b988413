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


class Explainer:
    def __init__(self, facts: ItemFacts | None, item_ids: list[str], titles: list[str]):
        self.facts = facts
        self.item_ids = item_ids
        self.titles = titles
        self._has_vectors = facts is not None and facts.vectors.size > 0
        self._num_entities = len(facts.entity_names) if facts is not None else 0

    def reasons(self, top: np.ndarray, history: np.ndarray) -> list[bytes]:
        """One JSON reason per item of `top` (item indices); `history` may hold 0 padding, newest last."""
        hist = np.asarray(history, dtype=np.int64)
        hist = hist[hist > 0][::-1]                    # newest first: argmax's first hit is the most recent
        if hist.size == 0:
            return [_encode({"kind": "popular", "text": "popular right now"})] * len(top)
        best_item, best_sim = self._supporting_items(top, hist)
        shared = self._shared_entities(top, hist)
        out = []
        for n, item in enumerate(top):
            reason: dict = {}
            texts = []
            if best_item is not None:
                h = int(best_item[n])
                title = self.titles[h] or self.item_ids[h]
                reason.update(kind="history_item", item_id=self.item_ids[h], title=title,
                              similarity=round(float(best_sim[n]), 3))
                texts.append(f"because you watched {title}")
            if shared[n] is not None:
                reason["shared"] = shared[n]
                texts.append(f"shares {shared[n]['type']}: {shared[n]['value']}")
                reason.setdefault("kind", "shared_entity")
            reason.setdefault("kind", "history")
            reason["text"] = "; ".join(texts) or "matches your history"
            out.append(_encode(reason))
        return out

    def _supporting_items(self, top: np.ndarray, hist: np.ndarray):
        if not self._has_vectors:
            return None, None
        v = self.facts.vectors
        # float64 elementwise product + sum: identical in every process (a BLAS call may split the sum by thread).
        sims = (v[top].astype(np.float64)[:, None, :] * v[hist].astype(np.float64)[None, :, :]).sum(axis=2)
        best = np.argmax(sims, axis=1)
        return hist[best], sims[np.arange(len(top)), best]

    def _shared_entities(self, top: np.ndarray, hist: np.ndarray) -> list[dict | None]:
        if not self._num_entities:
            return [None] * len(top)
        f = self.facts
        counts = np.bincount(np.concatenate([f.entities_of(int(h)) for h in np.unique(hist)]),
                             minlength=self._num_entities)
        out: list[dict | None] = []
        for item in top:
            values = f.entities_of(int(item))
            if values.size == 0 or counts[values].max() == 0:
                out.append(None)
                continue
            best = int(values[np.argmax(counts[values])])    # values are in name order: ties -> first name
            kind, _, value = f.entity_names[best].partition("=")
            out.append({"type": kind, "value": value, "count": int(counts[best])})
        return out
