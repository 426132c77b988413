"""DLRM (Naumov et al. 2019) as a candidate ranker: sparse features through a TorchRec EmbeddingBagCollection,
dense features through a bottom MLP, pairwise dot products between all of them, a top MLP, one logit per task.

Single-device math only. Sharding is placement, done from outside by TorchRec's DistributedModelParallel
(tapestry.training.distributed): DMP swaps `embedding_bag_collection` for a sharded twin and wraps the rest in
DDP, so this module never knows how many processes it runs on.

Rows are (request, candidate) pairs: `dense` [R, F] and a KeyedJaggedTensor with R rows per key. User-level keys
(history bag, user attributes) repeat per candidate row: simpler than variable-batch KJTs, and at 100-200
candidates the extra lookups cost well under a millisecond on CPU.

Knowledge-graph rows (optional): the KJT may carry `kg_relation.numel()` rows AFTER the R ranking rows, each a
triple (item, relation t, value) with the head in `head_key` and the tail in the relation's own attribute key
(other keys empty). They go through the same tables, so the TransE term shapes the item and attribute vectors
the ranker reads. Both outputs come from one forward: DDP expects every parameter used once per step.
"""
from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor


def mlp(sizes: list[int], dropout: float = 0.0, last_activation: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DotInteraction(nn.Module):
    """Upper triangle (no diagonal) of the Gram matrix of [dense, sparse_1 .. sparse_S] vectors, next to dense."""

    def __init__(self, num_vectors: int):
        super().__init__()
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def num_pairs(self) -> int:
        return int(self.rows.numel())

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense [R, D], sparse [R, S, D] -> [R, D + (S+1)S/2]."""
        vectors = torch.cat([dense.unsqueeze(1), sparse], dim=1)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        return torch.cat([dense, gram[:, self.rows, self.cols]], dim=1)


class DLRM(nn.Module):
    """Logits [R, num_tasks] for R candidate rows; with KG rows also their TransE distances.

    `embedding_bag_collection` is composed in (the TorchRec habit): every feature must have the same dim D, the
    bottom MLP's last width. `feature_names` fixes the order of the sparse vectors in the interaction.
    """

    def __init__(self, embedding_bag_collection: EmbeddingBagCollection, feature_names: list[str],
                 dense_in: int, bottom_mlp: list[int], top_mlp: list[int], num_tasks: int,
                 dropout: float = 0.0, num_relations: int = 0, relation_keys: list[str] | None = None,
                 head_key: str = "item"):
        super().__init__()
        dims = {c.embedding_dim for c in embedding_bag_collection.embedding_bag_configs()}
        if len(dims) != 1 or bottom_mlp[-1] not in dims:
            raise ValueError(f"every table and the bottom MLP's last layer need one width, got tables {dims} and "
                             f"bottom_mlp {bottom_mlp}")
        self.embedding_bag_collection = embedding_bag_collection
        self.feature_names = list(feature_names)
        self.bottom = mlp([dense_in, *bottom_mlp])
        self.interaction = DotInteraction(len(self.feature_names) + 1)
        width = bottom_mlp[-1] + self.interaction.num_pairs
        self.top = mlp([width, *top_mlp], dropout=dropout)
        # One logit per task over a shared trunk. No bias: a listwise softmax is blind to a shift of all logits,
        # so a bias would get only rounding noise as gradient (which Adam then blows up to full-size steps).
        self.heads = nn.Linear(top_mlp[-1] if top_mlp else width, num_tasks, bias=False)
        self.relation_keys = list(relation_keys or [])
        self.head_key = head_key
        if num_relations:
            if len(self.relation_keys) != num_relations:
                raise ValueError("relation_keys must name one attribute key per relation")
            self.relations = nn.Embedding(num_relations, bottom_mlp[-1])
            nn.init.normal_(self.relations.weight, std=0.01)
        else:
            self.relations = None

    def rank(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [R, T] from dense [R, F] and the pooled sparse vectors [R, S, D] (in `feature_names` order)."""
        return self.heads(self.top(self.interaction(self.bottom(dense), sparse)))

    def forward(self, dense: torch.Tensor, features: KeyedJaggedTensor,
                kg_relation: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled = self.embedding_bag_collection(features).to_dict()
        rows = dense.shape[0]
        logits = self.rank(dense, torch.stack([pooled[name][:rows] for name in self.feature_names], dim=1))
        kg = None
        if kg_relation is not None and kg_relation.numel():
            if self.relations is None:
                raise ValueError("KG rows given but the model was built with num_relations=0")
            head = pooled[self.head_key][rows:]
            # A KG row fills exactly one relation key, so the sum over relation keys is that row's tail.
            tail = torch.stack([pooled[k][rows:] for k in self.relation_keys], dim=0).sum(0)
            kg = (head + self.relations(kg_relation) - tail).norm(dim=1)
        return logits, kg


class FlatEmbeddingBags(nn.Module):
    """Inference twin of an EmbeddingBagCollection (mean pooling): every table stacked into one weight matrix, so
    all keys pool in ONE `embedding_bag` call instead of a KJT split and one call per table. Plain torch: the
    serving path needs neither TorchRec's KJT machinery (~2 ms per request here) nor FBGEMM."""

    def __init__(self, ebc: EmbeddingBagCollection, keys: list[str]):
        super().__init__()
        weights, base, row = [], {}, 0
        for cfg in ebc.embedding_bag_configs():
            w = ebc.embedding_bags[cfg.name].weight.detach()
            base.update({f: row for f in cfg.feature_names})     # a shared table serves several keys
            weights.append(w)
            row += w.shape[0]
        self.register_buffer("weight", torch.cat(weights).clone())
        self.register_buffer("key_base", torch.tensor([base[k] for k in keys], dtype=torch.long))

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """KJT-ordered `values` / `lengths` ([K * R], key-major) -> pooled [R, K, D]; an empty bag pools to 0."""
        k = self.key_base.numel()
        per_key = lengths.view(k, -1).sum(1)
        ids = values + torch.repeat_interleave(self.key_base, per_key)
        offsets = torch.cumsum(lengths, 0) - lengths
        pooled = nn.functional.embedding_bag(ids, self.weight, offsets, mode="mean")
        return pooled.view(k, -1, self.weight.shape[1]).transpose(0, 1)


class DLRMInference(nn.Module):
    """The unsharded inference module: a trained DLRM's dense layers over FlatEmbeddingBags of its tables."""

    def __init__(self, dlrm: DLRM):
        super().__init__()
        self.bags = FlatEmbeddingBags(dlrm.embedding_bag_collection, dlrm.feature_names)
        self.bottom, self.interaction, self.top, self.heads = dlrm.bottom, dlrm.interaction, dlrm.top, dlrm.heads

    def forward(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        sparse = self.bags(values, lengths)
        return self.heads(self.top(self.interaction(self.bottom(dense), sparse)))


def listwise_loss(logits: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor,
                  task_labels: torch.Tensor, task_weights: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over each list's candidates, per task.

    logits [B, N, T]; mask [B, N] (True = real candidate); positive [B] (index of the target in its list);
    task_labels [B, T] (1 where the target's event counts for that task). Each task's term is summed over the
    lists that have its event and divided by B, not by the count of such lists: the loss stays a plain mean over
    lists, so per-process means over equal shards average to the global one (what sharded training relies on).
    """
    logp = torch.log_softmax(logits.masked_fill(~mask.unsqueeze(-1), float("-inf")), dim=1)
    picked = logp[torch.arange(len(positive), device=logits.device), positive]          # [B, T]
    return -(picked * task_labels * task_weights).sum() / len(positive)


def transe_loss(pos_dist: torch.Tensor, neg_dist: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Margin ranking loss of TransE (Bordes et al. 2013): true triples closer than corrupted ones by `margin`."""
    return torch.relu(margin + pos_dist - neg_dist).mean()
