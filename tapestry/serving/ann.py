"""Approximate nearest-neighbour (inner product) indexes over the item table, chosen by config and tuned to a recall.

Retrieval asks FAISS for the top-n items by inner product with the user vector(s). An exact (Flat) scan reads every
item for every query; above ~50k items an approximate index answers the same question far faster at a recall we
choose. This module builds any of them from one `IndexConfig`, with the same id convention as the exact export
index: FAISS ids are item indices 1..n (row 0 of the table is padding and is never indexed, so id 0 never comes
back), held by an `IndexIDMap2` around every kind.

Kinds (any FAISS `index_factory` string works; these are the ones measured in benchmarks/ann.py):
    "Flat"          exact: identical to tapestry.ensembles.export.build_faiss_index.
    "IVF{n},Flat"   k-means into n lists (spherical k-means: FAISS sets it for inner product), search the nprobe
                    lists nearest the query. Recall grows monotonically with nprobe.
    "IVF{n},PQ{m}"  same lists, vectors compressed to m bytes (product quantisation); with `rerank_exact` the top
                    k * refine_k_factor candidates are re-scored with exact inner products (IndexRefineFlat), which
                    recovers the recall PQ loses but keeps a full copy of the vectors.
    "IVF{n},SQ8"    same lists, 1 byte per dimension, + the same exact re-score.
    "HNSW{M}"       graph with M links per node, greedy search keeping efSearch candidates; built in L2 on
                    norm-augmented vectors so that it is navigable for inner product (see `_build_hnsw_mips`).
    "auto"          Flat below AUTO_EXACT_BELOW items, else IVF{default_nlist},SQ8 + exact re-score (see
                    `resolve_factory` for the measurement).

`tune_index` raises nprobe / efSearch until recall@k against the exact answer reaches the target on sample queries.
FAISS 1.15 serialises nprobe and efSearch, older versions and GPU clones do not reliably, so `save_index` writes the
tuned parameters to `<path>.json` and `load_index` re-applies them.

Searching: `index.search(Q[K, D], n)` answers K query rows at once for every kind (multi-interest users).
A row gets fewer than n real results when the probed lists / graph neighbourhood hold fewer than n items (small
nprobe, n near the catalogue size): the missing slots have id -1 and score -3.4e38 (-FLT_MAX). Callers must drop
ids < 0 (Retrieval does: `keep = ids[0] >= 0`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from tapestry.artifacts import atomic_write_bytes, atomic_write_json

AUTO_EXACT_BELOW = 50_000   # below this an exact scan is ~1 ms per query on one core: no reason to approximate
AUTO_ANN = "IVF{nlist},SQ8"  # above that (benchmarks/results/ann-synthetic-1m.json, see resolve_factory)
UNTUNED_NPROBE_FRACTION = 16  # before tune_index: nprobe = nlist / 16 (tuned: nlist/16 at 100k, nlist/32 at 1M)
UNTUNED_EF_SEARCH = 512       # before tune_index (tuned: 325 at 100k, 1000 at 1M for recall@100 0.95)
_COMPRESSED = re.compile(r"(PQ|SQ|RQ|LSQ)\d")   # lossy codes that `rerank_exact` refines
_HNSW_FLAT = re.compile(r"^HNSW(\d+)(,Flat)?$")


@dataclass
class IndexConfig:
    """How to index the item table. Every field is documented once, here.

    factory: "Flat", "auto", or a FAISS index_factory string ("IVF4096,Flat", "IVF4096,PQ32", "HNSW32", ...);
        the metric is always inner product (the models score by dot product).
    nprobe: IVF lists searched per query; None = nlist / UNTUNED_NPROBE_FRACTION until `tune_index` sets it.
    ef_search: HNSW candidate-list size at search time; None = UNTUNED_EF_SEARCH until `tune_index` sets it.
    ef_construction: HNSW candidate-list size while building: better graph, slower build (FAISS default 40).
    target_recall: recall@k vs exact for the caller to pass to `tune_index` (kept with the config).
    train_size: items sampled (seeded) to train IVF centroids / PQ codebooks; k-means uses at most 256 per list.
    rerank_exact: for compressed codes (PQ/SQ), re-score the top k * refine_k_factor candidates exactly.
    refine_k_factor: candidates re-scored per wanted result when rerank_exact is on.
    seed: for the training sample.
    """
    factory: str = "Flat"
    nprobe: int | None = None
    ef_search: int | None = None
    ef_construction: int = 40
    target_recall: float = 0.95
    train_size: int = 200_000
    rerank_exact: bool = True
    refine_k_factor: int = 4
    seed: int = 0


@dataclass
class TuneResult:
    param: str | None             # "nprobe", "efSearch", or None for an exact index (nothing to tune)
    value: int | None             # the value now set on the index
    recall: float                 # recall@k measured at that value on the sample queries
    reached: bool                 # False: even the largest value tried misses the target (value = that largest)
    k: int
    tried: list[tuple[int, float]] = field(default_factory=list)   # (value, recall) in the order evaluated
    extra: dict[str, int] = field(default_factory=dict)           # other parameters tuning set (k_factor_rf)


def default_nlist(num_items: int) -> int:
    """IVF list count: the power of two nearest 4 * sqrt(n) (FAISS guideline), so lists hold ~sqrt(n)/4 items."""
    return max(1, 2 ** round(math.log2(4 * math.sqrt(max(num_items, 1)))))


def resolve_factory(factory: str, num_items: int) -> str:
    """The concrete factory string for `factory` over `num_items` indexed items ("auto" decides here).

    "auto" = Flat below AUTO_EXACT_BELOW, else IVF{default_nlist(n)},SQ8 with the exact re-score. Measured on 1M
    clustered 64-d items (benchmarks/ann.py, 2 shared cores, each tuned to 0.955 recall@100, one query per
    call): IVF4096,SQ8 0.96 recall at 21x Flat's queries/s, IVF4096,Flat 12x, HNSW32 7x (it needs efSearch=1000
    for k=100, builds 3x slower and takes twice the memory). SQ8 scans 1 byte per dimension instead of 4, which
    matters more than the decoding cost once the probed lists come from DRAM; the re-score with the exact vectors
    (k_factor 4) gives back exactly IVF-Flat's recall at the same nprobe, for 1.25x Flat's memory. At 100k items
    (26 MB, cache-resident) the two IVF kinds are level (ann-synthetic-100k.json: 4.9x and 4.2x Flat).
    """
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"IndexConfig.factory must be a non-empty string, got {factory!r}")
    factory = factory.strip()
    if factory.lower() == "auto":
        return "Flat" if num_items < AUTO_EXACT_BELOW else AUTO_ANN.format(nlist=default_nlist(num_items))
    return factory


def _item_matrix(item_embeddings) -> np.ndarray:
    emb = np.asarray(item_embeddings)
    if emb.ndim != 2 or emb.shape[0] < 2 or emb.shape[1] < 1:
        raise ValueError(f"item_embeddings must be [num_items >= 2, D] with row 0 = padding, got {emb.shape}")
    emb = np.ascontiguousarray(emb[1:], dtype=np.float32)
    if not np.isfinite(emb).all():
        raise ValueError("item_embeddings contain NaN or inf")
    return emb


def build_index(item_embeddings, cfg: IndexConfig | None = None) -> faiss.Index:
    """Index items 1..n of `item_embeddings[num_items, D]` (row 0 = padding, not indexed); FAISS id = item index."""
    cfg = cfg or IndexConfig()
    emb = _item_matrix(item_embeddings)
    n, d = emb.shape
    ids = np.arange(1, n + 1, dtype=np.int64)
    factory = resolve_factory(cfg.factory, n)
    if factory == "Flat":   # exactly build_faiss_index's index, so exported Flat indexes are unchanged
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        index.add_with_ids(emb, ids)
        return index
    hnsw = _HNSW_FLAT.match(factory)
    if hnsw:
        return _build_hnsw_mips(emb, ids, int(hnsw.group(1)), cfg)
    if "IDMap" in factory:
        raise ValueError(f"factory {factory!r}: do not add IDMap, build_index wraps every index in IndexIDMap2")
    try:
        base = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:   # FAISS's message is a C++ assertion dump: keep its first line only
        raise ValueError(f"invalid FAISS factory string {factory!r} for dim {d}: "
                         f"{str(e).strip().splitlines()[0][:200]}") from None
    core = _core(base)
    if isinstance(core, faiss.IndexIVF) and core.nlist > n:
        raise ValueError(f"factory {factory!r} asks for {core.nlist} IVF lists but there are only {n} items")
    if isinstance(core, faiss.IndexHNSW):
        core.hnsw.efConstruction = cfg.ef_construction
    if isinstance(core, faiss.IndexIVFPQ):
        core.do_polysemous_training = False   # only for polysemous (Hamming) filtering, unused; slow to train
    if not base.is_trained:
        rng = np.random.default_rng(cfg.seed)
        sample = emb if n <= cfg.train_size else emb[np.sort(rng.choice(n, cfg.train_size, replace=False))]
        base.train(sample)
    if cfg.rerank_exact and _COMPRESSED.search(factory) and "Refine" not in factory:
        base = faiss.IndexRefineFlat(base)
        base.k_factor = cfg.refine_k_factor
    index = faiss.IndexIDMap2(base)
    index.add_with_ids(emb, ids)
    tunable = _tunable(index)
    params = {"nprobe": cfg.nprobe or max(1, tunable.get("nprobe", 0) // UNTUNED_NPROBE_FRACTION),
              "efSearch": cfg.ef_search or UNTUNED_EF_SEARCH}
    set_params(index, {k: v for k, v in params.items() if k in tunable})
    return index


def _build_hnsw_mips(emb: np.ndarray, ids: np.ndarray, m: int, cfg: IndexConfig) -> faiss.Index:
    """HNSW for maximum inner product: the graph is built in L2 on norm-augmented vectors, searched by inner product.

    A graph built with inner product as its "distance" is not navigable when norms vary (an item can have a larger
    inner product with a long neighbour than with itself, so short items lose their in-links): measured here,
    0.68 recall@100 at efSearch = n on 20k clustered items, with -1 ids. The classic reduction (Bachrach et al.
    2014) appends sqrt(R^2 - |x|^2) to every item (R = the largest norm) and 0 to the query, so that
    |q' - x'|^2 = |q|^2 + R^2 - 2 q.x: L2 order = inner-product order for every query. The graph is built in
    that space, then moved to a d-dim inner-product HNSW over the raw vectors: greedy search only compares
    distances to one query, which rank the same way, so searching it is exactly the L2 search on augmented
    vectors, with the plain `search(Q[K, D], n)` API and no extra dimension for the caller. Do not `add` to the
    result (FAISS would link new items by inner product): rebuild it, as export does on every version.
    """
    n, d = emb.shape
    sq = np.einsum("ij,ij->i", emb, emb)
    aug = np.hstack([emb, np.sqrt(np.maximum(sq.max() - sq, 0.0))[:, None]]).astype(np.float32)
    graph = faiss.IndexHNSWFlat(d + 1, m)
    graph.hnsw.efConstruction = cfg.ef_construction
    graph.add(aug)
    del aug
    hnsw = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIDMap2(hnsw)              # IDMap needs an empty index: fill both by hand below
    hnsw.hnsw = graph.hnsw                       # copies the graph (levels, links, entry point)
    del graph
    if hasattr(hnsw.hnsw, "is_similarity"):      # FAISS >= 1.12 tags the graph with its metric's direction
        hnsw.hnsw.is_similarity = True
    hnsw.storage.add(emb)
    hnsw.ntotal = n
    faiss.copy_array_to_vector(ids, index.id_map)
    index.ntotal = n
    index.construct_rev_map()
    hnsw.hnsw.efSearch = cfg.ef_search or UNTUNED_EF_SEARCH
    return index


# ---- parameters -----------------------------------------------------------------------------------------------
def _core(index: faiss.Index) -> faiss.Index:
    """The index under IDMap / Refine / PreTransform wrappers (where nprobe or efSearch lives)."""
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, faiss.IndexIDMap):          # IndexIDMap2 is a subclass
            index = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        elif isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        else:
            return index


def _refine(index: faiss.Index):
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexRefine) else None


def _kind(index: faiss.Index) -> str:
    core = _core(index)
    if isinstance(core, faiss.IndexIVF) or type(core).__name__.startswith("GpuIndexIVF"):
        return "ivf"
    if isinstance(core, faiss.IndexHNSW):
        return "hnsw"
    return "other"


def _tunable(index: faiss.Index) -> dict[str, int]:
    """{param: largest sensible value} for the index's search-time knob (empty for exact / unknown kinds)."""
    kind = _kind(index)
    if kind == "ivf":
        core = _core(index)
        return {"nprobe": int(core.nlist if hasattr(core, "nlist") else core.getNumLists())}
    if kind == "hnsw":
        return {"efSearch": int(min(max(index.ntotal, 1), 16_384))}
    return {}


