"""A/B experiments, the parts that need no server: the traffic split, the exposure log, and the report's maths.

Split: a user's bucket is a stable hash of (experiment id, user id): the first 8 bytes of BLAKE2b, modulo
``BUCKETS`` (10 000, so a percentage has two decimals). Arms own consecutive bucket ranges in the order given, sized
by their percentages (which sum to 100). The same user gets the same arm in every process and every run of the same
experiment (never Python's ``hash()``: it is salted per process); another experiment id reshuffles users.

Exposure log: every recommendation the router answers (tapestry.serving.router) is one JSON line
``{"ts", "experiment", "arm", "user", "items"}`` appended to ``<root>/<tenant>/experiments/<id>/exposures.jsonl``
with ONE ``write`` on an ``O_APPEND`` descriptor, so lines of concurrent writers never interleave.

Report: an exposed user of an arm is a *hit* when one of their events (the outcome events, e.g. those given to
`tapestry ingest`) falls within ``window`` seconds after one of their exposures and is on an item that exposure
recommended. The unit is the user (the split is by user, so users are independent; exposures of one user are
not). Per arm: users, exposures, hits, hit rate with its 95 % Wilson interval; per treatment arm: the lift over the
control arm, (p_t - p_c) / p_c, with a 95 % interval from the log risk ratio (Katz), and the absolute difference
with its Newcombe (Wilson-score) interval.
"""
from __future__ import annotations

import bisect
import csv
import hashlib
import json
import math
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable

BUCKETS = 10_000
Z95 = 1.959963984540054
ARM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
EXPOSURES = "exposures.jsonl"


# --- the split ----------------------------------------------------------------------------------------------------

def bucket(experiment: str, user_id: str) -> int:
    """The user's bucket in [0, BUCKETS): stable across processes, machines and Python versions."""
    digest = hashlib.blake2b(f"{experiment}\x1f{user_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class Split:
    """Arms (names, in order) and their percentages (summing to 100, each > 0, at most two decimals)."""
    experiment: str
    arms: tuple[str, ...]
    percents: tuple[float, ...]
    bounds: tuple[int, ...] = field(init=False)   # cumulative bucket upper bounds, one per arm

    def __post_init__(self):
        if len(self.arms) < 2 or len(self.arms) != len(self.percents):
            raise ValueError(f"an experiment needs two or more arms, each with a percentage: {self.arms}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arm names must differ: {self.arms}")
        for arm in self.arms:
            if not ARM_NAME.match(arm):
                raise ValueError(f"arm name {arm!r}: lowercase letters, digits and _, starting with a letter")
        units = [round(float(p) * BUCKETS / 100) for p in self.percents]
        if any(u <= 0 for u in units) or sum(units) != BUCKETS:
            raise ValueError(f"arm percentages must be > 0 and sum to 100, not {list(self.percents)}")
        bounds, total = [], 0
        for u in units:
            total += u
            bounds.append(total)
        object.__setattr__(self, "bounds", tuple(bounds))

    def arm(self, user_id: str) -> str:
        return self.arms[bisect.bisect_right(self.bounds, bucket(self.experiment, user_id))]

    def as_dict(self) -> dict:
        return {"experiment": self.experiment, "arms": list(self.arms), "percents": list(self.percents)}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(d["experiment"], tuple(d["arms"]), tuple(float(p) for p in d["percents"]))


# --- the exposure log ---------------------------------------------------------------------------------------------

def experiments_dir(tenant_dir: Path) -> Path:
    return Path(tenant_dir) / "experiments"


class ExposureLog:
    """Appends one JSON line per recommendation; one ``write`` per line on an O_APPEND descriptor (atomic with
    respect to other appenders on a local file system)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def write(self, experiment: str, arm: str, user: str, items: list[str], ts: float | None = None) -> None:
        line = json.dumps({"ts": round(time.time() if ts is None else ts, 6), "experiment": experiment, "arm": arm,
                           "user": user, "items": list(items)}, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_exposures(path: Path) -> list[dict]:
    """Every complete line of an exposure log (a torn last line, from a writer killed mid-write, is skipped)."""
    out = []
    try:
        with open(path, "rb") as f:
            for raw in f:
                if raw.endswith(b"\n"):
                    try:
                        out.append(json.loads(raw))
                    except ValueError:
                        continue
    except FileNotFoundError:
        pass
    return out


# --- outcome events -----------------------------------------------------------------------------------------------

def parse_timestamp(value: str) -> float:
    """Epoch seconds (an integer or a float), or an ISO-8601 date-time (UTC when it names no zone)."""
    value = str(value).strip()
    try:
        return float(value)
    except ValueError:
        pass
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        from datetime import timezone

        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def read_events(path: Path, limit: int | None = None) -> list[tuple[str, str, float]]:
    """(user_id, item_id, timestamp) of a CSV event file in `tapestry ingest`'s format (header: user_id, item_id,
    event_type, timestamp, ...), its first ``limit`` bytes only when given (what ingest committed). Rows that do not
    parse are skipped (ingest quarantined them)."""
    data = Path(path).read_bytes()
    if limit is not None:
        data = data[:limit]
    rows = csv.DictReader(data.decode("utf-8", "replace").splitlines())
    out = []
    for row in rows:
        try:
            out.append((str(row["user_id"]), str(row["item_id"]), parse_timestamp(row["timestamp"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


# --- the report ---------------------------------------------------------------------------------------------------

def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion; (0, 1) with no observation."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(h1: int, n1: int, h0: int, n0: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's interval (method 10) of the difference p1 - p0, from each proportion's Wilson interval."""
    p1, p0 = (h1 / n1 if n1 else 0.0), (h0 / n0 if n0 else 0.0)
    l1, u1 = wilson(h1, n1, z)
    l0, u0 = wilson(h0, n0, z)
    d = p1 - p0
    return d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)


