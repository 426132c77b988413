"""Per-tenant business rules, applied by the rerank stage to its scored candidates when it picks the top K.

A tenant's rules are a JSON file stored in its export as `artifacts/rules.json` (`tapestry export --rules FILE`
validates and copies it there; no file: no rules, the output is exactly the reranker's top K):

    {
      "max_per": {"genre": 3},          at most N items sharing one value of an entity type (the ETL's
                                        item_entities: genre, brand, category, creator, tag, ...); an item with
                                        several values counts toward each; the cap is strict, so a list can come
                                        back shorter than K when the candidates run out
      "mmr_weight": 0.3,                MMR in [0, 1]: each pick maximises (1 - w) * relevance - w * (max cosine to
                                        the items already picked, over the served model's item vectors)
      "blocked_item_ids": ["2858"],     never recommended (ids the catalogue does not know are ignored)
      "fresh_boost": 0.2,               added to the relevance of items first seen within the last
      "fresh_days": 90                  `fresh_days` days of the export's data (the ETL's timestamps, in seconds)
    }

Every key is optional. Relevance is the reranker's score min-max scaled to [0, 1] over the request's candidates,
so `fresh_boost` is in units of that range (0.2 = a fifth of the spread between the best and worst candidate).
SCORES stay the reranker's scores of the picked items (with MMR or a boost they need not be decreasing).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tapestry.artifacts import atomic_write_json
from tapestry.serving.item_facts import ItemFacts

RULES_FILE = "rules.json"
SECONDS_PER_DAY = 86_400


class RulesError(ValueError):
    """A rules file that cannot be applied: the message names the key and what is expected."""


@dataclass(frozen=True)
class Rules:
    max_per: dict[str, int] = field(default_factory=dict)
    mmr_weight: float = 0.0
    blocked_item_ids: tuple[str, ...] = ()
    fresh_boost: float = 0.0
    fresh_days: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.max_per or self.mmr_weight or self.blocked_item_ids or self.fresh_boost)

    @classmethod
    def from_dict(cls, raw, where: str = "rules") -> "Rules":
        if not isinstance(raw, dict):
            raise RulesError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise RulesError(f"{where}: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        max_per = raw.get("max_per", {})
        if not isinstance(max_per, dict) or not all(
                isinstance(k, str) and k and type(n) is int and n >= 1 for k, n in max_per.items()):
            raise RulesError(f"{where}: max_per must map entity types to integers >= 1, e.g. {{\"genre\": 3}}; "
                             f"got {max_per!r}")
        mmr = _number(raw, "mmr_weight", where)
        if not 0.0 <= mmr <= 1.0:
            raise RulesError(f"{where}: mmr_weight must be between 0 and 1, got {mmr}")
        blocked = raw.get("blocked_item_ids", [])
        if not isinstance(blocked, list) or not all(isinstance(b, str) and b for b in blocked):
            raise RulesError(f"{where}: blocked_item_ids must be a list of non-empty item id strings")
        boost, days = _number(raw, "fresh_boost", where), _number(raw, "fresh_days", where)
        if boost < 0:
            raise RulesError(f"{where}: fresh_boost must be >= 0, got {boost}")
        if boost and days <= 0:
            raise RulesError(f"{where}: fresh_boost needs fresh_days > 0 (the window that counts as fresh)")
        return cls(dict(max_per), mmr, tuple(blocked), boost, days)

    @classmethod
    def load(cls, path: Path) -> "Rules":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RulesError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def for_export(cls, artifact_dir: Path) -> "Rules":
        path = Path(artifact_dir) / RULES_FILE
        return cls.load(path) if path.exists() else cls()

    def save(self, path: Path) -> None:
        data = asdict(self)
        data["blocked_item_ids"] = list(self.blocked_item_ids)
        atomic_write_json(Path(path), data)


def _number(raw: dict, key: str, where: str) -> float:
    value = raw.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RulesError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


class RuleRanker:
    """The rules bound to one export's items; `top` picks the positions of the K items to return."""

    def __init__(self, rules: Rules, facts: ItemFacts | None, item_ids: list[str]):
        self.rules = rules
        needs = [name for name, used in (("max_per", rules.max_per), ("mmr_weight", rules.mmr_weight),
                                         ("fresh_boost", rules.fresh_boost)) if used]
        if needs and facts is None:
            raise RulesError(f"rules {needs} need the export's item_facts.npz, which this export (made by an older "
                             "tapestry) lacks: run `tapestry export` again")
        self.facts = facts
        index = {iid: i for i, iid in enumerate(item_ids) if i > 0}
        self.blocked = np.zeros(len(item_ids), dtype=bool)
        self.blocked[[index[b] for b in rules.blocked_item_ids if b in index]] = True
        self.fresh = np.zeros(len(item_ids), dtype=bool)
        if rules.fresh_boost:
            since = facts.data_end - rules.fresh_days * SECONDS_PER_DAY
            self.fresh[:facts.num_items] = facts.first_seen >= since
        self.caps = np.zeros(len(facts.entity_names) if facts is not None else 0, dtype=np.int64)  # 0: uncapped
        if rules.max_per:
            types = facts.entity_types()
            missing = sorted(set(rules.max_per) - set(types))
            if missing:
                raise RulesError(f"max_per names entity type(s) {missing} that this export's items do not have; "
                                 f"known: {sorted(set(types)) or 'none'}")
            self.caps[:] = [rules.max_per.get(t, 0) for t in types]

    def top(self, cands: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        """Positions into `cands` of the picked items, in order (at most k; fewer when blocks or caps run out)."""
        r = self.rules
        open_ = ~self.blocked[cands]
        if not open_.any():
            return np.zeros(0, dtype=np.int64)
        s = scores.astype(np.float64)
        lo, hi = s[open_].min(), s[open_].max()
        relevance = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
        relevance += r.fresh_boost * self.fresh[cands]
        if not (r.mmr_weight or r.max_per):
            order = np.argsort(-np.where(open_, relevance, -np.inf), kind="stable")
            return order[: min(k, int(open_.sum()))]
        vectors = self.facts.vectors[cands] if r.mmr_weight else None
        redundancy = np.zeros(len(cands))
        capped = None
        if r.max_per:
            # [N, V]: which capped entity values each candidate carries (V: the distinct ones among them).
            pos, values = self.facts.entity_pairs(cands)
            keep = self.caps[values] > 0
            pos, values = pos[keep], values[keep]
            distinct, column = np.unique(values, return_inverse=True)
            capped = np.zeros((len(cands), len(distinct)), dtype=np.int64)
            capped[pos, column] = 1
            room = self.caps[distinct].copy()          # picks left per value
        picked: list[int] = []
        while len(picked) < k and open_.any():
            value = np.where(open_, (1.0 - r.mmr_weight) * relevance - r.mmr_weight * redundancy, -np.inf)
            i = int(np.argmax(value))
            picked.append(i)
            open_[i] = False
            if capped is not None and capped.shape[1]:
                room -= capped[i]
                full = room <= 0
                if full.any():                          # every candidate with a value at its cap is out for good
                    open_ &= ~capped[:, full].any(axis=1)
            if vectors is not None:
                redundancy = np.maximum(redundancy, vectors @ vectors[i])
        return np.asarray(picked, dtype=np.int64)
