"""Per-tenant Prometheus metrics from the serving stages, on Triton's own metrics port (GET /metrics).

Inside Triton the python backend's custom-metrics API (`pb_utils.MetricFamily`, in the bundled 2.51 backend: counters,
gauges and histograms) registers the families below in the server's registry, next to Triton's per-model counters;
Prometheus scrapes them from the metrics port (loopback-only by default: it has no access control, docs/auth.md).
Outside Triton (the in-process pipeline, unit tests) the same calls go to `NullRegistry` (nothing) or
`MemoryRegistry` (a dict, for tests). `TAPESTRY_METRICS=0` in the server's environment switches them off (the
overhead benchmark compares both in one run: benchmarks/metrics_overhead.py).

Every series carries the tenant: the stage's own export tenant, never a value from the request, so one tenant's
requests can only move that tenant's series.

Cost: each metric update from a stub is one round trip to the server process through shared memory; the five
stages sending theirs inside `execute` cost ~0.5 ms per request (benchmarks/metrics_overhead.py). So a stage folds a
whole `execute` call (a dynamic batch) into local totals, and a background thread of the stub sends them every
FLUSH_INTERVAL_S (DeferredRegistry): the request pays ~34 us for the five stages. A scrape lags by at most that
interval.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np

METRICS_ENV = "TAPESTRY_METRICS"
COUNTER, HISTOGRAM = "counter", "histogram"
# Seconds; a stage takes 0.1-5 ms on 2 CPU cores at batch 1, and a cold or overloaded one up to seconds.
# How often a stub sends its folded updates to the server (DeferredRegistry).
FLUSH_INTERVAL_S = 0.5
LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]


@dataclass(frozen=True)
class Family:
    kind: str
    labels: tuple[str, ...]
    description: str


FAMILIES: dict[str, Family] = {
    "tapestry_requests_total": Family(
        COUNTER, ("tenant", "strategy"), "Answered recommendation rows by STRATEGY (rerank stage)"),
    "tapestry_ignored_recent_items_total": Family(
        COUNTER, ("tenant",), "RECENT_ITEM_IDS the export's catalogue does not know (feature_lookup)"),
    "tapestry_stage_rows_total": Family(
        COUNTER, ("tenant", "stage"), "Rows (one user each) a stage answered"),
    "tapestry_stage_candidates_total": Family(
        COUNTER, ("tenant", "stage"), "Items a stage passed on (retrieval, filter) or returned (rerank)"),
    "tapestry_empty_results_total": Family(
        COUNTER, ("tenant", "stage"), "Rows for which a stage had no item left to pass on"),
    "tapestry_stage_errors_total": Family(
        COUNTER, ("tenant", "stage"), "Rows a stage refused (bad request, wrong key) or failed"),
    "tapestry_stage_latency_seconds": Family(
        HISTOGRAM, ("tenant", "stage"), "Time of one stage call over a dynamic batch (one request at batch 1)"),
    "tapestry_arm_requests_total": Family(
        COUNTER, ("tenant", "experiment", "arm"), "Rows an A/B experiment's router sent to each arm"),
}

# The output whose length is a stage's candidate count; a filter answer of just the padding id 0 means "none left".
CANDIDATE_OUTPUTS = {"retrieval": "CANDIDATES", "filter": "FILTERED", "rerank": "ITEM_IDS"}


def enabled() -> bool:
    return os.environ.get(METRICS_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


class NullRegistry:
    """Metrics off, or not inside Triton: every update is dropped."""

    def add(self, family: str, labels: tuple[str, ...], value: float) -> None:
        pass

    def observe(self, family: str, labels: tuple[str, ...], value: float) -> None:
        pass


class MemoryRegistry:
    """Updates kept in dicts (in-process runs and tests): counters[(family, labels)] and observations[...]."""

    def __init__(self):
        self.counters: dict[tuple[str, tuple[str, ...]], float] = {}
        self.observations: dict[tuple[str, tuple[str, ...]], list[float]] = {}

    def add(self, family: str, labels: tuple[str, ...], value: float) -> None:
        _check(family, labels, COUNTER)
        self.counters[(family, labels)] = self.counters.get((family, labels), 0.0) + value

    def observe(self, family: str, labels: tuple[str, ...], value: float) -> None:
        _check(family, labels, HISTOGRAM)
        self.observations.setdefault((family, labels), []).append(value)


class TritonRegistry:
    """The python backend's custom metrics. A family is registered on first use and each label set's metric is
    created once and kept (creating one is a round trip too). Every stub process registers the same families with
    the same description, which Triton merges into one family."""

    def __init__(self, pb_utils):
        self.pb = pb_utils
        self._families: dict[str, object] = {}
        self._metrics: dict[tuple[str, tuple[str, ...]], object] = {}

    def _metric(self, family: str, labels: tuple[str, ...]):
        key = (family, labels)
        metric = self._metrics.get(key)
        if metric is None:
            spec = FAMILIES[family]
            fam = self._families.get(family)
            if fam is None:
                kind = self.pb.MetricFamily.COUNTER if spec.kind == COUNTER else self.pb.MetricFamily.HISTOGRAM
                fam = self._families[family] = self.pb.MetricFamily(name=family, description=spec.description,
                                                                    kind=kind)
            named = dict(zip(spec.labels, labels))
            metric = fam.Metric(labels=named, buckets=LATENCY_BUCKETS) if spec.kind == HISTOGRAM else \
                fam.Metric(labels=named)
            self._metrics[key] = metric
        return metric

    def add(self, family: str, labels: tuple[str, ...], value: float) -> None:
        _check(family, labels, COUNTER)
        self._metric(family, labels).increment(float(value))

    def observe(self, family: str, labels: tuple[str, ...], value: float) -> None:
        _check(family, labels, HISTOGRAM)
        self._metric(family, labels).observe(float(value))


class DeferredRegistry:
    """Keeps a request's updates off its path: `add` / `observe` only fold into local totals (microseconds), and a
    background thread of the stub sends them to `target` every `interval` seconds (and at `close`). Counter deltas
    are summed per label set first, so a busy stage sends one update per series and interval, not one per batch.
    A scrape can lag the requests by up to `interval`; Prometheus scrapes every 15 s anyway."""

    def __init__(self, target, interval: float = FLUSH_INTERVAL_S):
        import threading

        self.target, self.interval = target, interval
        self._counts: dict[tuple[str, tuple[str, ...]], float] = {}
        self._observed: list[tuple[str, tuple[str, ...], float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tapestry-metrics", daemon=True)
        self._thread.start()

    def add(self, family: str, labels: tuple[str, ...], value: float) -> None:
        _check(family, labels, COUNTER)
        with self._lock:
            self._counts[(family, labels)] = self._counts.get((family, labels), 0.0) + value

    def observe(self, family: str, labels: tuple[str, ...], value: float) -> None:
        _check(family, labels, HISTOGRAM)
        with self._lock:
            self._observed.append((family, labels, value))

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            observed, self._observed = self._observed, []
        for (family, labels), value in counts.items():
            self.target.add(family, labels, value)
        for family, labels, value in observed:
            self.target.observe(family, labels, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001 - never kill the stub; say so once and stop sending
                print(f"[metrics] sending stopped: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                return

    def close(self) -> None:
        """Stop the thread and send what is left (the model is being unloaded)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


