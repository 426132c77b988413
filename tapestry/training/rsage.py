"""Relational GraphSAGE as a Recommender: tapestry.models.graph.rsage over the typed graph, on sampled subgraphs.

Graph (`graph`, tapestry.graph.typed.GRAPH_KINDS): "typed" (default: one relation per event type, entities,
sessions, queries, context values, user links; see tapestry/graph/typed.py), "typed_mediated" (plus mediated
event nodes), "interactions" (one user-item relation, nothing else), "none" (no edges: ID embeddings and root
weights only), or "given" (the graph `fit` is handed, e.g. the pipeline's build_hetero_graph). Swapping the graph
and nothing else is the ablation of benchmarks/hetero_ablation.py.

Training: the positives are the distinct (user, item) pairs of the training events of `target_events` (every event
type when empty), whatever relations the graph has. PyG's LinkNeighborLoader machinery samples `batch_size` of them per step (tapestry.training.link_steps; sharded
over the processes under --distributed N)
with `num_negatives` uniform items each, and samples `num_neighbors[l]` neighbours per node, per relation, per hop
(the same fan-out as tapestry.training.sage, applied to every relation). Each positive's own edges are removed from
its step's subgraph in every user<->item relation (as HGT and SAGE do: at test time the held-out pair is never an
edge); two-hop paths through the positive's own session, query, context value or mediated event node stay. Loss: cosine sampled softmax of each user against its positive and every seed item of the step (the other
positives and the uniform negatives), at `temperature` (tapestry.training.losses).

Inference: one full-graph pass (every neighbour, no sampling), so the stored vectors are deterministic. Scoring:
cosine of user and item vectors; users without training interactions are scored from the mean of their history
items' vectors (flat scores with no history: serve popularity), as GraphSAGE's recommender does.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData

from tapestry.graph.hetero import INTERACTS
from tapestry.graph.typed import GRAPH_KINDS, behaviour_types, graph_for, supervision_pairs
from tapestry.models.graph.rsage import RelationalSAGE
from tapestry.training import data_parallel
from tapestry.training.base import Recommender, seeded, shuffled_epoch, user_queries
from tapestry.training.hgt import lean_graph, subgraph_inputs, target_edge_masks
from tapestry.training.link_steps import LinkSteps
from tapestry.training.loop import run_epochs
from tapestry.training.losses import sampled_softmax_loss


@dataclass
class RSAGEConfig:
    """Defaults as tapestry.training.sage's (ML-100K-sized); the tests and `--quick` use smaller ones."""
    embedding_dim: int = 64
    num_neighbors: tuple[int, ...] = (10, 5)  # neighbours per node, per relation, per hop; its length = layers
    epochs: int = 10
    batch_size: int = 1024            # positive (user, item) pairs per step
    lr: float = 1e-2                  # Adam
    weight_decay: float = 0.0
    num_negatives: int = 1            # uniform negative items per positive (softmax candidates with the positives)
    temperature: float = 0.1          # cosine / temperature
    dropout: float = 0.0              # between layers
    aggr: str = "mean"                # how a node type combines its relations: "mean", "sum" or "max"
    graph: str = "typed"              # GRAPH_KINDS (see the module docstring)
    target_events: tuple[str, ...] = ()   # event types whose training events are positives (empty: all)
    exclude_target_edges: bool = True     # drop each positive's own edges from its step's subgraph
    seed: int = 0


def _known(graph: HeteroData, positives: torch.Tensor) -> dict[str, torch.Tensor]:
    """1.0 for users / items with a training interaction (an edge of a behaviour relation, or a positive)."""
    keep = {nt: torch.zeros(int(graph[nt].num_nodes)) for nt in ("user", "item")}
    for et in behaviour_types(graph):
        ei = graph[et].edge_index
        keep["user"][ei[0]] = 1.0
        keep["item"][ei[1]] = 1.0
    keep["user"][positives[0]] = 1.0
    keep["item"][positives[1]] = 1.0
    keep["user"][0] = keep["item"][0] = 0.0          # the OOV / padding rows
    return keep


def link_loader(lean: HeteroData, positives: torch.Tensor, cfg: RSAGEConfig):
    """`batch_size` positives per step with triplet negatives, fan-out `num_neighbors` on every relation."""
    from torch_geometric.loader import LinkNeighborLoader
    from torch_geometric.sampler import NegativeSampling

    weight = torch.ones(int(lean["item"].num_nodes))
    weight[0] = 0.0                     # never the padding row as a negative
    with warnings.catch_warnings():     # "NeighborSampler without pyg-lib is deprecated": torch-sparse is intended
        warnings.simplefilter("ignore", UserWarning)
        return LinkNeighborLoader(
            lean, {et: list(cfg.num_neighbors) for et in lean.edge_types}, edge_label_index=(INTERACTS, positives),
            batch_size=cfg.batch_size, shuffle=True, num_workers=0,
            neg_sampling=NegativeSampling("triplet", cfg.num_negatives, dst_weight=weight),
            generator=torch.Generator().manual_seed(cfg.seed))


