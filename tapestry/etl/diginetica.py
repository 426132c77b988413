"""DIGINETICA item views -> SR-GNN's session split (train / test sessions, every prefix -> next item).

Reproduces `datasets/preprocess.py` of CRIPAC-DIG/SR-GNN (the reference for SR-GNN, NARM and STAMP numbers) for
`train-item-views.csv` and its shipped sample `sample_train-item-views.csv`, so that P@20 / MRR@20 computed on
our split mean what the paper's mean. The steps, in the reference's order:

1. Read `session_id;user_id;item_id;timeframe;eventdate`. A session's DATE is the `eventdate` of its last row
   in file order; its clicks are ordered by `timeframe` (stable: equal timeframes keep file order).
2. Drop sessions of length 1.
3. Count item occurrences over the remaining sessions, ONCE; drop items seen fewer than 5 times from every session,
   then drop sessions left with fewer than 2 clicks. (The counts are not recomputed after that drop, as in the
   reference: an item may end with fewer than 5 occurrences.)
4. split date = latest session date - 7 days. Sessions dated strictly BEFORE it are train, strictly AFTER it test;
   sessions ON the split date are in neither (the reference compares with < and >). With `--dataset=sample` the
   reference takes this same 7-day branch (only YOOCHOOSE uses 1 day).
5. Sessions are sorted by date (stable: ties keep the order in which sessions first appear in the file). Train
   items are numbered 1, 2, ... in order of first appearance in that sorted train list (0 = padding). Test clicks
   on items unseen in train are removed; test sessions left with fewer than 2 clicks are dropped.
6. Every session of n clicks gives n - 1 (prefix, next item) examples, longest prefix first.

One deliberate difference: the reference turns dates into seconds with `time.mktime`, i.e. the machine's local
time zone; we use calendar days, which is what the reference computes on any machine without a daylight-saving
change inside the last 7 days of the data (none for DIGINETICA, whose data ends 2016-06-01).

Output: plain numpy / Python structures (`SessionSplit`), nothing written to disk; the training side consumes
sessions as item-index arrays, exactly like a user's history.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.config import datasets_dir

SAMPLE_DIR = "diginetica-srgnn-sample"
SAMPLE_FILE = "sample_train-item-views.csv"
COLUMNS = ("session_id", "user_id", "item_id", "timeframe", "eventdate")
MIN_ITEM_COUNT = 5
TEST_DAYS = 7


@dataclass
class SessionSplit:
    """SR-GNN's split. Item indices are 1..num_items-1 (0 = padding); `item_ids[idx]` is the raw DIGINETICA id."""
    num_items: int                         # table size, padding row 0 included
    item_ids: list[str]                    # [num_items]; item_ids[0] = "" (padding)
    train_sessions: list[np.ndarray]       # date order
    test_sessions: list[np.ndarray]
    train_dates: np.ndarray                # datetime64[D], one per session
    test_dates: np.ndarray
    split_date: np.datetime64
    train_prefixes: list[np.ndarray]       # every prefix of every train session (longest first per session)
    train_targets: np.ndarray              # the click that followed it
    test_prefixes: list[np.ndarray]
    test_targets: np.ndarray
    counts: dict = field(default_factory=dict)


def sample_path() -> Path:
    """The SR-GNN sample in the first datasets root that has it ($TAPESTRY_DATASETS, ../shared/datasets, the fetch
    cache); where none has it, where it would be under the first root."""
    from tapestry.etl.datasets import find

    folder = find("diginetica-sample")
    return (folder or datasets_dir() / SAMPLE_DIR) / SAMPLE_FILE