def _check(family: str, labels: tuple[str, ...], kind: str) -> None:
    spec = FAMILIES.get(family)
    if spec is None or spec.kind != kind or len(labels) != len(spec.labels):
        raise ValueError(f"no {kind} {family} with labels {labels}")


def registry_for_triton(pb_utils):
    """What a model inside Triton records into: the server's registry, or nothing when TAPESTRY_METRICS=0 or the
    backend has no custom-metrics API."""
    if not enabled() or not hasattr(pb_utils, "MetricFamily"):
        return NullRegistry()
    return DeferredRegistry(TritonRegistry(pb_utils))


def _text(x) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x)


class StageMetrics:
    """What one stage's answers say, per `execute` call: rows, errors, latency, and the stage's own counts
    (ignored recent items, candidates, empty results, strategies), read from the answers it already computed."""

    def __init__(self, stage: str, tenant: str, registry=None):
        self.stage, self.tenant = stage, tenant
        self.registry = registry if registry is not None else NullRegistry()
        self._off = isinstance(self.registry, NullRegistry)

    def close(self) -> None:
        """Send what is still pending (the model is being unloaded)."""
        close = getattr(self.registry, "close", None)
        if close is not None:
            close()

    def record(self, results: list, seconds: float, refused: int = 0) -> None:
        """`results`: the stage's per-row answers (dicts, or the row's exception); `refused`: rows of requests that
        never reached the stage (a missing tensor, a wrong key)."""
        if self._off:
            return
        try:
            self._record(results, seconds, refused)
        except Exception as e:  # noqa: BLE001 - metrics never fail a request: report once, then stop recording
            self._off = True
            print(f"[metrics] {self.stage} tenant={self.tenant}: recording stopped: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)

    def _record(self, results: list, seconds: float, refused: int) -> None:
        reg, tenant, stage = self.registry, self.tenant, self.stage
        answered = [r for r in results if isinstance(r, dict)]
        errors = len(results) - len(answered) + refused
        if results:
            reg.observe("tapestry_stage_latency_seconds", (tenant, stage), seconds)
        if answered:
            reg.add("tapestry_stage_rows_total", (tenant, stage), len(answered))
        if errors:
            reg.add("tapestry_stage_errors_total", (tenant, stage), errors)
        output = CANDIDATE_OUTPUTS.get(stage)
        if output is not None and answered:
            sizes = [_candidates(stage, r[output]) for r in answered]
            if sum(sizes):
                reg.add("tapestry_stage_candidates_total", (tenant, stage), sum(sizes))
            empty = sizes.count(0)
            if empty:
                reg.add("tapestry_empty_results_total", (tenant, stage), empty)
        if stage == "feature_lookup" and answered:
            ignored = int(sum(int(np.asarray(r["IGNORED_ITEMS"]).reshape(-1)[0]) for r in answered))
            if ignored:
                reg.add("tapestry_ignored_recent_items_total", (tenant,), ignored)
        if stage == "rerank" and answered:
            strategies = Counter(_text(np.asarray(r["STRATEGY"]).reshape(-1)[0]) for r in answered)
            for strategy, n in strategies.items():
                reg.add("tapestry_requests_total", (tenant, strategy), n)


def _candidates(stage: str, values) -> int:
    values = np.asarray(values).reshape(-1)
    if stage == "filter" and values.size == 1 and values[0] == 0:   # the filter's "nothing left" placeholder
        return 0
    return int(values.size)


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """A /metrics page's samples: {(name, frozenset(label items)): value} (comments skipped). Enough for the tests,
    `tapestry monitor` and the benchmark; label values here never hold a quote or a comma."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = frozenset(tuple(kv.split("=", 1)) for kv in rest.rstrip("}").split(",") if "=" in kv)
        labels = frozenset((k, v.strip('"')) for k, v in labels)
        try:
            out[(name, labels)] = float(value)
        except ValueError:
            continue
    return out
