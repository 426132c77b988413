"""Every trainable model by name: adding a model is one new file (its Config + Recommender) and one line here.

The training pipeline, the saved-file table (`<name>.pt`), `tapestry train --models`, evaluation and the
ablation report all read this table; none of them names a model class. Classes are imported lazily, so a model
with heavy optional dependencies (torch-sparse samplers, cuGraph) costs nothing until it is asked for.

`quick` holds smoke-sized overrides (`tapestry train --quick`, tests): every stage runs for real in seconds.

Each entry declares its ROLE and its UPSTREAM inputs once; the training pipeline (order checks, `bind`), the export
(what can be served, which ranker belongs to the served model) and `tapestry train --models` (the default served
model) read them from here instead of guessing from names or attributes.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field


ROLES = {
    "retriever": "a user encoder the export can serve: FAISS retrieval over its item table",
    "candidate_source": "scores items for a user from counts or the graph (popularity, closed-form filters); not "
                        "served as the user encoder",
    "item_encoder": "learns item vectors that other models read (the graph models)",
    "session_encoder": "encodes anonymous sessions over the served model's item table",
    "ranker": "reorders a retriever's candidates",
}
SERVABLE_ROLES = ("retriever", "session_encoder")   # their Recommender has serving_module()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    target: str                                   # "package.module:RecommenderClass"
    summary: str = ""
    params: dict = field(default_factory=dict)    # this entry's hyper-parameters (over the Config defaults)
    quick: dict = field(default_factory=dict)     # hyper-parameter overrides for smoke runs
    role: str = ""                                # one of ROLES
    # Config fields that name another registry model, read through `bind` (trained earlier in the same run). A
    # ranker's first one names the retriever whose candidates it reranks.
    upstream: tuple[str, ...] = ()
    # A retriever whose item table gives catalogue items WITHOUT events (ETLConfig.cold_items) vectors from their
    # content; every other retriever's rows for them are untrained, so the export warns when it serves one.
    retrieves_cold_items: bool = False

    def recommender_class(self):
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is registered twice")
    if spec.role not in ROLES:
        raise ValueError(f"model {spec.name!r}: role {spec.role!r} is not one of {sorted(ROLES)}")
    if spec.role == "ranker" and not spec.upstream:
        raise ValueError(f"ranker {spec.name!r} must name the config field of its retriever in `upstream`")
    MODELS[spec.name] = spec
    return spec


def get(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(MODELS)}") from None


def upstream_names(name: str, config) -> list[str]:
    """The registry models `name` reads, from its resolved config (a dataclass or a dict)."""
    get_field = config.get if isinstance(config, dict) else (lambda f, d=None: getattr(config, f, d))
    return [m for m in (get_field(f, None) for f in get(name).upstream) if m]


def servable(name: str) -> bool:
    return get(name).role in SERVABLE_ROLES


def rankers_of(served: str, models: list[str], resolved: dict[str, dict]) -> list[str]:
    """The trained rankers (in line-up order) that rerank `served`'s candidates."""
    out = []
    for m in models:
        spec = get(m)
        if spec.role == "ranker" and resolved.get(m, {}).get(spec.upstream[0]) == served:
            out.append(m)
    return out


def build(name: str, params: dict | None = None, quick: bool = False, device: str = "auto",
          progress: bool | None = None):
    """An unfitted recommender: Config defaults, the entry's params, `quick` overrides, then `params`."""
    spec = get(name)
    overrides = {**spec.params, **(spec.quick if quick else {}), **(params or {})}
    return spec.recommender_class()(device=device, progress=progress, **overrides)


_Q_GRAPH = dict(embedding_dim=16, epochs=1)
_Q_SEQ = dict(hidden_dim=16, num_blocks=1, max_len=20, epochs=1, batch_size=256)

register(ModelSpec("popularity", "tapestry.training.popularity:PopularityRecommender",
                   "most-interacted items; the baseline and the cold-start fallback",
                   role="candidate_source"))
register(ModelSpec("lightgcn", "tapestry.training.lightgcn:LightGCNRecommender",
                   "LightGCN over users, items and entity nodes (one flattened graph)",
                   quick=dict(_Q_GRAPH, num_layers=1),
                   role="item_encoder"))
