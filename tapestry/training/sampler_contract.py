"""The sampler contract: what every link-prediction training batch holds, whichever sampler drew it.

The graph trainers (HGT here; SAGE and relational SAGE use the same batch fields) read a batch only through the
fields below, so any loader that yields them can train them. Two loaders do: PyG's LinkNeighborLoader
(CPU, torch-sparse) and cuGraph-PyG's (CUDA). `link_neighbor_loader` picks one ("pyg" | "cugraph" | "auto") and
wraps it in `ContractLoader`, which checks the first batch of every pass: a cuGraph-PyG release that renames a
field fails at the first step with the field's name, not mid-epoch with a KeyError.

A batch (a torch_geometric HeteroData) must hold, for seeds = the B positive (user, item) edges of the step:
- for every node type in the batch: `n_id` [N_t] int64, global node ids, unique, each < the graph's node count;
  local index i of type t is global node `n_id[i]`.
- `batch["user"].src_index` [B] int64: local user index of each positive's user;
  `batch["item"].dst_pos_index` [B] int64: local item index of each positive's item;
  `batch["item"].dst_neg_index` [B] or [B, K] int64: local indices of the K negative items per positive
  ("triplet" negatives; [B] when K = 1, as PyG returns them).
- for every sampled edge type: `edge_index` [2, E] int64 in LOCAL indices (row < N_src, col < N_dst); edge types
  without sampled edges may be absent or empty. `e_id` [E] (global edge ids) is optional: the temporal encoding
  needs it (`require_edge_ids`), and the PyG loader provides it.
- 1 <= B <= batch_size.
Every seed node is in the batch (it is a seed), and the subgraph's sampled neighbours are reachable from the seeds
within len(num_neighbors) hops; `tapestry.training.sampling_stats` measures the rest (sizes, fan-out, degrees).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch_geometric.data import HeteroData

SAMPLERS = ("pyg", "cugraph", "auto")
SEED_FIELDS = (("user", "src_index"), ("item", "dst_pos_index"), ("item", "dst_neg_index"))


class SamplerContractError(ValueError):
    """A sampled batch lacks a field of the contract, or holds one of the wrong shape or range."""


@dataclass(frozen=True)
class BatchSizes:
    """What `check_batch` read off a valid batch."""
    seeds: int                                   # B
    negatives_per_seed: int                      # K
    nodes: dict                                  # {node type: N_t}
    edges: dict                                  # {edge type: E}


def _long_vector(t, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.long:
        raise SamplerContractError(f"{what} must be an int64 tensor, got "
                                   f"{type(t).__name__ if not isinstance(t, torch.Tensor) else t.dtype}")
    return t


def _in_range(t: torch.Tensor, n: int, what: str) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise SamplerContractError(f"{what} holds indices outside [0, {n}): min {int(t.min())}, max {int(t.max())}")


def check_batch(batch: HeteroData, num_nodes: dict, batch_size: int, require_edge_ids: bool = False) -> BatchSizes:
    """Validate one batch against the contract above; `num_nodes` = {node type: count in the full graph}.

    Returns its sizes; raises SamplerContractError naming the first field that breaks the contract.
    """
    nodes = {}
    for nt in batch.node_types:
        n_id = batch[nt].get("n_id")
        if n_id is None:
            raise SamplerContractError(f"batch[{nt!r}] has no n_id (global node ids)")
        n_id = _long_vector(n_id, f"batch[{nt!r}].n_id")
        if nt in num_nodes:
            _in_range(n_id, int(num_nodes[nt]), f"batch[{nt!r}].n_id")
        nodes[nt] = int(n_id.numel())
    for nt in ("user", "item"):
        if nt not in nodes:
            raise SamplerContractError(f"batch has no {nt!r} nodes")
    seeds = {}
    for nt, field in SEED_FIELDS:
        value = batch[nt].get(field)
        if value is None:
            raise SamplerContractError(f"batch[{nt!r}] has no {field} (the positives' local indices)")
        seeds[field] = _long_vector(value, f"batch[{nt!r}].{field}")
        _in_range(seeds[field], nodes[nt], f"batch[{nt!r}].{field}")
    b = int(seeds["src_index"].numel())
    if not 1 <= b <= batch_size:
        raise SamplerContractError(f"a batch holds {b} positives, expected 1..{batch_size}")
    if seeds["dst_pos_index"].shape != (b,):
        raise SamplerContractError(f"dst_pos_index has shape {tuple(seeds['dst_pos_index'].shape)}, expected ({b},)")
    neg = seeds["dst_neg_index"]
    if neg.numel() == 0 or neg.numel() % b or neg.shape[0] != b:
        raise SamplerContractError(f"dst_neg_index has shape {tuple(neg.shape)}, expected ({b},) or ({b}, K)")
    edges = {}
    for et in batch.edge_types:
        ei = batch[et].get("edge_index")
        if ei is None:
            continue
        ei = _long_vector(ei, f"batch[{et}].edge_index")
        if ei.dim() != 2 or ei.size(0) != 2:
            raise SamplerContractError(f"batch[{et}].edge_index has shape {tuple(ei.shape)}, expected (2, E)")
        src, _, dst = et
        _in_range(ei[0], nodes.get(src, 0), f"batch[{et}].edge_index[0] (local {src} indices)")
        _in_range(ei[1], nodes.get(dst, 0), f"batch[{et}].edge_index[1] (local {dst} indices)")
        if require_edge_ids:
            e_id = batch[et].get("e_id")
            if e_id is None or e_id.numel() != ei.size(1):
                raise SamplerContractError(f"batch[{et}] has no e_id for its {ei.size(1)} edges (the temporal "
                                           "encoding needs global edge ids)")
        edges[et] = int(ei.size(1))
    return BatchSizes(b, neg.numel() // b, nodes, edges)


class ContractLoader:
    """Iterates a loader, checking the first batch of each pass against the contract (later ones are trusted:
    every check reads tensors, which on CUDA waits for the GPU)."""

    def __init__(self, loader, num_nodes: dict, batch_size: int, require_edge_ids: bool = False,
                 sampler: str = "pyg"):
        self.loader, self.sampler = loader, sampler
        self._check = dict(num_nodes=num_nodes, batch_size=batch_size, require_edge_ids=require_edge_ids)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == 0:
                try:
                    check_batch(batch, **self._check)
                except SamplerContractError as e:
                    raise SamplerContractError(f"the {self.sampler} sampler broke the batch contract: {e}") from e
            yield batch


def use_cugraph(sampler: str, device: torch.device) -> bool:
    """The sampler switch: "pyg" never, "cugraph" always (an error off CUDA or without cugraph_pyg), "auto" when
    the model is on CUDA and cugraph_pyg imports."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be 'pyg', 'cugraph' or 'auto', got {sampler!r}")
    if sampler == "pyg":
        return False
    if torch.device(device).type != "cuda":
        if sampler == "cugraph":
            raise RuntimeError("sampler='cugraph' needs a CUDA device")
        return False
    try:
        import cugraph_pyg  # noqa: F401
    except ImportError:
        if sampler == "cugraph":
            raise
        return False
    return True


