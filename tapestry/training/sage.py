"""GraphSAGE / PinSage-style recommender: tapestry.models.graph.sage.SAGEEncoder trained on sampled subgraphs.

Training: LinkNeighborLoader batches (through tapestry.training.link_steps: the shared minibatch loop, DDP under
--distributed N, each process sampling its share) over the TRAINING (user, interacts, item) edges (build_hetero_graph holds no
other interactions), `num_neighbors` per layer, each positive edge with `num_negatives` uniform negative items
that are sampled with their own neighbourhoods ("triplet" negatives). Two leaks are closed on the way:
- valid/test pairs are never edges of the sampled graph (it is built from `graph[INTERACTS]` only; the tests
  iterate `link_loader` and check it);
- a batch's own supervision edges are removed from its subgraph before message passing, so the model cannot
  learn "the user is already linked to this item", an edge that never exists at test time.

Loss "softmax" (default): cosine sampled softmax of each user against all the batch's seed items (the other
positives + the uniform negatives; tapestry.training.losses). "bpr": dot product, one negative per positive.

Inference: one full-graph pass over all training edges (mean aggregation over every neighbour, no sampling),
so the stored vectors are deterministic. Items without training interactions get no ID embedding; their vector
comes from their entity values (genre, brand, ...) alone: see `embed_items` for items that arrive after `fit`.

PinSage-style neighbourhoods (`neighbourhood="walks"`, opt-in): before training, seeded item->user->item random
walks from every item over the training edges (tapestry.graph.walks); an item's T most visited items, weighted by
visit share, are pooled into its layer-0 vector (tapestry.models.graph.importance_pool), in training and inference
alike; the SAGE layers on top are unchanged. The walk counts include the batch's own supervision pairs (one user's
contribution to an aggregate over all walks; PinSage has the same property). `hard_negative_ratio` > 0 draws that
share of the negatives from the positive item's walk ranks `hard_window` minus the user's training items
(tapestry.training.walk_steps). Items without training edges have no walks, so `embed_items` is unchanged.

Sampler selection: cuGraph-PyG's GPU sampler when the model is on CUDA and `cugraph_pyg` imports, else PyG's
CPU sampler (torch-sparse). Only `_cugraph_link_loader` differs; everything after the loader is shared.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData

from tapestry.graph.hetero import INTERACTS, REV_INTERACTS, build_hetero_graph
from tapestry.graph.walks import Neighbourhoods, WalkConfig, walk_neighbourhoods
from tapestry.models.graph.importance_pool import WalkSAGEEncoder
from tapestry.models.graph.sage import SAGEEncoder
from tapestry.training import data_parallel
from tapestry.training.base import Recommender, seeded, shuffled_epoch
from tapestry.training.link_steps import LinkSteps
from tapestry.training.loop import run_epochs
from tapestry.training.walk_steps import HardNegativeSteps
from tapestry.training.losses import bpr_loss, sampled_softmax_loss



@dataclass
class SAGEConfig:
    """Defaults measured on ML-100K (2 CPU cores); see the registry entry and tests for smaller settings."""
    embedding_dim: int = 64
    num_neighbors: tuple[int, ...] = (10, 5)   # sampled neighbours per hop; its length = number of SAGE layers
    epochs: int = 10
    batch_size: int = 1024            # positive (user, item) edges per mini-batch
    lr: float = 1e-2
    weight_decay: float = 0.0         # Adam L2 on all parameters
    loss: str = "softmax"             # "softmax" (cosine sampled softmax) or "bpr"
    num_negatives: int = 1            # uniform negative items per positive ("bpr" uses the first)
    temperature: float = 0.1          # "softmax": cosine / temperature
    id_dropout: float = 0.2           # chance a training item is shown without its ID (trains the cold path)
    dropout: float = 0.0              # between SAGE layers
    seed: int = 0
    # PinSage-style neighbourhoods (issue 19 item 4; tapestry.graph.walks). "uniform": the SAGE layers alone.
    # "walks": each item's layer-0 vector also pools its top `walk_top_t` walk-visited items, weighted by visit
    # share (tapestry.models.graph.importance_pool); walks are drawn once per fit from `seed`.
    neighbourhood: str = "uniform"
    walk_length: int = 3              # item->user->item hops per walk
    walks_per_item: int = 100
    walk_top_t: int = 10
    hard_negative_ratio: float = 0.0  # "walks": this share of the negatives comes from walk ranks `hard_window`
    hard_window: tuple[int, int] = (100, 300)


# ---- data preparation ---------------------------------------------------------------------------------------
def entity_vocabulary(entities: pl.DataFrame) -> list[str]:
    """Sorted "type=value" keys of a long entity table; a key's index + 1 is its embedding row (0 = padding)."""
    keys = entities.select(pl.concat_str("entity_type", pl.lit("="), "entity_value").unique().sort())
    return keys.to_series().to_list()