register(ModelSpec("sasrec", "tapestry.training.sasrec:SASRecRecommender",
                   "SASRec, randomly initialised item table", quick=_Q_SEQ,
                   role="retriever", upstream=("item_init_from", "graph_from")))
register(ModelSpec("sasrec_lightgcn_init", "tapestry.training.sasrec:SASRecRecommender",
                   "SASRec with its item table started from LightGCN's vectors",
                   params=dict(item_init_from="lightgcn"), quick=_Q_SEQ,
                   role="retriever", upstream=("item_init_from", "graph_from")))
register(ModelSpec("sasrec_lightgcn", "tapestry.training.sasrec:SASRecRecommender",
                   "SASRec + LightGCN item vectors, frozen and fused by a learned projection",
                   params=dict(graph_from="lightgcn", fusion="add"), quick=_Q_SEQ,
                   role="retriever", upstream=("item_init_from", "graph_from")))
register(ModelSpec("sage", "tapestry.training.sage:SAGERecommender",
                   "GraphSAGE/PinSage-style inductive encoder: items from entity features + sampled neighbours",
                   quick=dict(_Q_GRAPH, num_neighbors=(5,), batch_size=4096),
                   role="item_encoder"))
register(ModelSpec("hgt", "tapestry.training.hgt:HGTRecommender",
                   "Heterogeneous Graph Transformer (typed attention + relative temporal encoding), sampled subgraphs",
                   quick=dict(hidden_dim=16, out_dim=16, epochs=1, num_neighbors=(5, 3)),
                   role="item_encoder"))
register(ModelSpec("rsage", "tapestry.training.rsage:RSAGERecommender",
                   "relational GraphSAGE over the typed graph (a relation per behaviour, sessions, queries, context, "
                   "user links; per-relation weights), sampled subgraphs",
                   quick=dict(_Q_GRAPH, num_neighbors=(5,), batch_size=4096),
                   role="item_encoder"))
register(ModelSpec("hgt_typed", "tapestry.training.hgt:HGTRecommender",
                   "HGT over the typed graph (a relation per behaviour, sessions, queries, context, user links)",
                   params=dict(graph="typed"),
                   quick=dict(hidden_dim=16, out_dim=16, epochs=1, num_neighbors=(5, 3)),
                   role="item_encoder"))
register(ModelSpec("sasrec_sage", "tapestry.training.sasrec:SASRecRecommender",
                   "SASRec + GraphSAGE item vectors (inductive, from entity features), frozen and fused",
                   params=dict(graph_from="sage", fusion="add"), quick=_Q_SEQ,
                   role="retriever", upstream=("item_init_from", "graph_from")))
register(ModelSpec("sasrec_hgt", "tapestry.training.sasrec:SASRecRecommender",
                   "SASRec + HGT item vectors (typed, temporal), frozen and fused",
                   params=dict(graph_from="hgt", fusion="add"), quick=_Q_SEQ,
                   role="retriever", upstream=("item_init_from", "graph_from")))
register(ModelSpec("sasrec_rsage", "tapestry.training.sasrec:SASRecRecommender",
                   "SASRec + relational GraphSAGE item vectors from the typed graph (behaviours, sessions, queries, "
                   "context, user links), frozen and fused", params=dict(graph_from="rsage", fusion="add"),
                   quick=_Q_SEQ, role="retriever", upstream=("item_init_from", "graph_from")))
register(ModelSpec("sasrec_hgt_typed", "tapestry.training.sasrec:SASRecRecommender",
                   "SASRec + HGT item vectors from the typed graph, frozen and fused",
                   params=dict(graph_from="hgt_typed", fusion="add"), quick=_Q_SEQ,
                   role="retriever", upstream=("item_init_from", "graph_from")))
register(ModelSpec("dlrm", "tapestry.training.dlrm:DLRMRecommender",
                   "DLRM ranker over sasrec_lightgcn's candidates: TorchRec tables (shardable: --distributed N), "
                   "multi-task heads, optional TransE loss",
                   quick=dict(embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,), epochs=2, num_candidates=30),
                   role="ranker", upstream=("retriever", "graph_from")))
register(ModelSpec("fusion", "tapestry.training.fusion:FusionRecommender",
                   "fusion-transformer reranker (Head B) over sasrec_lightgcn's candidates: each candidate attends "
                   "to the recent history; listwise on many lists per user, cross-fitted retriever",
                   quick=dict(dim=16, num_heads=2, history_len=10, mlp=(16,), epochs=2, positions=2,
                              num_candidates=30),
                   role="ranker", upstream=("retriever", "graph_from")))

