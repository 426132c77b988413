"""Multi-behaviour synthetic tables (issue 19): sessions, a view -> click -> add_to_cart -> purchase funnel, search
queries, dwell, price and context columns (device, location), and an item catalogue with titles, descriptions,
categories and brands. Fully vectorised (numpy + polars, no per-row Python): about a million event rows a second
on one core, so the same generator feeds tests (hundreds of rows) and the ETL benchmark (millions).

Planted signal, so that content and graph models have something to find:
- item j has category j % num_categories and one of that category's brands; its title and description draw words
  from its category's own vocabulary (so text alone tells the category);
- every user has a favourite category; a session's views fall in it with p_in_category, else on a Zipf-popular
  item of any category;
- the funnel: a view becomes a click with p_click, a click an add_to_cart with p_cart, a cart a purchase with
  p_purchase (each stage's row follows its parent 1 s later, so no timestamps tie within a session);
- a session is started by a search with p_query: its first event carries a query built from its category's words;
- `cold_items` extra catalogue items (ids after the others) have content but no events: cold-start tests.

Use MULTI_ETL_CONFIG (or an ETLConfig with context_columns=CONTEXT_COLUMNS) so the ETL keeps device and location.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from tapestry.config import ETLConfig
from tapestry.etl.sources import ROW, RawTables

FUNNEL = ("view", "click", "add_to_cart", "purchase")     # all in config.DEFAULT_EVENT_TYPES
FUNNEL_WEIGHTS = (1.0, 2.0, 3.0, 5.0)                      # a stronger signal further down the funnel
CONTEXT_COLUMNS = ("device", "location")
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_P = (0.6, 0.3, 0.1)
MULTI_ETL_CONFIG = ETLConfig(context_columns=CONTEXT_COLUMNS)
BASE_TIMESTAMP = 1_600_000_000
TIME_SPAN = 90 * 86_400                # sessions start anywhere in 90 days
_SHARED_WORDS = ("new", "classic", "premium", "mini", "deluxe", "pro", "eco", "vintage")
_WORDS_PER_CATEGORY = 6


@dataclass
class MultiBehaviourConfig:
    num_users: int = 500
    num_items: int = 300                          # items that may get events
    num_sessions: int = 2_000
    views_per_session: tuple[int, int] = (1, 8)   # inclusive range
    num_categories: int = 8
    brands_per_category: int = 3
    num_locations: int = 20
    p_in_category: float = 0.8
    p_click: float = 0.4
    p_cart: float = 0.4
    p_purchase: float = 0.5
    p_query: float = 0.5
    cold_items: int = 0                           # catalogue items WITHOUT events (cold-start)
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.views_per_session
        if not 1 <= lo <= hi:
            raise ValueError(f"views_per_session must be 1 <= lo <= hi, got {self.views_per_session}")
        if not 1 <= self.num_categories <= self.num_items:
            raise ValueError("need 1 <= num_categories <= num_items")
        for name in ("p_in_category", "p_click", "p_cart", "p_purchase", "p_query"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if min(self.num_users, self.num_sessions, self.brands_per_category, self.num_locations) < 1 \
                or self.cold_items < 0:
            raise ValueError("counts must be >= 1 (cold_items >= 0)")


def category_words(c: int) -> list[str]:
    """The planted vocabulary of category c (its titles, descriptions and queries use it)."""
    return [f"c{c}w{k}" for k in range(_WORDS_PER_CATEGORY)]


def _catalogue(cfg: MultiBehaviourConfig, rng: np.random.Generator) -> pl.DataFrame:
    n = cfg.num_items + cfg.cold_items
    j = np.arange(n)
    cat = j % cfg.num_categories
    brand = cat * cfg.brands_per_category + rng.integers(0, cfg.brands_per_category, n)
    w = rng.integers(0, _WORDS_PER_CATEGORY, (n, 4))
    shared = rng.integers(0, len(_SHARED_WORDS), n)
    df = pl.DataFrame({"j": j, "cat": cat, "brand": brand, "w0": w[:, 0], "w1": w[:, 1], "w2": w[:, 2],
                       "w3": w[:, 3], "shared": np.asarray(_SHARED_WORDS)[shared],
                       "price": np.round(rng.lognormal(3.0, 0.8, n), 2)})
    word = lambda k: pl.format("c{}w{}", "cat", f"w{k}")  # noqa: E731
    return df.select(
        pl.format("i{}", "j").alias("item_id"),
        pl.format("{} {} {}", "shared", word(0), word(1)).alias("title"),
        pl.format("a {} {} for every {} fan", word(2), word(3), word(0)).alias("description"),
        pl.format("cat{}", "cat").alias("category"),
        pl.format("brand{}", "brand").alias("brand"),
        pl.col("price").cast(pl.String),
    )


def _views(cfg: MultiBehaviourConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One entry per view: session, user, item, timestamp, dwell, and the session's device/location/query pick."""
    s_user = rng.integers(0, cfg.num_users, cfg.num_sessions)
    fav = np.random.default_rng([cfg.seed, 7]).integers(0, cfg.num_categories, cfg.num_users)   # per user, stable
    lo, hi = cfg.views_per_session
    n_views = rng.integers(lo, hi + 1, cfg.num_sessions)
    session = np.repeat(np.arange(cfg.num_sessions), n_views)
    total = int(n_views.sum())
    first = np.zeros(total, dtype=bool)
    starts = np.concatenate([[0], np.cumsum(n_views)[:-1]])
    first[starts] = True
    user = s_user[session]
    c = fav[user]
    # Items of category c are c, c + C, c + 2C, ... below num_items.
    per_cat = (cfg.num_items - 1 - c) // cfg.num_categories + 1
    in_cat = c + cfg.num_categories * (rng.random(total) * per_cat).astype(np.int64)
    popular = (rng.zipf(1.5, total) - 1) % cfg.num_items
    item = np.where(rng.random(total) < cfg.p_in_category, in_cat, popular)
    # Time: a session starts anywhere in TIME_SPAN; each view is 5 s (room for its funnel rows) + its dwell later.
    dwell = np.round(rng.exponential(40.0, total), 1)
    step = 5 + np.ceil(dwell).astype(np.int64)
    cum = np.cumsum(step)
    before_session = np.repeat(cum[starts] - step[starts], n_views)
    start = BASE_TIMESTAMP + rng.integers(0, TIME_SPAN, cfg.num_sessions)
    ts = start[session] + (cum - before_session)
    query_pick = np.where(rng.random(cfg.num_sessions) < cfg.p_query,
                          rng.integers(0, _WORDS_PER_CATEGORY, cfg.num_sessions), -1)
    return {"session": session, "user": user, "item": item, "ts": ts, "dwell": dwell, "first": first,
            "query_word": np.where(first, query_pick[session], -1), "query_cat": c,
            "device": rng.choice(len(DEVICES), cfg.num_sessions, p=DEVICE_P)[session],
            "location": (user * 7919 + 13) % cfg.num_locations}


