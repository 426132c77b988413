"""The ETL artifact directory as training-ready data: splits, per-user sequences, entity tables."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl


@dataclass
class InteractionData:
    path: Path
    num_users: int            # table size incl. OOV row 0
    num_items: int            # table size incl. OOV/padding row 0
    train: pl.DataFrame       # user_idx, item_idx, event_type, timestamp, weight, session_id
    valid: pl.DataFrame
    test: pl.DataFrame
    items: pl.DataFrame       # item_idx, item_id, title
    item_entities: pl.DataFrame
    user_entities: pl.DataFrame
    # Issue 19 (read by the typed graph only): user-user links (user_idx, relation, linked_user_idx), e.g. friends,
    # when the tenant declares link columns; and the event table's declared context columns (train/valid/test hold
    # them, with the optional query/dwell/price columns, when the input had them).
    user_links: pl.DataFrame | None = None
    context_columns: tuple[str, ...] = ()

    @classmethod
    def load(cls, etl_dir: Path) -> "InteractionData":
        etl_dir = Path(etl_dir)
        import json

        manifest = json.loads((etl_dir / "manifest.json").read_text())
        read = lambda name: pl.read_parquet(etl_dir / f"{name}.parquet")  # noqa: E731
        links = read("user_links") if (etl_dir / "user_links.parquet").exists() else None
        return cls(etl_dir, manifest["num_users"], manifest["num_items"], read("train"), read("valid"),
                   read("test"), read("items"), read("item_entities"), read("user_entities"), links,
                   tuple(manifest.get("config", {}).get("context_columns", ())))

    def sequences(self, splits: tuple[str, ...] = ("train",)) -> list[np.ndarray]:
        """Per user_idx (list index), the item indices of the given splits in time order."""
        frames = [getattr(self, s) for s in splits]
        df = pl.concat(frames).with_row_index("_order")
        # Splits are individually sorted and time-ordered across (train < valid < test), so concat order works.
        grouped = df.group_by("user_idx").agg(pl.col("item_idx").sort_by("timestamp", "_order"))
        out = [np.zeros(0, dtype=np.int64) for _ in range(self.num_users)]
        for u, items in grouped.iter_rows():
            out[u] = np.asarray(items, dtype=np.int64)
        return out

    def evaluation_users(self, split: str = "test") -> np.ndarray:
        return getattr(self, split)["user_idx"].to_numpy()

    def item_popularity(self) -> np.ndarray:
        """Train interaction counts per item index (row 0 = 0)."""
        counts = np.zeros(self.num_items, dtype=np.float64)
        vc = self.train.group_by("item_idx").len()
        counts[vc["item_idx"].to_numpy()] = vc["len"].to_numpy()
        return counts
