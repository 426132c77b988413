"""The typed (multi-relational) graph of the generic event table (issue 19): opt-in, beside build_hetero_graph.

build_hetero_graph (the default every model trains on) joins users and items by ONE `interacts` relation.
build_typed_graph keeps what the event table says about each event:

Node types: `user`, `item` and one per entity type (as build_hetero_graph); when the TRAINING events carry them,
`session` (one per user and session_id), `query` (one per query text, case-folded, whitespace collapsed: the same
search by two users is one node), one per declared context column (device, location, tag, ...: one node per value;
a context column named like an entity type shares its nodes), and optionally `event` (mediated interaction nodes).

Relations, each also reversed as `rev_<relation>` so that messages flow both ways:
- (user, <event type>, item), one relation per event type (`purchase`, `view`, ...), or, with behaviours=False,
  every event in one (user, interacts, item);
- (user|item, has_<e>, <e>): entity attributes, as in build_hetero_graph;
- (user, starts, session) once per session, and (session, contains, item) per event with a session_id;
- (user, issues, query) and (query, leads_to, item) per event with a query;
- (user, with_<c>, <c>) and (item, with_<c>, <c>) per event with a value in context column c;
- mediated=True: one `event` node per training event that carries a context value, linked to every entity of the
  event: (event, by, user), (event, on, item), (event, in_session, session), (event, via_query, query),
  (event, with_<c>, <c>). The compound "user A bought item B on device D" stays one node instead of pairs;
- (user, <link column>, user): user links such as Last.fm friends (user_links.parquet).

Per-event edges carry `time` (unix s, i64) and `weight` (f32), plus `dwell` and `price` (f32, NaN = not given)
when the events have those columns. (user, starts, session) carries the session's first event time.
Per-occurrence node types (session, event) carry `category` (long, per node) and `num_categories`: no session or
event id is ever seen twice, so models embed them by category (one shared row for sessions, the event type for
events) rather than by id. The graph records `behaviour_types`, its user->item relations. Only the training split
contributes: no held-out event is an edge or a node. Node 0 of user/item stays the isolated OOV row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import torch
from torch_geometric.data import HeteroData

from tapestry.etl.schema import EDGE_VALUE_COLUMNS, QUERY_COLUMN, RESERVED_NODE_TYPES
from tapestry.graph.hetero import INTERACTS, _add_entities, _edge, build_hetero_graph

SESSION_RELATIONS = (("user", "starts", "session"), ("session", "contains", "item"))
QUERY_RELATIONS = (("user", "issues", "query"), ("query", "leads_to", "item"))
_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class TypedGraphConfig:
    """Which parts of the event table become relations (each part only where the training events carry it)."""
    behaviours: bool = True       # one relation per event type; False: one `interacts` relation for all events
    entities: bool = True         # item / user attribute nodes (has_<e>)
    sessions: bool = True         # session nodes (session_id)
    queries: bool = True          # query nodes (query)
    context: bool = True          # direct user/item -> context value edges (declared context columns)
    mediated: bool = False        # one `event` node per event with a context value, linked to all its entities
    user_links: bool = True       # user -> user relations (e.g. friends)

    @classmethod
    def interactions_only(cls) -> "TypedGraphConfig":
        """Users and items joined by one `interacts` relation, nothing else (the ablation's middle variant)."""
        return cls(behaviours=False, entities=False, sessions=False, queries=False, context=False, mediated=False,
                   user_links=False)


# The graph variants models and benchmarks name (HGTConfig.graph, RSAGEConfig.graph).
GRAPH_KINDS = ("given", "typed", "typed_mediated", "interactions", "none")


def _check_relation(name: str) -> str:
    if not _NAME.fullmatch(name) or "__" in name or name.startswith("rev_"):
        raise ValueError(f"{name!r} cannot name a relation: use letters, digits and single underscores, not "
                         "starting with `rev_` (event types and link columns name relations)")
    return name


def _features(frame: pl.DataFrame) -> dict[str, torch.Tensor]:
    """Per-event edge features of the rows of `frame`: time, weight, and dwell / price where the events have them."""
    out = {"time": torch.from_numpy(frame["timestamp"].to_numpy().astype(np.int64)),
           "weight": torch.from_numpy(frame["weight"].to_numpy().astype(np.float32))}
    for c in EDGE_VALUE_COLUMNS:
        if c in frame.columns:
            out[c] = torch.from_numpy(frame[c].cast(pl.Float32).fill_null(float("nan")).to_numpy().astype(np.float32))
    return out


def _add_pair(g: HeteroData, et: tuple[str, str, str], src, dst, features: dict | None = None) -> None:
    """Edge type `et` and its reverse, with the same per-edge features on both."""
    s, rel, d = et
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    g[et].edge_index = _edge(src, dst)
    g[d, f"rev_{rel}", s].edge_index = _edge(dst, src)
    for name, values in (features or {}).items():
        g[et][name] = values
        g[d, f"rev_{rel}", s][name] = values.clone()


def _nodes(g: HeteroData, node_type: str):
    """The node store of `node_type`, created if need be. (g[name] would return the edge store of a relation
    called `name` while no such node type exists: Last.fm's `tag` is both an event type and a context column.)"""
    return g.get_node_store(node_type)


def _value_nodes(g: HeteroData, node_type: str, values: pl.Series) -> dict[str, int]:
    """Value -> node index of `node_type`, extending (never renumbering) its `entity_values` list."""
    store = _nodes(g, node_type)
    existing = list(getattr(store, "entity_values", []))
    known = set(existing)
    for v in values.unique(maintain_order=True).to_list():
        if v not in known:
            existing.append(v)
            known.add(v)
    store.entity_values = existing
    store.num_nodes = len(existing)
    return {v: i for i, v in enumerate(existing)}


def _lookup(values: pl.Series, table: dict[str, int]) -> np.ndarray:
    return np.array([table[v] for v in values.to_list()], dtype=np.int64)


def _sessions(g: HeteroData, tr: pl.DataFrame) -> pl.DataFrame:
    """Session nodes (one per (user, session_id), in order of first training event); returns the training events
    with a session as (`_event`, `_session`)."""
    part = tr.filter(pl.col("session_id").is_not_null())
    if not part.height:
        return pl.DataFrame(schema={"_event": pl.UInt32, "_session": pl.Int64})
    keys = (part.group_by("user_idx", "session_id", maintain_order=True)
            .agg(pl.col("timestamp").min().alias("_start")).with_row_index("_session"))
    keys = keys.with_columns(pl.col("_session").cast(pl.Int64))
    store = _nodes(g, "session")
    store.num_nodes = keys.height
    store.category = torch.zeros(keys.height, dtype=torch.long)     # one shared embedding row
    store.num_categories = 1
    _add_pair(g, SESSION_RELATIONS[0], keys["user_idx"].to_numpy(), keys["_session"].to_numpy(),
              {"time": torch.from_numpy(keys["_start"].to_numpy().astype(np.int64))})
    part = part.join(keys.select("user_idx", "session_id", "_session"), on=["user_idx", "session_id"],
                     how="left", maintain_order="left")
    _add_pair(g, SESSION_RELATIONS[1], part["_session"].to_numpy(), part["item_idx"].to_numpy(), _features(part))
    return part.select("_event", "_session")


def _queries(g: HeteroData, tr: pl.DataFrame) -> pl.DataFrame:
    """Query nodes and their edges; returns the training events with a query as (`_event`, `_query`)."""
    part = tr.filter(pl.col(QUERY_COLUMN).is_not_null()).with_columns(
        pl.col(QUERY_COLUMN).str.to_lowercase().str.replace_all(r"\s+", " ").alias("_text"))
    if not part.height:
        return pl.DataFrame(schema={"_event": pl.UInt32, "_query": pl.Int64})
    q = _lookup(part["_text"], _value_nodes(g, "query", part["_text"]))
    feats = _features(part)
    _add_pair(g, QUERY_RELATIONS[0], part["user_idx"].to_numpy(), q, feats)
    _add_pair(g, QUERY_RELATIONS[1], q, part["item_idx"].to_numpy(), feats)
    return part.select("_event", pl.Series("_query", q))


def _mediated(g: HeteroData, tr: pl.DataFrame, context: dict[str, pl.DataFrame], linked: dict[str, pl.DataFrame]):
    """One `event` node per training event with a context value, linked to each entity of the event."""
    ids = sorted(set().union(*(set(f["_event"].to_list()) for f in context.values())))
    if not ids:
        return
    ev = tr.filter(pl.col("_event").is_in(ids))               # in training order
    node = pl.DataFrame({"_event": ev["_event"], "_node": np.arange(ev.height, dtype=np.int64)})
    vocab = sorted(tr["event_type"].unique().to_list())
    store = _nodes(g, "event")
    store.num_nodes = ev.height
    store.category = torch.tensor([vocab.index(t) for t in ev["event_type"].to_list()], dtype=torch.long)
    store.num_categories = len(vocab)
    store.event_types = vocab
    store.time = torch.from_numpy(ev["timestamp"].to_numpy().astype(np.int64))
    feats = _features(ev)
    _add_pair(g, ("event", "by", "user"), node["_node"].to_numpy(), ev["user_idx"].to_numpy(), feats)
    _add_pair(g, ("event", "on", "item"), node["_node"].to_numpy(), ev["item_idx"].to_numpy(), feats)
    others = [(f"with_{c}", c, f) for c, f in context.items()]
    others += [(rel, nt, linked[nt]) for rel, nt in (("in_session", "session"), ("via_query", "query")) if nt in linked]
    for rel, nt, frame in others:
        col = frame.columns[1]
        j = node.join(frame, on="_event", how="inner", maintain_order="left")
        if j.height:
            sub = ev.filter(pl.col("_event").is_in(j["_event"].implode()))     # ev order = j order
            _add_pair(g, ("event", rel, nt), j["_node"].to_numpy(), j[col].to_numpy(), _features(sub))


def build_typed_graph(data, cfg: TypedGraphConfig | None = None) -> HeteroData:
    """`data` is a tapestry.training.data.InteractionData; only `data.train` contributes events."""
    cfg = cfg or TypedGraphConfig()
    g = HeteroData()
    g["user"].num_nodes = data.num_users
    g["item"].num_nodes = data.num_items
    tr = data.train.with_row_index("_event")
    behaviours = []
    if cfg.behaviours:
        for etype in sorted(tr["event_type"].unique().to_list()):
            part = tr.filter(pl.col("event_type") == etype)
            et = ("user", _check_relation(etype), "item")
            _add_pair(g, et, part["user_idx"].to_numpy(), part["item_idx"].to_numpy(), _features(part))
            behaviours.append(et)
    else:
        _add_pair(g, INTERACTS, tr["user_idx"].to_numpy(), tr["item_idx"].to_numpy(), _features(tr))
        behaviours.append(INTERACTS)
    g.behaviour_types = behaviours
    if cfg.entities:
        for owner, entities in (("item", data.item_entities), ("user", data.user_entities)):
            clash = set(entities["entity_type"].unique().to_list()) & set(RESERVED_NODE_TYPES) if entities.height \
                else set()
            if clash:
                raise ValueError(f"entity type(s) {sorted(clash)} clash with node types of the typed graph; rename")
            for etype in entities["entity_type"].unique(maintain_order=True).to_list():
                _nodes(g, etype)             # before _add_entities' g[etype]: an event type may bear the name
            _add_entities(g, owner, entities)
    linked = {}
    if cfg.sessions and "session_id" in tr.columns:
        linked["session"] = _sessions(g, tr)
    if cfg.queries and QUERY_COLUMN in tr.columns:
        linked["query"] = _queries(g, tr)
    context = {}
    for c in getattr(data, "context_columns", ()):
        if c not in tr.columns or not (cfg.context or cfg.mediated):
            continue
        part = tr.filter(pl.col(c).is_not_null())
        if not part.height:
            continue
        v = _lookup(part[c], _value_nodes(g, c, part[c]))
        context[c] = part.select("_event", pl.Series(f"_{c}", v))
        if cfg.context:
            feats = _features(part)
            rel = f"with_{_check_relation(c)}"
            _add_pair(g, ("user", rel, c), part["user_idx"].to_numpy(), v, feats)
            _add_pair(g, ("item", rel, c), part["item_idx"].to_numpy(), v, feats)
    if cfg.mediated:
        _mediated(g, tr, context, linked)
    links = getattr(data, "user_links", None)
    if cfg.user_links and links is not None and links.height:
        for rel in sorted(links["relation"].unique().to_list()):
            part = links.filter(pl.col("relation") == rel)
            _add_pair(g, ("user", _check_relation(rel), "user"), part["user_idx"].to_numpy(),
                      part["linked_user_idx"].to_numpy())
    return g


def behaviour_types(graph: HeteroData) -> list[tuple[str, str, str]]:
    """The graph's user -> item relations: the typed graph records them; build_hetero_graph's is `interacts`."""
    # as tuples: HeteroData.to() turns a stored list of tuples into lists
    return [tuple(et) for et in (getattr(graph, "behaviour_types", None) or [INTERACTS])]


def relations_record(edge_types) -> dict:
    """What metrics.json and the export manifest say about the graph a model trained over: the number of edge
    types and each as `src/relation/dst` (reverse relations included), sorted."""
    names = sorted("/".join(et) for et in edge_types)
    return {"edge_types": len(names), "relations": names}


def supervision_pairs(data, target_events: tuple[str, ...] = ()) -> torch.Tensor:
    """[2, E] (user, item) of the training events of `target_events` (every event when empty), in training order:
    the positives a link-prediction model learns, whatever graph it passes messages over."""
    tr = data.train
    if target_events:
        tr = tr.filter(pl.col("event_type").is_in([t.lower() for t in target_events]))
    return _edge(tr["user_idx"].to_numpy(), tr["item_idx"].to_numpy())


def graph_for(data, kind: str, given: HeteroData | None = None) -> HeteroData:
    """The graph a model of config `graph=kind` passes messages over (GRAPH_KINDS):
    "given": `given`, else build_hetero_graph(data) (the default graph); "typed": build_typed_graph(data);
    "typed_mediated": the same with mediated event nodes; "interactions": one user-item relation, nothing else;
    "none": the interactions graph with every edge removed (a model then sees only its own ID embeddings)."""
    if kind == "given":
        return given if given is not None else build_hetero_graph(data)
    if kind == "typed":
        return build_typed_graph(data)
    if kind == "typed_mediated":
        return build_typed_graph(data, replace(TypedGraphConfig(), mediated=True))
    if kind in ("interactions", "none"):
        g = build_typed_graph(data, TypedGraphConfig.interactions_only())
        if kind == "none":
            empty = HeteroData()
            for nt in g.node_types:
                empty[nt].num_nodes = int(g[nt].num_nodes)
            for et in g.edge_types:
                empty[et].edge_index = g[et].edge_index[:, :0]
            empty.behaviour_types = behaviour_types(g)
            return empty
        return g
    raise ValueError(f"graph must be one of {GRAPH_KINDS}, got {kind!r}")