def _cugraph_link_loader(lean: HeteroData, num_neighbors: dict, **kwargs):
    """cuGraph-PyG's GPU sampler over the same edges (run by `make gpu-check`; no CUDA on the dev machines)."""
    from cugraph_pyg.data import GraphStore
    from cugraph_pyg.loader import LinkNeighborLoader
    try:                               # the in-memory feature store; the graph trainers read no node features
        from cugraph_pyg.data import TensorDictFeatureStore as FeatureStore
    except ImportError:                # newer releases name only the WholeGraph-backed one
        from cugraph_pyg.data import FeatureStore

    graph_store = GraphStore()
    for src, rel, dst in lean.edge_types:
        size = (lean[src].num_nodes, lean[dst].num_nodes)
        graph_store[(src, rel, dst), "coo", False, size] = lean[src, rel, dst].edge_index.cuda()
    kwargs.pop("generator", None)      # cuGraph shuffles with torch's global RNG, which `fit` seeds
    return LinkNeighborLoader((FeatureStore(), graph_store), num_neighbors, **kwargs)


def link_neighbor_loader(lean: HeteroData, num_neighbors: dict, sampler: str = "pyg",
                         device: torch.device = torch.device("cpu"), require_edge_ids: bool = False,
                         **kwargs) -> ContractLoader:
    """A LinkNeighborLoader over `lean` (node counts + edge lists) from the sampler `sampler` picks, wrapped in
    the contract check. kwargs are LinkNeighborLoader's (edge_label_index, batch_size, neg_sampling, shuffle,
    generator); both loaders take the same ones."""
    num_nodes = {nt: int(lean[nt].num_nodes) for nt in lean.node_types}
    if use_cugraph(sampler, device):
        loader, name = _cugraph_link_loader(lean, num_neighbors, **kwargs), "cugraph"
    else:
        from torch_geometric.loader import LinkNeighborLoader

        with warnings.catch_warnings():   # "NeighborSampler without pyg-lib is deprecated": torch-sparse is intended
            warnings.simplefilter("ignore", UserWarning)
            loader, name = LinkNeighborLoader(lean, num_neighbors, num_workers=0, **kwargs), "pyg"
    return ContractLoader(loader, num_nodes, int(kwargs.get("batch_size", 1)), require_edge_ids, name)
