"""The DLRM ranker at request time: the unsharded model with its feature tables, however it was trained.

Only the architecture is read from the saved config (`DLRMArchitecture`); optimisers, sharding and the training loop
live in tapestry.training.dlrm_loop. Scoring runs through `DLRMInference` (plain torch: one bag call for every
key), so TorchRec's sharding machinery is never on the request path.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tapestry.artifacts import atomic_torch_save
from tapestry.inference.dlrm_features import DENSE, Lists, RankerFeatures, features_from_state, features_state, flat
from tapestry.models.ranking.dlrm import DLRM, DLRMInference


@dataclass(frozen=True)
class DLRMArchitecture:
    """What building the module needs; a training config (tapestry.training.dlrm_loop.DLRMConfig) holds these
    fields and more."""
    embedding_dim: int = 64
    bottom_mlp: tuple[int, ...] = (64,)
    top_mlp: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    user_table: bool = False
    kg_weight: float = 0.0              # > 0: the module has relation vectors for the TransE loss
    num_candidates: int = 100           # the list length it was trained on (the export retrieves as many)

    @classmethod
    def from_config(cls, config: dict) -> "DLRMArchitecture":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names})


def build_dlrm(arch: DLRMArchitecture, features: RankerFeatures, num_tasks: int) -> DLRM:
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

    tables = [EmbeddingBagConfig(name=name, embedding_dim=arch.embedding_dim, num_embeddings=max(rows, 1),
                                 feature_names=names, pooling=PoolingType.MEAN)
              for name, (rows, names) in features.table_sizes(arch.user_table).items()]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
    relations = [f"item_{t}" for t in features.item_types] if arch.kg_weight > 0 else []
    return DLRM(ebc, features.keys(arch.user_table), len(DENSE), [*arch.bottom_mlp, arch.embedding_dim],
                list(arch.top_mlp), num_tasks, arch.dropout, len(relations), relations)


def final_scores(logits: torch.Tensor, mask: torch.Tensor, task_mix: float) -> torch.Tensor:
    """log P(interaction) + task_mix * mean over the other tasks of log P(that event), per candidate."""
    logp = torch.log_softmax(logits.masked_fill(~mask.unsqueeze(-1), float("-inf")), dim=1)
    score = logp[..., 0]
    if logits.shape[-1] > 1 and task_mix:
        score = score + task_mix * logp[..., 1:].mean(-1)
    return score.masked_fill(~mask, float("-inf"))


class DLRMRanker:
    """The reranker protocol (tapestry.inference.rerankers.Reranker). Unlike the feature reranker it reads the
    history in time order (`ordered_history`): serving passes the padded, time-ordered HISTORY window."""

    ordered_history = True

    def __init__(self, config: dict, features: RankerFeatures, task_names: list[str], state: dict,
                 task_mix: float = 0.0, temperature: float = 1.0):
        """`config`: the saved config as a plain dict (every training field is kept in the file; the module is
        built from its architecture fields)."""
        self.config = dict(config)
        self.cfg = DLRMArchitecture.from_config(self.config)
        self.feats, self.task_names = features, list(task_names)
        self.task_mix, self.temperature = float(task_mix), float(temperature)
        self.model = build_dlrm(self.cfg, features, len(task_names))     # TorchRec tables: the saved layout
        self.model.load_state_dict(state)
        self.model.eval()
        self.infer = DLRMInference(self.model).eval()                    # what scores: plain torch, one bag call

    @property
    def tables(self):
        return self.feats.rerank

    @property
    def num_user_attrs(self) -> int:
        return int(self.feats.rerank.user_attrs.shape[1])

    def features(self, candidates: np.ndarray, retrieval_scores: np.ndarray, history: np.ndarray,
                 user_attrs: np.ndarray) -> Lists:
        return self.feats.request(candidates, retrieval_scores, np.asarray(history, np.int64), user_attrs)

    @torch.no_grad()
    def log_scores(self, lists: Lists, chunk: int = 64) -> torch.Tensor:
        """[B, N] final scores (log space, -inf at padding) for a batch of lists."""
        out = []
        keys = self.feats.keys(self.cfg.user_table)
        for s in range(0, len(lists), chunk):
            part = lists.take(np.arange(s, min(s + chunk, len(lists))))
            values, lengths = flat(keys, self.feats.sparse(part, self.cfg.user_table))
            logits = self.infer(torch.from_numpy(part.dense.reshape(-1, part.dense.shape[-1])), values, lengths)
            logits = logits.view(len(part), part.cands.shape[1], -1)
            out.append(final_scores(logits, torch.from_numpy(part.cands > 0), self.task_mix))
        return torch.cat(out) if out else torch.zeros(0, lists.cands.shape[1])

    def score(self, lists: Lists) -> np.ndarray:
        """Calibrated log P(next interaction = candidate | these candidates) for a one-list batch (the serving
        call). Log, not P: the order then equals the offline one exactly (probabilities of far-down candidates
        underflow to equal zeros at a sharp temperature)."""
        return torch.log_softmax(self.log_scores(lists)[0] / self.temperature, 0).numpy().astype(np.float32)

    def score_many(self, lists: list[Lists]) -> list[np.ndarray]:
        """`score` of each one-list batch, the forward run once over all of them (a dynamic batch's requests):
        padding columns are -inf before the softmax, so each list's scores are its own call's."""
        merged = self.log_scores(Lists.concat(lists)) / self.temperature
        return [torch.log_softmax(row[:part.cands.shape[1]], 0).numpy().astype(np.float32)
                for row, part in zip(merged, lists)]

    # ---- persistence (plain tensors and Python values: torch.load(weights_only=True) reads it) ---------------
    def payload(self) -> dict:
        return {"config": dict(self.config), "features": features_state(self.feats),
                "task_names": self.task_names, "task_mix": self.task_mix, "temperature": self.temperature,
                "state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    @classmethod
    def from_payload(cls, p: dict) -> "DLRMRanker":
        return cls(p["config"], features_from_state(p["features"]), p["task_names"], p["state"], p["task_mix"],
                   p["temperature"])

    def save(self, path: Path) -> None:
        atomic_torch_save(path, self.payload())

    @classmethod
    def load(cls, path: Path) -> "DLRMRanker":
        return cls.from_payload(torch.load(Path(path), map_location="cpu", weights_only=True))