def _read(path: Path) -> pl.DataFrame:
    df = pl.read_csv(path, separator=";", infer_schema=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {';'.join(COLUMNS)}")
    # strict casts: the reference would crash on a malformed row too; better a clear error than a silent drop.
    return df.with_row_index("row").with_columns(
        pl.col("timeframe").cast(pl.Int64, strict=True),
        pl.col("eventdate").str.to_date("%Y-%m-%d", strict=True),
    )


def session_prefixes(sessions: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Every session of n clicks -> n - 1 (prefix, next click) pairs, longest prefix first (the reference order)."""
    prefixes, targets = [], []
    for seq in sessions:
        for cut in range(len(seq) - 1, 0, -1):
            prefixes.append(seq[:cut])
            targets.append(seq[cut])
    return prefixes, np.asarray(targets, dtype=np.int64)


def load_diginetica(path: str | Path | None = None, min_item_count: int = MIN_ITEM_COUNT,
                    test_days: int = TEST_DAYS) -> SessionSplit:
    """SR-GNN's preprocessing of a DIGINETICA item-views file (default: the shipped sample under datasets_dir())."""
    path = Path(path) if path is not None else sample_path()
    if not path.exists():
        raise FileNotFoundError(f"DIGINETICA item views not found at {path} (set TAPESTRY_DATASETS; "
                                "`tapestry datasets fetch diginetica-sample` downloads SR-GNN's sample)")
    df = _read(path)
    # One row per session in order of first appearance: its date (last row in file order) and its clicks by
    # timeframe, ties by file row (= Python's stable sort in the reference).
    grouped = (df.group_by("session_id", maintain_order=True)
               .agg(pl.col("eventdate").sort_by("row").last().alias("date"),
                    pl.col("item_id").sort_by(["timeframe", "row"]).alias("items")))
    dates = grouped["date"].to_numpy().astype("datetime64[D]")
    sessions = grouped["items"].to_list()
    counts = {"clicks": df.height, "sessions": len(sessions)}

    keep = [i for i, s in enumerate(sessions) if len(s) > 1]
    counts["sessions_len_ge_2"] = len(keep)
    item_count = Counter(item for i in keep for item in sessions[i])
    filtered: list[tuple[int, list[str]]] = []
    for i in keep:
        items = [x for x in sessions[i] if item_count[x] >= min_item_count]
        if len(items) >= 2:
            filtered.append((i, items))
    counts["sessions_after_item_filter"] = len(filtered)

    if not filtered:
        raise ValueError(f"{path}: no session survives the filters")
    split_date = max(dates[i] for i, _ in filtered) - np.timedelta64(test_days, "D")
    # sorted() is stable: equal dates keep first-appearance order, as the reference's dict order does.
    train = sorted(((dates[i], items) for i, items in filtered if dates[i] < split_date), key=lambda t: t[0])
    test = sorted(((dates[i], items) for i, items in filtered if dates[i] > split_date), key=lambda t: t[0])
    counts["sessions_on_split_date_dropped"] = len(filtered) - len(train) - len(test)

    index: dict[str, int] = {}
    train_sessions = []
    for _, items in train:
        train_sessions.append(np.array([index.setdefault(x, len(index) + 1) for x in items], dtype=np.int64))
    test_sessions, test_dates = [], []
    for date, items in test:
        seq = [index[x] for x in items if x in index]
        if len(seq) >= 2:
            test_sessions.append(np.array(seq, dtype=np.int64))
            test_dates.append(date)

    train_prefixes, train_targets = session_prefixes(train_sessions)
    test_prefixes, test_targets = session_prefixes(test_sessions)
    item_ids = [""] * (len(index) + 1)
    for raw, idx in index.items():
        item_ids[idx] = raw
    counts.update(items=len(index), train_sessions=len(train_sessions), test_sessions=len(test_sessions),
                  train_prefixes=len(train_prefixes), test_prefixes=len(test_prefixes),
                  train_clicks=int(sum(len(s) for s in train_sessions)),
                  test_clicks=int(sum(len(s) for s in test_sessions)))
    return SessionSplit(
        num_items=len(index) + 1, item_ids=item_ids, train_sessions=train_sessions, test_sessions=test_sessions,
        train_dates=np.array([d for d, _ in train], dtype="datetime64[D]"),
        test_dates=np.array(test_dates, dtype="datetime64[D]"), split_date=split_date,
        train_prefixes=train_prefixes, train_targets=train_targets, test_prefixes=test_prefixes,
        test_targets=test_targets, counts=counts)