def entity_matrix(pairs: Sequence[Iterable[tuple[str, str]]], vocab: list[str]) -> torch.Tensor:
    """[n, M] value indices (0 = padding) for n nodes given as (entity_type, value) pairs; unknown values drop."""
    lookup = {k: i + 1 for i, k in enumerate(vocab)}
    rows = [sorted({lookup[k] for k in (f"{t}={v}" for t, v in p) if k in lookup}) for p in pairs]
    out = torch.zeros(len(rows), max([len(r) for r in rows] + [1]), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _node_pairs(entities: pl.DataFrame, idx_col: str, n: int) -> list[list[tuple[str, str]]]:
    pairs: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    for node, etype, value in entities.select(idx_col, "entity_type", "entity_value").iter_rows():
        if 0 < node < n:
            pairs[node].append((etype, value))
    return pairs


def interaction_graph(graph: HeteroData) -> HeteroData:
    """The user-item part of build_hetero_graph's output (training edges only), each pair once, both ways."""
    edges = torch.unique(graph[INTERACTS].edge_index, dim=1)   # repeated events must not weigh an edge twice
    g = HeteroData()
    g["user"].num_nodes = int(graph["user"].num_nodes)
    g["item"].num_nodes = int(graph["item"].num_nodes)
    g[INTERACTS].edge_index = edges
    g[REV_INTERACTS].edge_index = edges.flip(0)
    return g


def _cugraph_link_loader(g: HeteroData, num_neighbors, **kwargs):
    """cuGraph-PyG's GPU sampler over the same graph (not exercised on CPU-only machines)."""
    from cugraph_pyg.data import GraphStore, TensorDictFeatureStore
    from cugraph_pyg.loader import LinkNeighborLoader

    graph_store = GraphStore()
    for src, rel, dst in g.edge_types:
        size = (g[src].num_nodes, g[dst].num_nodes)
        graph_store[(src, rel, dst), "coo", False, size] = g[src, rel, dst].edge_index.cuda()
    kwargs.pop("generator", None)      # cuGraph seeds from torch's global RNG
    return LinkNeighborLoader((TensorDictFeatureStore(), graph_store), list(num_neighbors), **kwargs)


def _use_cugraph(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import cugraph_pyg  # noqa: F401
    except ImportError:
        return False
    return True


def link_loader(g: HeteroData, cfg: SAGEConfig, device: torch.device = torch.device("cpu"),
                generator: torch.Generator | None = None):
    """The training loader: batches of `cfg.batch_size` positive edges of `g` (interaction_graph's output)."""
    from torch_geometric.sampler import NegativeSampling

    num_items = int(g["item"].num_nodes)
    weight = torch.ones(num_items)
    weight[0] = 0.0                     # never the padding row as a negative
    kwargs = dict(edge_label_index=(INTERACTS, g[INTERACTS].edge_index), batch_size=cfg.batch_size,
                  shuffle=True, neg_sampling=NegativeSampling("triplet", cfg.num_negatives, dst_weight=weight),
                  generator=generator)
    if _use_cugraph(device):
        return _cugraph_link_loader(g, cfg.num_neighbors, **kwargs)
    from torch_geometric.loader import LinkNeighborLoader

    with warnings.catch_warnings():    # "NeighborSampler without pyg-lib is deprecated": torch-sparse is intended
        warnings.simplefilter("ignore", UserWarning)
        return LinkNeighborLoader(g, list(cfg.num_neighbors), num_workers=0, **kwargs)


def without_targets(batch: HeteroData, num_items: int,
                    targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's (user->item, item->user) edge indices minus its supervision pairs (global-id match, so it
    works whichever loader produced the batch); `targets` (user * num_items + item) overrides the batch's own
    pairs (data-parallel: the global batch's)."""
    users, items = batch["user"].n_id, batch["item"].n_id
    if targets is None:
        targets = users[batch["user"].src_index] * num_items + items[batch["item"].dst_pos_index]
    ui, iu = batch[INTERACTS].edge_index, batch[REV_INTERACTS].edge_index
    keep_ui = ~torch.isin(users[ui[0]] * num_items + items[ui[1]], targets)
    keep_iu = ~torch.isin(users[iu[1]] * num_items + items[iu[0]], targets)
    return ui[:, keep_ui], iu[:, keep_iu]


class SAGERecommender(Recommender):
    """Inductive GraphSAGE item/user encoder; `item_embeddings()` feeds other models (e.g. a SASRec hybrid)."""
    Config = SAGEConfig
    parallelism = "data"            # shuffled_epoch over sampled link batches: DDP under --distributed N

    def __init__(self, config: SAGEConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        if self.cfg.loss not in ("softmax", "bpr"):
            raise ValueError(f"SAGE loss must be 'softmax' or 'bpr', got {self.cfg.loss!r}")
        if not self.cfg.num_neighbors:
            raise ValueError("num_neighbors needs one fan-out per layer (at least one)")
        if self.cfg.neighbourhood not in ("uniform", "walks"):
            raise ValueError(f"SAGE neighbourhood must be 'uniform' or 'walks', got {self.cfg.neighbourhood!r}")
        if not 0.0 <= self.cfg.hard_negative_ratio <= 1.0:
            raise ValueError(f"hard_negative_ratio must be in [0, 1], got {self.cfg.hard_negative_ratio}")
        if self.cfg.hard_negative_ratio > 0 and self.cfg.neighbourhood != "walks":
            raise ValueError("hard negatives come from walk visits: set neighbourhood='walks'")
        self._hoods: Neighbourhoods | None = None
        self.num_users: int | None = None
        self.model: SAGEEncoder | None = None
        self.item_vocab: list[str] = []
        self.user_vocab: list[str] = []
        self._user_emb: torch.Tensor | None = None
        self._item_emb: torch.Tensor | None = None
        self._known_users: torch.Tensor | None = None

    def _new_model(self) -> SAGEEncoder:
        c = self.cfg
        encoder = WalkSAGEEncoder if c.neighbourhood == "walks" else SAGEEncoder
        return encoder(self.num_users, self.num_items, len(self.user_vocab), len(self.item_vocab),
                           c.embedding_dim, len(c.num_neighbors), c.dropout).to(self.device)

    # ---- training ------------------------------------------------------------------------------------------
    def fit(self, data, graph=None) -> "SAGERecommender":
        c = self.cfg
        graph = graph if graph is not None else build_hetero_graph(data)
        g = interaction_graph(graph)
        self.num_users, self.num_items = g["user"].num_nodes, g["item"].num_nodes
        self.item_vocab = entity_vocabulary(data.item_entities)
        self.user_vocab = entity_vocabulary(data.user_entities)
        dev = self.device
        item_values = entity_matrix(_node_pairs(data.item_entities, "item_idx", self.num_items), self.item_vocab)
        user_values = entity_matrix(_node_pairs(data.user_entities, "user_idx", self.num_users), self.user_vocab)
        item_values, user_values = item_values.to(dev), user_values.to(dev)
        ei = g[INTERACTS].edge_index
        # Only nodes with a training edge have a trained ID row; the others are scored from attributes alone.
        known_items = torch.zeros(self.num_items, device=dev).index_fill_(0, ei[1].to(dev), 1.0)
        known_users = torch.zeros(self.num_users, device=dev).index_fill_(0, ei[0].to(dev), 1.0)
        if c.neighbourhood == "walks":     # once per fit, from the training edges only, seeded
            walk_cfg = WalkConfig(c.walk_length, c.walks_per_item, c.walk_top_t, tuple(c.hard_window))
            self._hoods = walk_neighbourhoods(ei, self.num_users, self.num_items, walk_cfg, c.seed)

        tensors = (item_values, user_values, known_items, known_users)
        with seeded(dev, c.seed):
            self.model = model = self._new_model()
            opt = torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
            # The loader shuffles with its own generator: the same seed, the same batches.
            loader = link_loader(g, c, dev, torch.Generator().manual_seed(c.seed))
            if _use_cugraph(dev):
                if data_parallel.active():
                    raise RuntimeError("sage trains data-parallel with PyG's sampler only (cuGraph-PyG's loader "
                                       "cannot sample a given share of a batch)")
                run_epochs(self, model, c.epochs, "sage", lambda beat: self._loader_epoch(model, opt, loader, tensors))
            else:
                # The shared minibatch loop: DDP under torchrun (tapestry.training.link_steps says what stays equal).
                step_type = HardNegativeSteps if c.hard_negative_ratio > 0 else LinkSteps
                steps = step_type(loader, ei, self.num_items, c.num_negatives, c.seed)
                if c.hard_negative_ratio > 0:
                    steps.use_hard(self._hoods.hard, c.hard_negative_ratio)
                run_epochs(self, model, c.epochs, "sage", lambda beat: shuffled_epoch(
                    model, opt, steps.num_positives, c.batch_size,
                    lambda rows: self._step_loss(model, steps, rows, tensors), beat))

        self._infer(g, item_values, user_values, known_items, known_users)
        return self

    def _loader_epoch(self, model, opt, loader, tensors) -> float:
        """One epoch over the cuGraph-PyG loader's batches (one process): the mean step loss."""
        model.train()
        total, steps = 0.0, 0
        for batch in loader:
            loss = self._batch_loss(model, batch.to(self.device), *tensors)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        return total / max(steps, 1)

    def _step_loss(self, model, steps: LinkSteps, rows: torch.Tensor, tensors):
        """(loss, weight 1 per step, rows it is a mean over) of this process's share `rows` of a step."""
        batch = steps.batch(rows).to(self.device)
        targets = steps.global_targets(rows).to(self.device)
        return self._batch_loss(model, batch, *tensors, targets=targets), 1, len(rows)

    def _batch_loss(self, model, batch, item_values, user_values, known_items, known_users,
                    targets: torch.Tensor | None = None) -> torch.Tensor:
        c = self.cfg
        users, items = batch["user"].n_id, batch["item"].n_id
        keep_item = known_items[items]
        if c.id_dropout > 0:
            keep_item = keep_item * (torch.rand(items.numel(), device=items.device) >= c.id_dropout)
        x_user = model.user_inputs(users, user_values[users], known_users[users])
        x_item = self._walk_pooled(model, items, model.item_inputs(items, item_values[items], keep_item),
                                   item_values, known_items)
        h_user, h_item = model(x_user, x_item, *without_targets(batch, self.num_items, targets))
        q = h_user[batch["user"].src_index]
        pos = h_item[batch["item"].dst_pos_index]
        neg_index = batch["item"].dst_neg_index.view(q.shape[0], -1)
        if c.loss == "bpr":
            return bpr_loss((q * pos).sum(-1), (q * h_item[neg_index[:, 0]]).sum(-1))
        # Every seed item of the batch (positives and uniform negatives) is a candidate for every user.
        # Under DDP: the seed items of every process's share, i.e. of the global batch.
        seeds = torch.unique(torch.cat([batch["item"].dst_pos_index, neg_index.reshape(-1)]))
        return sampled_softmax_loss(q, pos, data_parallel.gather_unique(h_item[seeds], items[seeds]), c.temperature)

    @torch.no_grad()
    def _infer(self, g, item_values, user_values, known_items, known_users) -> None:
        model = self.model
        model.eval()
        dev = self.device
        users = torch.arange(self.num_users, device=dev)
        items = torch.arange(self.num_items, device=dev)
        x_user = model.user_inputs(users, user_values, known_users)
        x_item = self._walk_pooled(model, items, model.item_inputs(items, item_values, known_items),
                                   item_values, known_items)
        ui = g[INTERACTS].edge_index.to(dev)
        user_emb, item_emb = (self._output(h) for h in model(x_user, x_item, ui, ui.flip(0)))
        user_emb[0], item_emb[0] = 0.0, 0.0     # OOV / padding rows, defined as zero
        self._user_emb, self._item_emb, self._known_users = user_emb, item_emb, known_users.bool()

    def _walk_pooled(self, model, items, x_item, item_values, known_items) -> torch.Tensor:
        """x_item with each item's walk neighbourhood pooled in ("walks"; unchanged for "uniform")."""
        if self.cfg.neighbourhood != "walks":
            return x_item
        dev = x_item.device
        nb = self._hoods.neighbours.to(dev)[items]                       # [n, T], 0 = none (weight 0)
        flat = nb.reshape(-1)
        x_nb = model.item_inputs(flat, item_values[flat], known_items[flat]).view(*nb.shape, -1)
        return model.pooled_item_inputs(x_item, x_nb, self._hoods.weights.to(dev)[items])

    def _output(self, emb: torch.Tensor) -> torch.Tensor:
        # Trained on cosine: score on cosine (normalize returns a new tensor, safe to edit in place).
        return F.normalize(emb, dim=-1) if self.cfg.loss == "softmax" else emb.clone()

    # ---- outputs -------------------------------------------------------------------------------------------
    def user_embeddings(self) -> torch.Tensor:
        """Final user vectors [num_users, D] (row 0 = zeros)."""
        return self._user_emb

    def item_embeddings(self) -> torch.Tensor:
        """Final item vectors [num_items, D] (row 0 = zeros), items unseen in training included."""
        return self._item_emb

    @torch.no_grad()
    def embed_items(self, entities: Sequence[Iterable[tuple[str, str]]]) -> torch.Tensor:
        """Vectors [n, D] for n NEW items, each given as (entity_type, entity_value) pairs, e.g.
        [[("genre", "Comedy"), ("genre", "Drama")], ...]: no ID, no interactions, exactly what `fit` gives an
        item of the catalogue that has no training edge. Values unknown at fit time are ignored."""
        values = entity_matrix(list(entities), self.item_vocab).to(self.device)
        n = values.shape[0]
        zeros = torch.zeros(n, dtype=torch.long, device=self.device)
        x = self.model.item_inputs(zeros, values, torch.zeros(n, device=self.device))
        return self._output(self.model.isolated_items(x))

    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        # Users with training edges: their own vector. Others (index 0, out of range, no training edge): the
        # mean of their history items' vectors; with no history either, their attribute-only vector from `fit`
        # (zeros for index 0 / out of range, i.e. flat scores: serve those with popularity).
        u = torch.from_numpy(np.array(user_idx, dtype=np.int64)).to(self.device)
        in_range = (u > 0) & (u < self.num_users)
        u_safe = torch.where(in_range, u, torch.zeros_like(u))
        known = in_range & self._known_users[u_safe]
        query = self._user_emb[u_safe]
        for row in torch.nonzero(~known).flatten().tolist():
            h = torch.from_numpy(np.array(histories[row], dtype=np.int64)).to(self.device)
            h = h[(h > 0) & (h < self.num_items)]
            if h.numel():
                query[row] = self._item_emb[h].mean(0)
        return self._mask_padding(query @ self._item_emb.T)

    # ---- persistence ---------------------------------------------------------------------------------------
    def _get_state(self):
        return {"num_users": self.num_users, "num_items": self.num_items, "item_vocab": list(self.item_vocab),
                "user_vocab": list(self.user_vocab), "user_emb": self._user_emb.cpu(),
                "item_emb": self._item_emb.cpu(), "known_users": self._known_users.cpu(),
                "model": {k: v.cpu() for k, v in self.model.state_dict().items()}}

    def _set_state(self, state):
        self.num_users, self.num_items = int(state["num_users"]), int(state["num_items"])
        self.item_vocab, self.user_vocab = list(state["item_vocab"]), list(state["user_vocab"])
        self._user_emb = state["user_emb"].to(self.device)
        self._item_emb = state["item_emb"].to(self.device)
        self._known_users = state["known_users"].to(self.device)
        self.model = self._new_model()
        self.model.load_state_dict(state["model"])
        self.model.eval()