def get_params(index: faiss.Index) -> dict[str, int]:
    """The search-time parameters currently set on the index (what `save_index` persists)."""
    core, out = _core(index), {}
    kind = _kind(index)
    if kind == "ivf":
        out["nprobe"] = int(core.nprobe)
    elif kind == "hnsw":
        out["efSearch"] = int(core.hnsw.efSearch)
    refine = _refine(index)
    if refine is not None:
        out["k_factor_rf"] = int(refine.k_factor)
    return out


def set_params(index: faiss.Index, params: dict[str, int]) -> faiss.Index:
    """Set nprobe / efSearch / k_factor_rf (FAISS ParameterSpace names) through any wrappers, CPU or GPU."""
    gpu = "Gpu" in type(_core(index)).__name__ and hasattr(faiss, "GpuParameterSpace")
    space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, float(value))
    return index


# ---- recall and tuning ----------------------------------------------------------------------------------------
def exact_topk(item_embeddings, queries, k: int) -> np.ndarray:
    """Exact top-k item indices (1..n) by inner product: the ground truth recall is measured against."""
    emb = _item_matrix(item_embeddings)
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(emb)
    _, idx = flat.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(emb)))
    return np.where(idx >= 0, idx + 1, -1)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / |exact| (ids < 0 in `found` count as misses)."""
    hits = [len(np.intersect1d(f[f >= 0], e[e >= 0], assume_unique=True)) / max((e >= 0).sum(), 1)
            for f, e in zip(found, exact)]
    return float(np.mean(hits))


def tune_index(index: faiss.Index, item_embeddings, sample_queries, target_recall: float = 0.95,
               k: int = 100, exact: np.ndarray | None = None, max_k_factor: int = 64) -> TuneResult:
    """Smallest nprobe / efSearch whose recall@k on `sample_queries` reaches `target_recall`; it is set on `index`.

    Doubling finds the first passing value, then bisection between it and the last failing one (to ~1/8 of the
    value: the cost differs by less than the measurement noise). IVF recall is monotone in nprobe (more lists =
    a superset of candidates); HNSW's nearly so. Tune on queries you will not report recall on: the chosen value
    sits right at the target, so other queries land within sampling error of it (+-0.01 at 500 queries).
    With an exact re-score (IndexRefineFlat) the recall ceiling is set by how many candidates are re-scored:
    k_factor is doubled first (at the largest nprobe / efSearch) until the ceiling clears the target by 0.01,
    then nprobe / efSearch is tuned at that k_factor; the chosen k_factor is in `extra`.
    `exact` = precomputed `exact_topk(item_embeddings, sample_queries, k)`, to share it between several indexes.
    """
    queries = np.ascontiguousarray(sample_queries, dtype=np.float32)
    if exact is None:
        exact = exact_topk(item_embeddings, queries, k)
    tunable = _tunable(index)

    def measure(params: dict[str, int]) -> float:
        set_params(index, params)
        _, ids = index.search(queries, k)
        return recall_at_k(ids, exact)

    if not tunable:
        r = measure({})
        return TuneResult(None, None, r, r >= target_recall, k)
    param, top = next(iter(tunable.items()))
    extra: dict[str, int] = {}
    refine = _refine(index)
    if refine is not None:
        kf = max(1, int(refine.k_factor))
        while measure({param: top, "k_factor_rf": kf}) < min(target_recall + 0.01, 1.0) and kf < max_k_factor:
            kf = min(kf * 2, max_k_factor)
        extra["k_factor_rf"] = kf
    tried: dict[int, float] = {}

    def passes(value: int) -> bool:
        if value not in tried:
            tried[value] = measure({param: value})
        return tried[value] >= target_recall

    lo, hi = 0, min(1 if param == "nprobe" else k, top)   # HNSW: ef = k is the usual first guess
    while not passes(hi):
        if hi >= top:
            return TuneResult(param, hi, tried[hi], False, k, list(tried.items()), extra)
        lo, hi = hi, min(hi * 2, top)
    while hi - lo > max(1, hi // 8):
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    set_params(index, {param: hi})
    return TuneResult(param, hi, tried[hi], True, k, list(tried.items()), extra)


# ---- persistence and devices ----------------------------------------------------------------------------------
def params_path(path: str | Path) -> Path:
    return Path(f"{path}.json")


def save_index(index: faiss.Index, path: str | Path, params: dict[str, int] | None = None,
               meta: dict | None = None) -> Path:
    """Write the index (atomically) and `<path>.json` with its search parameters (default: those set on it)."""
    path = Path(path)
    if "Gpu" in type(_core(index)).__name__:
        index = faiss.index_gpu_to_cpu(index)
    params = get_params(index) if params is None else params
    atomic_write_bytes(path, faiss.serialize_index(index).tobytes())
    atomic_write_json(params_path(path), {"params": params, "faiss_version": faiss.__version__, **(meta or {})})
    return path


def load_index(path: str | Path) -> faiss.Index:
    """Read an index and re-apply the parameters saved next to it (a bare .faiss file loads as written)."""
    path = Path(path)
    index = faiss.read_index(str(path))
    side = params_path(path)
    if side.exists():
        set_params(index, json.loads(side.read_text()).get("params", {}))
    return index


def to_device(index: faiss.Index, device: int = 0) -> faiss.Index:
    """A GPU copy (same search API, same parameters) where FAISS sees a GPU, else the index itself.

    GPU FAISS holds Flat, IVF-Flat, IVF-PQ and IVF-SQ; HNSW and Refine stay on the CPU (the clone raises and the
    CPU index is returned). GPU search needs k <= 2048.
    """
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index
    params = get_params(index)
    try:
        gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device, index)   # keeps a ref to resources
    except RuntimeError:
        return index
    return set_params(gpu, params)
