"""Contiguous integer ids with a reserved out-of-vocabulary index 0, and the mapping to go back."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

OOV_INDEX = 0


def _natural_order(ids: pl.Series) -> pl.Series:
    """Numeric ids sort numerically ("2" before "10"); anything else sorts as text. Deterministic either way."""
    as_int = ids.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0:
        return ids.gather(as_int.arg_sort())
    return ids.sort()


@dataclass
class IdEncoder:
    """Maps raw string ids <-> 1..n. Unknown raw ids encode to OOV_INDEX (0)."""
    name: str
    mapping: pl.DataFrame  # columns: <name>_id: str, <name>_idx: i64

    @classmethod
    def fit(cls, name: str, ids: pl.Series) -> "IdEncoder":
        uniq = _natural_order(ids.cast(pl.String).drop_nulls().unique())
        mapping = pl.DataFrame({f"{name}_id": uniq, f"{name}_idx": pl.int_range(1, len(uniq) + 1, eager=True)})
        return cls(name, mapping.with_columns(pl.col(f"{name}_idx").cast(pl.Int64)))

    @property
    def id_col(self) -> str:
        return f"{self.name}_id"

    @property
    def idx_col(self) -> str:
        return f"{self.name}_idx"

    def __len__(self) -> int:
        """Table size including the OOV row: valid indices are 0..len-1."""
        return self.mapping.height + 1

    def encode(self, frame: pl.LazyFrame | pl.DataFrame, column: str | None = None, maintain_order: bool = True):
        """Add `<name>_idx` for `column` (default `<name>_id`); unknown ids get OOV_INDEX.

        maintain_order=False lets the join return rows in any order (half the time in the streaming engine), for
        callers that sort afterwards.
        """
        column = column or self.id_col
        m = self.mapping.rename({self.id_col: column})
        if isinstance(frame, pl.LazyFrame):
            m = m.lazy()
        order = "left" if maintain_order else "none"
        return frame.join(m, on=column, how="left", maintain_order=order).with_columns(
            pl.col(self.idx_col).fill_null(OOV_INDEX)
        )

    def encode_ids(self, ids: list[str]) -> list[int]:
        lookup = dict(zip(self.mapping[self.id_col].to_list(), self.mapping[self.idx_col].to_list()))
        return [lookup.get(str(i), OOV_INDEX) for i in ids]

    def decode(self, idx: list[int]) -> list[str | None]:
        ids = self.mapping[self.id_col].to_list()
        return [ids[i - 1] if 0 < i <= len(ids) else None for i in idx]

    def save(self, path: Path) -> None:
        self.mapping.write_parquet(path)

    @classmethod
    def load(cls, name: str, path: Path) -> "IdEncoder":
        return cls(name, pl.read_parquet(path))