def _funnel(cfg: MultiBehaviourConfig, views: dict[str, np.ndarray], rng: np.random.Generator) -> pl.DataFrame:
    total = len(views["item"])
    stage = np.zeros(total, dtype=np.int64)             # the deepest funnel stage each view reaches
    reach = rng.random((total, 3)) < np.array([cfg.p_click, cfg.p_cart, cfg.p_purchase])
    stage += reach[:, 0]
    stage += reach[:, 0] & reach[:, 1]
    stage += reach[:, 0] & reach[:, 1] & reach[:, 2]
    # A view's rows: stage 0 (the view) .. its deepest stage, each 1 s after the previous one.
    rows = np.repeat(np.arange(total), stage + 1)
    depth = np.arange(len(rows)) - np.repeat(np.cumsum(stage + 1) - (stage + 1), stage + 1)
    v = {k: a[rows] for k, a in views.items()}
    return pl.DataFrame({
        "s": v["session"], "u": v["user"], "i": v["item"], "ts": v["ts"] + depth, "depth": depth,
        "dwell": np.where(depth == 0, v["dwell"], np.nan),
        "qw": np.where(depth == 0, v["query_word"], -1), "qc": v["query_cat"],
        "dev": v["device"], "loc": v["location"],
    })


def multi_behaviour_events(cfg: MultiBehaviourConfig, prices: pl.Series | None = None) -> pl.DataFrame:
    """The all-string event table (with `source_row`), in session/time order."""
    rng = np.random.default_rng([cfg.seed, 1])
    raw = _funnel(cfg, _views(cfg, rng), rng)
    if prices is None:
        prices = _catalogue(cfg, np.random.default_rng([cfg.seed, 0]))["price"]
    price = prices.cast(pl.Float64).to_numpy()[raw["i"].to_numpy()]
    raw = raw.with_columns(pl.Series("price", np.where(raw["depth"].to_numpy() >= 2, price, np.nan)))
    text = lambda col: pl.when(pl.col(col).is_not_nan()).then(pl.col(col).cast(pl.String))  # noqa: E731
    return raw.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias(ROW),
        pl.format("u{}", "u").alias("user_id"),
        pl.format("i{}", "i").alias("item_id"),
        pl.col("depth").replace_strict(dict(enumerate(FUNNEL)), return_dtype=pl.String).alias("event_type"),
        pl.col("ts").cast(pl.String).alias("timestamp"),
        pl.col("depth").replace_strict(dict(enumerate(FUNNEL_WEIGHTS)), return_dtype=pl.Float64)
        .cast(pl.String).alias("weight"),
        pl.format("s{}", "s").alias("session_id"),
        pl.when(pl.col("qw") >= 0).then(pl.format("c{}w{} shop", "qc", "qw")).alias("query"),
        text("dwell").alias("dwell"),
        text("price").alias("price"),
        pl.col("dev").replace_strict(dict(enumerate(DEVICES)), return_dtype=pl.String).alias("device"),
        pl.format("loc{}", "loc").alias("location"),
    )


def multi_behaviour_tables(cfg: MultiBehaviourConfig | None = None, **overrides) -> RawTables:
    """RawTables for run_etl (with MULTI_ETL_CONFIG): events, the item catalogue (cold items included), users."""
    if cfg is None:
        cfg = MultiBehaviourConfig(**overrides)
    elif overrides:
        raise TypeError("pass a MultiBehaviourConfig or keyword overrides, not both")
    items = _catalogue(cfg, np.random.default_rng([cfg.seed, 0]))
    events = multi_behaviour_events(cfg, items["price"])
    users = pl.DataFrame({"user_id": [f"u{u}" for u in range(cfg.num_users)],
                          "region": [f"region{u % 4}" for u in range(cfg.num_users)]})
    with_row = lambda df: df.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))  # noqa: E731
    return RawTables(events=events.lazy(), items=with_row(items).lazy(), users=with_row(users).lazy(),
                     item_entity_columns=["category", "brand"], user_entity_columns=["region"],
                     sources={"events": f"synthetic_multi(seed={cfg.seed})", "items": "synthetic_multi",
                              "users": "synthetic_multi"})
