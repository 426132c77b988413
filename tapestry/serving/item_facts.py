"""What the explanations and the business rules read about items: one artifact, `item_facts.npz`, written by the
export beside the other artifacts and loaded by the rerank stage.

- vectors      [num_items, d] float32, the served model's item embeddings, L2-normalised (row 0, padding, is zero):
               the cosine between two items (which history item supports a recommendation; MMR's redundancy).
- entities     per item, its entity values ("genre=Comedy", "brand=Acme", ...) from the ETL's item_entities table,
               as a CSR pair (indptr [num_items + 1], indices into `entity_names`): an item has 0..many values.
- first_seen   [num_items] int64, the timestamp of the item's first event in the ETL (-1: never seen), and
  data_end     the newest event's timestamp: "fresh" means first seen within a window before data_end (the data
               sets are historical, so the export's data, not the wall clock, says what is new).

An export made before this file existed has none: `ItemFacts.load` returns None; explanations then name no
history item, and rules that need it are refused at load with a message saying to export again.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.artifacts import atomic_write_bytes

ITEM_FACTS_FILE = "item_facts.npz"


@dataclass
class ItemFacts:
    vectors: np.ndarray          # [num_items, d] float32, unit rows (row 0 zero)
    entity_indptr: np.ndarray    # [num_items + 1] int64
    entity_indices: np.ndarray   # [nnz] int64 into entity_names
    entity_names: list[str]      # "type=value"
    first_seen: np.ndarray       # [num_items] int64, -1 = never seen
    data_end: int                # the newest event's timestamp

    @property
    def num_items(self) -> int:
        return int(self.first_seen.shape[0])

    def entities_of(self, item: int) -> np.ndarray:
        return self.entity_indices[self.entity_indptr[item]:self.entity_indptr[item + 1]]

    def entity_pairs(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (position in `items`, entity value) pair of the items, position-major, values in name order:
        the CSR rows gathered with no Python loop (the per-request path)."""
        starts, ends = self.entity_indptr[items], self.entity_indptr[np.asarray(items) + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        return np.repeat(np.arange(len(lengths)), lengths), self.entity_indices[offsets + np.arange(total)]

    def entity_types(self) -> list[str]:
        """Each entity value's type ("genre" of "genre=Comedy"), aligned with entity_names."""
        return [name.partition("=")[0] for name in self.entity_names]

    @classmethod
    def build(cls, item_embeddings: np.ndarray, item_entities: pl.DataFrame | None, events: pl.DataFrame,
              num_items: int) -> "ItemFacts":
        """From the served model's item table, the ETL's item_entities (item_idx, entity_type, entity_value; None or
        empty: no entities) and its events (item_idx, timestamp)."""
        vectors = np.asarray(item_embeddings, dtype=np.float32)[:num_items].copy()
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        vectors[0] = 0.0
        names: list[str] = []
        indptr = np.zeros(num_items + 1, dtype=np.int64)
        indices = np.zeros(0, dtype=np.int64)
        if item_entities is not None and item_entities.height:
            ent = (item_entities.filter(pl.col("item_idx").is_between(1, num_items - 1))
                   .with_columns((pl.col("entity_type") + "=" + pl.col("entity_value")).alias("name"))
                   .unique(["item_idx", "name"]).sort("item_idx", "name"))
            names = sorted(set(ent["name"].to_list()))
            code = {n: i for i, n in enumerate(names)}
            indices = np.array([code[n] for n in ent["name"].to_list()], dtype=np.int64)
            counts = np.bincount(ent["item_idx"].to_numpy(), minlength=num_items)
            indptr[1:] = np.cumsum(counts)
        first = events.group_by("item_idx").agg(pl.col("timestamp").min())
        first_seen = np.full(num_items, -1, dtype=np.int64)
        idx = first["item_idx"].to_numpy()
        keep = idx < num_items
        first_seen[idx[keep]] = first["timestamp"].to_numpy()[keep]
        data_end = int(events["timestamp"].max()) if events.height else 0
        return cls(vectors, indptr, indices, names, first_seen, data_end)

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, vectors=self.vectors, entity_indptr=self.entity_indptr, entity_indices=self.entity_indices,
                 entity_names=np.array(self.entity_names, dtype=str), first_seen=self.first_seen,
                 data_end=np.array(self.data_end, dtype=np.int64))
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, artifact_dir: Path) -> "ItemFacts | None":
        path = Path(artifact_dir) / ITEM_FACTS_FILE
        if not path.exists():
            return None
        z = np.load(path)
        return cls(z["vectors"], z["entity_indptr"], z["entity_indices"], [str(n) for n in z["entity_names"]],
                   z["first_seen"], int(z["data_end"]))
