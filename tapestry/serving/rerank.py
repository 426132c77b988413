"""Stage 5: score the filtered candidates with the reranker, keep the top K, attach ids and titles.

The reranker is whatever the export's manifest names ("reranker": "feature", "dlrm", ...; loaded through
tapestry.inference.rerankers). Every kind takes (candidates, retrieval scores, history, user attributes); one that
reads order (`ordered_history`: the DLRM, the fusion reranker) gets the time-ordered HISTORY window, the others the SEEN
set. A behaviour-aware fusion reranker also gets HISTORY_TYPES (optional, aligned with HISTORY: each event's type
index, feature_lookup's; absent = unknown types); the other rerankers do not read it.

After scoring, the tenant's business rules (tapestry.serving.rules: blocked items, caps per brand/genre, MMR
diversity, a fresh-item boost; from the export's rules.json, none by default) pick the K items, and each gets a
reason (tapestry.serving.explain: the REASONS output).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tapestry.inference.rerankers import Reranker, load_reranker
from tapestry.serving import validate as v
from tapestry.serving.explain import Explainer
from tapestry.serving.item_facts import ItemFacts
from tapestry.serving.rules import RuleRanker, Rules
from tapestry.serving.stage import (STRATEGIES, RequestError, Stage, bytes_array, checked_rows, export_manifest,
                                    one_row)


class Rerank(Stage):
    name = "rerank"
    inputs = ("TENANT", "FILTERED", "FILTERED_SCORES", "HISTORY", "SEEN", "USER_ATTRS", "USER_KIND", "K",
              "HISTORY_TYPES")
    optional_inputs = frozenset({"HISTORY_TYPES"})
    outputs = ("ITEM_IDS", "SCORES", "TITLES", "STRATEGY", "REASONS")

    def __init__(self, tenant: str, reranker: Reranker, item_ids: list[str], titles: list[str], max_k: int,
                 max_len: int, facts: ItemFacts | None = None, rules: Rules | None = None):
        """`facts`: the export's item_facts (explanations, rules); `rules`: the tenant's (default: none)."""
        self.tenant = tenant
        self.max_len = max_len  # of HISTORY
        self.reranker = reranker
        self.item_ids = item_ids
        self.titles = titles
        self.max_k = max_k
        self.rules = RuleRanker(rules, facts, item_ids) if rules is not None and rules.active else None
        self.explainer = Explainer(facts, item_ids, titles)
        # Event-type names of a behaviour-aware reranker (the fusion reranker with behaviour=True), else None.
        self.event_types = getattr(reranker, "event_types", None)

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "Rerank":
        artifact_dir = Path(artifact_dir)
        items = pl.read_parquet(artifact_dir / "items.parquet")
        size = int(items["item_idx"].max()) + 1
        ids, titles = [""] * size, [""] * size
        for idx, iid, title in items.select("item_idx", "item_id", "title").iter_rows():
            ids[idx], titles[idx] = iid, title or ""
        m = export_manifest(artifact_dir)
        reranker = cls.reranker_for(m, artifact_dir)
        return cls(m["tenant"], reranker, ids, titles, m["max_k"], m["max_len"], facts=ItemFacts.load(artifact_dir),
                   rules=Rules.for_export(artifact_dir))

    @classmethod
    def reranker_for(cls, manifest: dict, artifact_dir: Path) -> Reranker:
        """The manifest's reranker; a serving tier's rank stage serves another (tapestry.serving.tiers)."""
        return load_reranker(manifest.get("reranker", "feature"), artifact_dir)

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return one_row(self.batch([t]))

    def _request(self, t: dict[str, np.ndarray]):
        """The row's checked inputs: (k, candidates, retrieval scores, the history the reranker reads, user
        attributes, user kind, the HISTORY window the explanations read); padding candidates (0) dropped."""
        v.tenant(t, self.tenant)
        k = v.top_k(t, self.max_k)
        n = len(self.item_ids)
        cands = v.item_indices(t, "FILTERED", n, max_size=n)
        scores = v.floats(t, "FILTERED_SCORES", size=cands.size, allow_neg_inf=True)
        history = v.item_indices(t, "HISTORY", n, max_size=self.max_len)
        seen = v.item_indices(t, "SEEN", n, max_size=n)
        user_attrs = v.floats(t, "USER_ATTRS", size=self.reranker.num_user_attrs)
        kind = int(v.tensor(t, "USER_KIND", "int", max_size=1)[0])
        if kind not in STRATEGIES:
            raise RequestError(f"USER_KIND must be one of {sorted(STRATEGIES)}, got {kind}")
        keep = cands > 0
        cands, scores = cands[keep], scores[keep]
        if cands.size == 0:
            raise RequestError("no items left to recommend after removing seen and excluded items")
        if not np.isfinite(scores).all():  # -inf only marks the filter's placeholder (item 0), never a real item
            raise RequestError("FILTERED_SCORES must be finite for every real candidate")
        read = history if self.reranker.ordered_history else seen
        return k, cands, scores, read, user_attrs, kind, history, self._types(t, history)

    def _types(self, t: dict[str, np.ndarray], history: np.ndarray) -> np.ndarray | None:
        """HISTORY_TYPES for a behaviour-aware reranker (zeros when absent), checked; None for the others."""
        if self.event_types is None:
            return None
        if t.get("HISTORY_TYPES") is None:
            return np.zeros_like(history)
        types = v.tensor(t, "HISTORY_TYPES", "int", min_size=0, max_size=self.max_len).astype(np.int64, copy=False)
        v.same_size("HISTORY_TYPES", types, "HISTORY", history)
        bad = types[(types < 0) | (types > len(self.event_types))]
        if bad.size:
            raise RequestError(f"HISTORY_TYPES holds {bad.size} event type index(es) outside "
                               f"0..{len(self.event_types)} (this export's event types), e.g. {int(bad[0])}")
        return types

    def batch(self, rows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """The reranker scores every row's candidates in one call (the DLRM: one forward for all the lists)."""
        out, passed = checked_rows(rows, self._request)
        if not passed:
            return out
        feats = [self.reranker.features(cands, scores, read, attrs)
                 if types is None else self.reranker.features(cands, scores, read, attrs, types)
                 for _, (_, cands, scores, read, attrs, _, _, types) in passed]
        for (i, (k, cands, _, _, _, kind, history, _)), final in zip(passed, self.reranker.score_many(feats)):
            order = (np.argsort(-final, kind="stable")[:k] if self.rules is None
                     else self.rules.top(cands, final, k))
            if order.size == 0:
                out[i] = RequestError("no items left to recommend after the tenant's rules (blocked_item_ids)")
                continue
            top = cands[order]
            out[i] = {
                "ITEM_IDS": bytes_array(self.item_ids[j] for j in top),
                "SCORES": final[order].astype(np.float32),
                "TITLES": bytes_array(self.titles[j] for j in top),
                "STRATEGY": bytes_array([STRATEGIES[kind]]),
                "REASONS": np.array(self.explainer.reasons(top, history), dtype=np.object_),
            }
        return out
