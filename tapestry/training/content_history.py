"""`content_history`: the served retriever over an item encoder's table (default: lightgcn_content's), so the
export can serve items without events (issue 19).

A user is the normalised, recency-weighted mean of their history's vectors in that table
(tapestry.models.retrieval.history_mean); scores are inner products with the table, exactly what the exported FAISS
index computes. Nothing is trained: `fit` copies the upstream table (read in `bind`). With ETLConfig.cold_items the
table has rows for catalogue items without events, placed by their content and brand/category neighbours, so a
brand-new item reaches the users whose histories are like it, offline and in the served path alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tapestry.models.retrieval.history_mean import HistoryMeanEncoder
from tapestry.training.base import Recommender
from tapestry.training.sequential import SequentialRecommender


@dataclass
class ContentHistoryConfig:
    item_table_from: str = "lightgcn_content"   # registry name of the item encoder whose item_embeddings() are used
    max_len: int = 50                           # newest history items read
    recency_decay: float = 1.0                  # weight of the j-th newest item = decay**j (1: the plain mean)


class ContentHistoryRecommender(SequentialRecommender):
    Config = ContentHistoryConfig
    parallelism = "closed_form"     # nothing to train: fitted once in the launching process

    def __init__(self, config: ContentHistoryConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self._table: torch.Tensor | None = None
        self.model: HistoryMeanEncoder | None = None

    def bind(self, upstream: dict[str, Recommender]) -> None:
        self._table = self.upstream_model(upstream, "item_table_from").item_embeddings().detach().float().cpu()

    def fit(self, data, graph=None) -> "ContentHistoryRecommender":
        if self._table is None:
            raise RuntimeError(f"content_history item_table_from={self.cfg.item_table_from!r}: call bind() first")
        if self._table.shape[0] != data.num_items:
            raise ValueError(f"{self.cfg.item_table_from} gives {self._table.shape[0]} item vectors, the data has "
                             f"{data.num_items} items")
        self._build(self._table)
        return self

    def _build(self, table: torch.Tensor) -> None:
        c = self.cfg
        model = HistoryMeanEncoder(table.shape[0], table.shape[1], c.max_len, c.recency_decay)
        model.table.copy_(table)
        self.model, self.num_items = model.to(self.device).eval(), table.shape[0]

    def _get_state(self):
        return {"table": self.model.table.detach().cpu()}

    def _set_state(self, state):
        self._build(state["table"])