class RSAGERecommender(Recommender):
    """Relational GraphSAGE: per-relation weights over the typed graph, neighbour-sampled training."""
    Config = RSAGEConfig
    parallelism = "data"            # shuffled_epoch over sampled link batches: DDP under --distributed N

    def __init__(self, config: RSAGEConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        c = self.cfg
        if c.graph not in GRAPH_KINDS:
            raise ValueError(f"graph must be one of {GRAPH_KINDS}, got {c.graph!r}")
        if c.aggr not in ("mean", "sum", "max"):
            raise ValueError(f"aggr must be 'mean', 'sum' or 'max', got {c.aggr!r}")
        if not c.num_neighbors:
            raise ValueError("num_neighbors needs one fan-out per layer (at least one)")
        c.num_neighbors, c.target_events = tuple(c.num_neighbors), tuple(c.target_events)   # lists after a load
        self.num_users: int | None = None
        self.relations_: list[tuple[str, str, str]] = []     # the edge types the model was trained over
        self._user_emb: torch.Tensor | None = None
        self._item_emb: torch.Tensor | None = None
        self._known_users: torch.Tensor | None = None

    def fit(self, data, graph=None) -> "RSAGERecommender":
        c, dev = self.cfg, self.device
        graph = graph_for(data, c.graph, graph)
        self.num_users, self.num_items = int(graph["user"].num_nodes), int(graph["item"].num_nodes)
        self.relations_ = list(graph.edge_types)
        positives = torch.unique(supervision_pairs(data, c.target_events), dim=1)   # repeats weigh once
        if positives.size(1) == 0:
            raise ValueError(f"no training events of types {c.target_events or 'any'} to learn from")
        keep = {nt: k.to(dev) for nt, k in _known(graph, positives).items()}
        categories = {nt: graph[nt].category for nt in graph.node_types if "category" in graph[nt]}
        sizes = {nt: int(graph[nt].num_categories) if nt in categories else int(graph[nt].num_nodes)
                 for nt in graph.node_types}
        lean = lean_graph(graph)
        with seeded(dev, c.seed):
            module = RelationalSAGE(sizes, lean.metadata(), c.embedding_dim, len(c.num_neighbors), c.dropout,
                                    c.aggr, categories or None).to(dev)
            opt = torch.optim.Adam(module.parameters(), lr=c.lr, weight_decay=c.weight_decay)
            # The shared minibatch loop over sampled link batches: DDP under torchrun (tapestry.training.link_steps).
            steps = LinkSteps(link_loader(lean, positives, c), positives, self.num_items, c.num_negatives, c.seed)
            run_epochs(self, module, c.epochs, "rsage", lambda beat: shuffled_epoch(
                module, opt, steps.num_positives, c.batch_size,
                lambda rows: (self._batch_loss(module, steps.batch(rows), keep, steps.global_targets(rows)), 1,
                              len(rows)), beat))
        self._infer(module, graph, keep)
        return self

    def _batch_loss(self, module: RelationalSAGE, batch: HeteroData, keep: dict,
                    targets: torch.Tensor | None = None) -> torch.Tensor:
        dev = self.device
        masks = target_edge_masks(batch, self.num_items, targets) if self.cfg.exclude_target_edges else None
        n_id, edges, _ = subgraph_inputs(batch, {}, dev, masks)
        out = module(n_id, edges, keep)
        src = batch["user"].src_index.to(dev)
        pos, neg = batch["item"].dst_pos_index.to(dev), batch["item"].dst_neg_index.to(dev)
        seeds = torch.unique(torch.cat([pos, neg.reshape(-1)]))   # every seed item is a candidate for every user
        # Under DDP: the seed items of every process's share, i.e. of the global batch.
        cands = data_parallel.gather_unique(out["item"][seeds], batch["item"].n_id.to(dev)[seeds])
        return sampled_softmax_loss(out["user"][src], out["item"][pos], cands, self.cfg.temperature)

    @torch.no_grad()
    def _infer(self, module: RelationalSAGE, graph: HeteroData, keep: dict) -> None:
        module.eval()
        dev = self.device
        n_id = {nt: torch.arange(int(graph[nt].num_nodes), device=dev) for nt in graph.node_types}
        edges = {et: graph[et].edge_index.to(dev) for et in graph.edge_types}
        out = module(n_id, edges, keep)
        # Trained on cosine: scored on cosine. OOV / padding rows are defined as zero.
        self._user_emb, self._item_emb = F.normalize(out["user"], dim=-1), F.normalize(out["item"], dim=-1)
        self._user_emb[0], self._item_emb[0] = 0.0, 0.0
        self._known_users = keep["user"].bool()

    def user_embeddings(self) -> torch.Tensor:
        """[num_users, D] unit vectors (row 0 = zeros)."""
        return self._user_emb

    def item_embeddings(self) -> torch.Tensor:
        """[num_items, D] unit vectors (row 0 = zeros), items without interactions included."""
        return self._item_emb

    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        query = user_queries(self._user_emb, self._item_emb, self._known_users, user_idx, histories)
        return self._mask_padding(query @ self._item_emb.T)

    def _get_state(self):
        return {"num_users": self.num_users, "num_items": self.num_items,
                "relations": [list(et) for et in self.relations_], "user_emb": self._user_emb.cpu(),
                "item_emb": self._item_emb.cpu(), "known_users": self._known_users.cpu()}

    def _set_state(self, state):
        self.num_users, self.num_items = int(state["num_users"]), int(state["num_items"])
        self.relations_ = [tuple(et) for et in state["relations"]]
        self._user_emb = state["user_emb"].to(self.device)
        self._item_emb = state["item_emb"].to(self.device)
        self._known_users = state["known_users"].to(self.device)