def relative_lift(h1: int, n1: int, h0: int, n0: int,
                  z: float = Z95) -> tuple[float | None, float | None, float | None]:
    """(lift, low, high) of p1 / p0 - 1, the interval from the log risk ratio (Katz); with a zero count, 0.5 is
    added to every cell first (Haldane). None where the control's rate is 0 (no lift is defined)."""
    if not n1 or not n0 or not h0:
        return None, None, None
    lift = (h1 / n1) / (h0 / n0) - 1
    a, b = (h1, h0) if h1 and h0 and h1 < n1 and h0 < n0 else (h1 + 0.5, h0 + 0.5)
    m1, m0 = (n1, n0) if (a, b) == (h1, h0) else (n1 + 1, n0 + 1)
    log_rr = math.log((a / m1) / (b / m0))
    se = math.sqrt(1 / a - 1 / m1 + 1 / b - 1 / m0)
    return lift, math.exp(log_rr - z * se) - 1, math.exp(log_rr + z * se) - 1


@dataclass
class ArmReport:
    arm: str
    users: int
    exposures: int
    hits: int
    rate: float
    low: float
    high: float
    lift: float | None = None
    lift_low: float | None = None
    lift_high: float | None = None
    diff_low: float | None = None
    diff_high: float | None = None


def report(exposures: Iterable[dict], events: Iterable[tuple[str, str, float]], window: float,
           arms: list[str] | None = None, control: str | None = None) -> list[ArmReport]:
    """Per arm (``arms``' order, else first seen), see the module docstring; ``control``: default the first arm."""
    by_user_events: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for user, item, ts in events:
        by_user_events[user].append((ts, item))
    for evs in by_user_events.values():
        evs.sort()
    users: dict[str, dict[str, bool]] = defaultdict(dict)   # arm -> user -> hit
    counts: dict[str, int] = defaultdict(int)
    order = list(arms or [])
    for e in exposures:
        arm, user = e["arm"], str(e["user"])
        if arm not in order:
            order.append(arm)
        counts[arm] += 1
        hit = users[arm].get(user, False)
        if not hit:
            items, t0 = set(e.get("items") or []), float(e["ts"])
            evs = by_user_events.get(user, [])
            i = bisect.bisect_right(evs, (t0, "\U0010ffff"))   # the first event strictly after the exposure
            while i < len(evs) and evs[i][0] <= t0 + window:
                if evs[i][1] in items:
                    hit = True
                    break
                i += 1
        users[arm][user] = hit
    out = []
    for arm in order:
        n, h = len(users[arm]), sum(users[arm].values())
        low, high = wilson(h, n)
        out.append(ArmReport(arm, n, counts[arm], h, h / n if n else 0.0, low, high))
    if out:
        base = next((r for r in out if r.arm == (control or out[0].arm)), out[0])
        for r in out:
            if r is not base:
                r.lift, r.lift_low, r.lift_high = relative_lift(r.hits, r.users, base.hits, base.users)
                if r.users and base.users:
                    r.diff_low, r.diff_high = newcombe(r.hits, r.users, base.hits, base.users)
    return out


def format_report(rows: list[ArmReport], window: float, control: str) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:+.1f}%"

    lines = [f"{'arm':<14}{'users':>8}{'exposures':>11}{'hits':>7}  {'hit rate [95% CI]':<26}lift vs {control} "
             "[95% CI]", ]
    for r in rows:
        rate = f"{100 * r.rate:.2f}% [{100 * r.low:.2f}, {100 * r.high:.2f}]"
        lift = ("(control)" if r.arm == control else
                f"{pct(r.lift)} [{pct(r.lift_low)}, {pct(r.lift_high)}]")
        lines.append(f"{r.arm:<14}{r.users:>8}{r.exposures:>11}{r.hits:>7}  {rate:<26}{lift}")
    lines.append(f"hit: an event of the user on a recommended item within {window:g}s after the recommendation; "
                 "unit: the user")
    return "\n".join(lines)


def parse_window(text: str) -> float:
    """`3600`, `90s`, `30m`, `2h`, `7d` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not m:
        raise ValueError(f"window {text!r}: a number of seconds, or with a unit s, m, h or d (e.g. 24h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
