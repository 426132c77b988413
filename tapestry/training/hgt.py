"""HGT as a Recommender: link prediction on sampled subgraphs, then one inference pass for all vectors.

Training: every training (user, interacts, item) edge is a positive; each step of the shared minibatch loop takes
`batch_size` of them (tapestry.training.link_steps: PyG's LinkNeighborLoader machinery; under --distributed N each
process samples its share, DDP), adds `num_negatives` uniform random items per positive (triplet mode) and samples the
`num_neighbors` neighbourhood of all those seeds over EVERY edge type. Loss (`loss`):
- "softmax" (default): cross-entropy of each positive against every item node of the step's subgraph (positives,
  the uniform negatives and the sampled neighbour items). The subgraph's items are computed anyway, so the extra
  negatives cost one [batch, subgraph items] product; on ML-100K a 4096-edge subgraph holds ~all 1,682 items,
  i.e. a full softmax, which learns faster than a few negatives (ML-100K test NDCG@10 with the defaults, 20
  epochs: ~0.06 with this softmax, 0.051 with "sampled"; popularity 0.043).
  Neighbour items are drawn by degree, so on large catalogues this is a popularity-skewed sampled softmax.
- "sampled": the positive against its own `num_negatives` uniform items (num_negatives = 1: BPR).
The graph holds training edges only (build_hetero_graph), so no validation/test interaction can be sampled; time
correctness comes from that window, not from `time_attr` (temporal sampling needs pyg-lib, absent here).

Each positive's own edge is removed from the step's subgraph (`exclude_target_edges`): otherwise the user's
representation is computed from the very item it must score, a shortcut absent at test time when the held-out
item is never a neighbour (PyG's link-prediction examples do the same with a disjoint supervision split). On
ML-100K the measured effect is within run-to-run noise; it is kept because it removes a train/test mismatch.

Inference: one pass producing the final user and item vectors, full-graph when the graph is small
(`full_graph_max_edges`), else batched NeighborLoader passes with the training fan-out.

Scoring: <user vector, item vector>. Users the training graph has no interaction for (new users, index 0, out of
range) are scored from the mean vector of their history items; with no history either, scores are flat
(zeros: serve popularity). Edge `weight`s (ratings) are not used: every training interaction is a positive.

The typed graph (issue 19, tapestry.graph.typed; opt-in with `graph="typed"`): HGT's attention is per relation
and per node type, so it reads any set of edge types as it comes: one relation per behaviour, sessions, queries,
context values, mediated event nodes, user links. The positives are then the training events of `target_events`
(all by default), whatever relations carry them; each positive's own edges are removed from its step's subgraph
in every user<->item relation (paths through a session, query or event node are not removed). Session and event
nodes are embedded by their `category` (no id of theirs is seen twice). The default (`graph="given"`) trains on
the graph it is handed, as before.
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
from tapestry.models.graph.hgt import HGT
from tapestry.training import data_parallel
from tapestry.training.base import Recommender, seeded, shuffled_epoch, user_queries
from tapestry.training.link_steps import LinkSteps
from tapestry.training.loop import run_epochs
from tapestry.training.sampler_contract import ContractLoader, link_neighbor_loader, use_cugraph



@dataclass
class HGTConfig:
    """Defaults measured on ML-100K on one CPU thread (~100 s fit); the tests and `--quick` use smaller ones."""
    hidden_dim: int = 64                 # HGT width; divisible by `heads`
    heads: int = 2                       # attention heads per layer
    num_layers: int = 2                  # message-passing layers = sampling hops (len(num_neighbors))
    out_dim: int = 64                    # shared user/item space (SASRec's hidden_dim to initialise from it)
    time_buckets: int = 16               # log2-day age buckets of the relative temporal encoding (16: ~90 years)
    num_neighbors: tuple[int, ...] = (10, 5)   # neighbours sampled per node, per edge type, per hop
    epochs: int = 20                     # ML-100K: ~5 s each on one CPU core; still improving at 20
    batch_size: int = 4096               # positive edges per step (the subgraph is ~all of ML-100K either way,
                                         # so larger batches cost little more per step: 0.15 s vs 0.2 s at 1024)
    num_negatives: int = 4               # uniform negative items per positive (1 with loss="sampled": BPR)
    loss: str = "softmax"                # "softmax": vs every item of the step's subgraph; "sampled": own negatives
    lr: float = 2e-2                     # AdamW; stable with the per-layer LayerNorm and clipping below
    clip_grad_norm: float = 1.0          # 0 = off
    weight_decay: float = 0.0            # AdamW decoupled decay
    exclude_target_edges: bool = True    # drop each positive's own edge from its step's subgraph
    full_graph_max_edges: int = 2_000_000     # inference over the whole graph at once up to this many edges
    sampler: str = "pyg"                 # "pyg"; "cugraph" (cugraph_pyg, CUDA); "auto" = cugraph when importable
                                         # on CUDA. Not the default: only `make gpu-check` runs the cugraph path.
    graph: str = "given"                 # tapestry.graph.typed.GRAPH_KINDS: "given" (the graph fit is handed, by
                                         # default build_hetero_graph), "typed", "typed_mediated", "interactions",
                                         # "none" (no edges: the ablation's baseline)
    target_events: tuple[str, ...] = ()  # event types whose training events are positives (empty: all)
    seed: int = 0


def lean_graph(graph: HeteroData) -> HeteroData:
    """Only what sampling needs: node counts and edge lists (entity value lists and weights stay behind)."""
    lean = HeteroData()
    for nt in graph.node_types:
        lean[nt].num_nodes = int(graph[nt].num_nodes)
    for et in graph.edge_types:
        lean[et].edge_index = graph[et].edge_index
    return lean


def edge_ages(graph: HeteroData) -> tuple[dict, int]:
    """({edge type: seconds before the reference} for timed edge types, reference = last training event)."""
    timed = [et for et in graph.edge_types if "time" in graph[et]]
    if not timed:
        return {}, 0
    times = [graph[et].time for et in timed if graph[et].time.numel()]
    ref = max(int(t.max()) for t in times) if times else 0
    return {et: (ref - graph[et].time).double() for et in timed}, ref


def _use_cugraph(sampler: str, device: torch.device) -> bool:
    """The `sampler` switch (tapestry.training.sampler_contract.use_cugraph)."""
    return use_cugraph(sampler, device)


def train_loader(graph: HeteroData, cfg: HGTConfig, device: torch.device = torch.device("cpu"),
                 positives: torch.Tensor | None = None) -> ContractLoader:
    """The loader `fit` trains with: training edges as seeds (`positives` [2, E], default the graph's
    `interacts` edges), triplet negatives, fan-out on every edge type; PyG's or cuGraph-PyG's sampler by
    `cfg.sampler`, each batch per tapestry.training.sampler_contract (checked on the first batch of a pass).

    Shuffling uses its own generator seeded from `cfg.seed`; neighbour and negative sampling draw from torch's
    global RNG (num_workers=0), which `fit` seeds: the same seed gives the same batches.
    """
    from torch_geometric.sampler import NegativeSampling

    lean = lean_graph(graph)
    weight = torch.ones(int(lean["item"].num_nodes))
    weight[0] = 0.0                    # never the padding / OOV row as a negative
    num_neighbors = {et: list(cfg.num_neighbors) for et in lean.edge_types}
    positives = lean[INTERACTS].edge_index if positives is None else positives
    timed = cfg.time_buckets > 0 and any("time" in graph[et] for et in graph.edge_types)
    return link_neighbor_loader(
        lean, num_neighbors, cfg.sampler, device, require_edge_ids=timed,   # ages are looked up by edge id
        edge_label_index=(INTERACTS, positives), batch_size=cfg.batch_size,
        neg_sampling=NegativeSampling("triplet", amount=cfg.num_negatives, dst_weight=weight),
        shuffle=True, generator=torch.Generator().manual_seed(cfg.seed))


def target_edge_masks(batch: HeteroData, num_items: int, targets: torch.Tensor | None = None) -> dict:
    """Per user<->item edge type (`interacts` and its reverse; every behaviour of a typed graph), True for the
    batch's edges that are NOT a seed (user, positive item) pair.

    Matched on global ids (n_id), so it does not depend on how a loader numbers the subgraph's nodes. `targets`
    (user * num_items + item) overrides the batch's own pairs (data-parallel: the global batch's).
    """
    users, items = batch["user"].n_id, batch["item"].n_id
    if targets is None:
        targets = users[batch["user"].src_index] * num_items + items[batch["item"].dst_pos_index]
    targets = targets.to(users.device)
    masks = {}
    pairs = [(et, (0, 1) if et[0] == "user" else (1, 0)) for et in batch.edge_types
             if {et[0], et[2]} == {"user", "item"} and "edge_index" in batch[et]]
    for et, (u_row, i_row) in pairs:
        ei = batch[et].edge_index
        masks[et] = ~torch.isin(users[ei[u_row]] * num_items + items[ei[i_row]], targets)
    return masks


def subgraph_inputs(batch: HeteroData, ages: dict, device: torch.device, keep: dict | None = None):
    """(n_id, edge_index, edge age) dicts for HGT.forward from a sampled batch, minus the edges `keep` drops.

    Ages are looked up by global edge id (e_id), so the loader need not carry edge attributes.
    """
    keep = keep or {}
    n_id = {nt: batch[nt].n_id.to(device) for nt in batch.node_types}
    edges, sub_ages = {}, {}
    for et in batch.edge_types:
        if "edge_index" not in batch[et]:      # the positives' label type, when the graph has no such relation
            continue
        ei, mask = batch[et].edge_index, keep.get(et)
        edges[et] = (ei if mask is None else ei[:, mask]).to(device)
        if et in ages:
            e_id = batch[et].get("e_id")
            if e_id is None:
                raise RuntimeError(f"the sampler returned no edge ids for {et}; the temporal encoding needs them "
                                   "(use sampler='pyg', or time_buckets=0)")
            e_id = (e_id if mask is None else e_id[mask]).cpu()
            sub_ages[et] = ages[et][e_id].to(device, torch.float32)
    return n_id, edges, sub_ages


@torch.no_grad()
def embed_all(module: HGT, graph: HeteroData, ages: dict, device: torch.device,
              batch_size: int | None = None, num_neighbors: tuple[int, ...] = (10, 5)) -> dict:
    """Final {"user", "item"} vectors for every node: one full-graph pass, or (batch_size set) NeighborLoader
    passes seeded with `batch_size` users / items at a time. With num_neighbors = (-1, ...) the two agree."""
    module.eval()
    if batch_size is None:
        n_id = {nt: torch.arange(int(graph[nt].num_nodes), device=device) for nt in graph.node_types}
        edges = {et: graph[et].edge_index.to(device) for et in graph.edge_types}
        return module(n_id, edges, {et: a.to(device, torch.float32) for et, a in ages.items()})
    from torch_geometric.loader import NeighborLoader

    lean = lean_graph(graph)
    out = {}
    for nt in ("user", "item"):
        rows = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loader = NeighborLoader(lean, num_neighbors={et: list(num_neighbors) for et in lean.edge_types},
                                    input_nodes=nt, batch_size=batch_size, shuffle=False, num_workers=0)
        for batch in loader:
            n_id, edges, sub_ages = subgraph_inputs(batch, ages, device)
            rows.append(module(n_id, edges, sub_ages)[nt][: batch[nt].batch_size])
        out[nt] = torch.cat(rows)
    return out


class HGTRecommender(Recommender):
    """Heterogeneous Graph Transformer over users, items and entity nodes, with relative temporal encoding."""

    Config = HGTConfig
    parallelism = "data"                 # shuffled_epoch over sampled link batches: DDP under --distributed N

    def __init__(self, config: HGTConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        if self.cfg.num_layers != len(self.cfg.num_neighbors):
            raise ValueError(f"num_neighbors {self.cfg.num_neighbors} must give one fan-out per layer "
                             f"(num_layers={self.cfg.num_layers})")
        if self.cfg.loss not in ("softmax", "sampled"):
            raise ValueError(f"loss must be 'softmax' or 'sampled', got {self.cfg.loss!r}")
        if self.cfg.graph not in GRAPH_KINDS:
            raise ValueError(f"graph must be one of {GRAPH_KINDS}, got {self.cfg.graph!r}")
        self.cfg.num_neighbors = tuple(self.cfg.num_neighbors)   # a saved file round-trips it as a list
        self.cfg.target_events = tuple(self.cfg.target_events)
        self.num_users: int | None = None
        self._user_emb: torch.Tensor | None = None
        self._item_emb: torch.Tensor | None = None
        self._known: torch.Tensor | None = None       # users with >= 1 training interaction
        self.relations_: list[tuple[str, str, str]] = []     # the edge types the model was trained over

    def fit(self, data, graph=None) -> "HGTRecommender":
        cfg = self.cfg
        graph = graph_for(data, cfg.graph, graph)
        self.num_users, self.num_items = int(graph["user"].num_nodes), int(graph["item"].num_nodes)
        self.relations_ = list(graph.edge_types)
        ages = edge_ages(graph)[0] if cfg.time_buckets > 0 else {}
        # The default graph's positives are its interacts edges, exactly as before; otherwise the training events.
        positives = (graph[INTERACTS].edge_index if cfg.graph == "given" and not cfg.target_events
                     and INTERACTS in graph.edge_types else supervision_pairs(data, tuple(cfg.target_events)))
        # Per-occurrence node types (sessions, mediated events) are embedded by category, not by id.
        categories = {nt: graph[nt].category for nt in graph.node_types if "category" in graph[nt]}
        sizes = {nt: int(graph[nt].num_categories) if nt in categories else int(graph[nt].num_nodes)
                 for nt in graph.node_types}
        with seeded(self.device, cfg.seed):
            module = HGT(sizes, graph.metadata(), cfg.hidden_dim, cfg.heads, cfg.num_layers, cfg.out_dim,
                         cfg.time_buckets, categories=categories or None).to(self.device)
            opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            loader = train_loader(graph, cfg, self.device, positives)
            if _use_cugraph(cfg.sampler, self.device):      # cuGraph-PyG's loader yields whole batches: one process
                if data_parallel.active():
                    raise RuntimeError("hgt trains data-parallel with sampler='pyg' only (cuGraph-PyG's loader "
                                       "cannot sample a given share of a batch)")
                run_epochs(self, module, cfg.epochs, "hgt", lambda beat: self._train_epoch(module, opt, loader, ages))
            else:
                # The shared minibatch loop over sampled link batches: DDP under torchrun (training.link_steps).
                steps = LinkSteps(loader.loader, positives, self.num_items, cfg.num_negatives, cfg.seed,
                                  contract=loader._check)
                clipped = data_parallel.ClippedOptimizer(opt, module.parameters(), cfg.clip_grad_norm)
                run_epochs(self, module, cfg.epochs, "hgt", lambda beat: shuffled_epoch(
                    module, clipped, steps.num_positives, cfg.batch_size,
                    lambda rows: (self._batch_loss(module, steps.batch(rows), ages, steps.global_targets(rows)), 1,
                                  len(rows)), beat))
            full = sum(ei.size(1) for ei in graph.edge_index_dict.values()) <= cfg.full_graph_max_edges
            vecs = embed_all(module, graph, ages, self.device, None if full else cfg.batch_size, cfg.num_neighbors)
        self._user_emb, self._item_emb = vecs["user"].detach().clone(), vecs["item"].detach().clone()
        self._item_emb[0] = 0.0     # padding / OOV row: untrained, defined as zero (as LightGCN's)
        known = torch.zeros(self.num_users, dtype=torch.bool)
        for et in behaviour_types(graph):
            known[graph[et].edge_index[0]] = True
        known[positives[0]] = True
        known[0] = False
        self._known = known.to(self.device)
        # Users without a training interaction are scored from their history (see score), never from this row,
        # whose ID embedding was barely trained: zero it so no consumer of user_embeddings() mistakes it.
        self._user_emb[~self._known] = 0.0
        return self

    def _batch_loss(self, module: HGT, batch, ages: dict, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The step's loss: mean over its positives (this process's share under DDP; "softmax" then scores against
        the share's subgraph items, tapestry.training.link_steps)."""
        src, pos, neg = batch["user"].src_index, batch["item"].dst_pos_index, batch["item"].dst_neg_index
        keep = target_edge_masks(batch, self.num_items, targets) if self.cfg.exclude_target_edges else None
        n_id, edges, sub_ages = subgraph_inputs(batch, ages, self.device, keep)
        out = module(n_id, edges, sub_ages)
        u = out["user"][src.to(self.device)]
        if self.cfg.loss == "softmax":
            logits = u @ out["item"].T                                       # [B, items in subgraph]
            target = pos.to(self.device)
        else:
            cand = torch.cat([pos.view(-1, 1), neg.view(len(pos), -1)], dim=1).to(self.device)
            logits = (u.unsqueeze(1) * out["item"][cand]).sum(-1)          # [B, 1 + negatives]
            target = torch.zeros(len(pos), dtype=torch.long, device=self.device)
        return F.cross_entropy(logits, target)

    def _train_epoch(self, module: HGT, opt, loader, ages: dict) -> float:
        """One epoch over the cuGraph-PyG loader's batches (one process): the mean step loss."""
        module.train()
        total, steps = 0.0, 0
        for batch in loader:
            loss = self._batch_loss(module, batch, ages)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(module.parameters(), self.cfg.clip_grad_norm)
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        return total / max(steps, 1)

    def user_embeddings(self) -> torch.Tensor:
        """[num_users, out_dim]; rows of users without training interactions are zeros."""
        return self._user_emb

    def item_embeddings(self) -> torch.Tensor:
        """[num_items, out_dim] incl. row 0 (zeros): the shared item space for SASRec init and FAISS."""
        return self._item_emb

    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        query = user_queries(self._user_emb, self._item_emb, self._known, user_idx, histories)
        return self._mask_padding(query @ self._item_emb.T)

    def _get_state(self):
        return {"num_users": self.num_users, "num_items": self.num_items, "user_emb": self._user_emb.cpu(),
                "item_emb": self._item_emb.cpu(), "known": self._known.cpu(),
                "relations": [list(et) for et in self.relations_]}

    def _set_state(self, state):
        self.num_users, self.num_items = int(state["num_users"]), int(state["num_items"])
        self._user_emb = state["user_emb"].to(self.device)
        self._item_emb = state["item_emb"].to(self.device)
        self._known = state["known"].to(self.device)
        self.relations_ = [tuple(et) for et in state.get("relations", [])]    # files saved before: unknown