# ---- issue 8: the user side (two-tower baseline, multi-interest, BERT4Rec, session graphs, distillation) ----------
register(ModelSpec("two_tower", "tapestry.training.two_tower:TwoTowerRecommender",
                   "two-tower baseline: history+attribute user tower, ID+attribute item tower, in-batch softmax "
                   "with log-Q correction", quick=dict(embedding_dim=16, epochs=1),
                   role="retriever"))
register(ModelSpec("two_tower_distill", "tapestry.training.distill:DistilledTwoTowerRecommender",
                   "two-tower student distilled from a stronger scorer (teacher: hybrid SASRec, or a ranker over its "
                   "candidates: dlrm or fusion)",
                   params=dict(teacher="sasrec_lightgcn"), quick=dict(embedding_dim=16, epochs=1),
                   role="retriever", upstream=("teacher",)))
register(ModelSpec("comirec", "tapestry.training.comirec:ComiRecRecommender",
                   "ComiRec-SA multi-interest encoder: K interest vectors per user, max-sim retrieval",
                   quick=dict(hidden_dim=16, max_len=20, epochs=1),
                   role="retriever", upstream=("graph_from",)))
register(ModelSpec("comirec_lightgcn", "tapestry.training.comirec:ComiRecRecommender",
                   "ComiRec-SA over LightGCN item vectors (frozen, fused by a learned projection)",
                   params=dict(graph_from="lightgcn"), quick=dict(hidden_dim=16, max_len=20, epochs=1),
                   role="retriever", upstream=("graph_from",)))
register(ModelSpec("bert4rec", "tapestry.training.bert4rec:BERT4RecRecommender",
                   "BERT4Rec: bidirectional transformer with the Cloze (masked item) objective",
                   quick=dict(hidden_dim=16, num_blocks=1, max_len=20, epochs=1),
                   role="retriever"))
register(ModelSpec("srgnn", "tapestry.training.srgnn:SRGNNRecommender",
                   "SR-GNN session-graph encoder (gated GNN over the session's item graph + soft attention)",
                   quick=dict(hidden_dim=16, epochs=1),
                   role="session_encoder", upstream=("item_table_from",)))
register(ModelSpec("srgnn_shared", "tapestry.training.srgnn:SRGNNRecommender",
                   "SR-GNN over the served model's item table (frozen): anonymous sessions share its FAISS index",
                   # The last 5 prefixes of each history and 5 epochs: ~1 min on ML-1M (2 cores), the served default.
                   params=dict(item_table_from="sasrec_lightgcn", max_prefixes_per_user=5, epochs=5),
                   quick=dict(hidden_dim=16, epochs=1),
                   role="session_encoder", upstream=("item_table_from",)))

# ---- issue 17: closed-form graph filter (training-free; alone, item-to-item graph recall, a feature) --------------
register(ModelSpec("graph_filter", "tapestry.training.graph_filter:GraphFilterRecommender",
                   "closed-form graph filter (GF-CF / BSPM / ChebyCF family): normalised item-item filter + ideal "
                   "low-pass from a truncated SVD, training-free", quick=dict(num_factors=32),
                   role="candidate_source"))

# ---- issue 19: item content (text, categories, numbers) as graph item features; cold catalogue items --------------
register(ModelSpec("lightgcn_content", "tapestry.training.lightgcn_content:LightGCNContentRecommender",
                   "LightGCN whose item vectors add a content encoder (hashed text n-grams + categories + numbers, or a "
                   "local sentence-transformers checkpoint): catalogue items without events get vectors too",
                   quick=dict(_Q_GRAPH, num_layers=1, text_buckets=4096, category_buckets=1024),
                   role="item_encoder"))
register(ModelSpec("content_history", "tapestry.training.content_history:ContentHistoryRecommender",
                   "served retriever over lightgcn_content's item vectors (the mean of the history's vectors): with "
                   "ETLConfig.cold_items, catalogue items without events are in its FAISS index and can be retrieved",
                   quick=dict(max_len=20), role="retriever", upstream=("item_table_from",),
                   retrieves_cold_items=True))
