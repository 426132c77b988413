"""`tapestry monitor --tenant T`: is what is served still what was trained and checked? Pure functions over the
tenant's versioned artifacts (no server needed; the live per-request series are on Triton's metrics port,
tapestry.serving.metrics).

- drift between the two latest exports: for the items both serve (matched by external id), the cosine between
  an item's two vectors after an orthogonal Procrustes alignment (two trainings give vector spaces that differ by a
  rotation even when nothing changed: raw cosines would report that as drift), the overlap of each item's 10
  nearest neighbours in each export (rotation-free), and the popularity shift (Spearman rank correlation and the
  overlap of the 100 most popular items);
- ANN recall@k of the latest export's FAISS index (with its tuned search parameters) against exact inner-product
  search. The server keeps no log of served queries, so the queries are recent users' query vectors: sampled
  known users' stored histories through the served user encoder, exactly as a request computes them;
- training/serving skew: for sampled users, the history window and user attributes the served feature_lookup
  stage reads from the online store (Redis when the export or $TAPESTRY_REDIS_URL names one, else the exported
  table) against the same user's events in the ETL tables the models were trained on. Served events newer than the
  ETL (ingested since) are counted apart: they are expected, not skew;
- quarantine rates: the latest ETL's (quarantined / input rows, by reason) and ingest's
  (<tenant>/ingest/quarantine.jsonl by reason, over the lines of the source files it names);
- live: when a `tapestry serve` runs for the tenant (or at --metrics-url), its per-tenant series on Triton's metrics
  port summed since the server started (rows by strategy, per stage errors, empty results, candidates per row, mean
  latency; arm counts).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.artifacts import _versions, latest_version, stage_dir, tenant_dir
from tapestry.config import validate_tenant

NEIGHBOURS = 10
TOP_POPULAR = 100


def _item_table(artifacts: Path) -> tuple[np.ndarray, list[str]]:
    """(the served item vectors [n+1, D], row 0 padding; item ids by index)."""
    from tapestry.inference.encoders import load_encoder

    manifest = json.loads((artifacts / "manifest.json").read_text())
    encoder = load_encoder(artifacts / manifest.get("user_encoder", "sasrec.pt"))
    vectors = encoder.item_embeddings().detach().cpu().float().numpy()
    items = pl.read_parquet(artifacts / "items.parquet", columns=["item_idx", "item_id"])
    ids = [""] * vectors.shape[0]
    for idx, iid in items.iter_rows():
        if idx < len(ids):
            ids[idx] = iid
    return vectors, ids


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    sims = _unit(vectors) @ _unit(vectors).T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def vector_drift(old: np.ndarray, new: np.ndarray, k: int = NEIGHBOURS) -> dict:
    """Shared items' vectors (rows aligned) in two exports: cosine before / after Procrustes, neighbour overlap."""
    raw = float(np.mean(np.sum(_unit(old) * _unit(new), axis=1)))
    if old.shape[1] == new.shape[1]:
        u, _, vt = np.linalg.svd(old.T @ new)       # the rotation R minimising |old R - new|
        aligned = float(np.mean(np.sum(_unit(old @ (u @ vt)) * _unit(new), axis=1)))
    else:
        aligned = None
    k = min(k, old.shape[0] - 1)
    overlap = None
    if k >= 1:
        a, b = _neighbours(old, k), _neighbours(new, k)
        overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
    return {"mean_cosine_raw": raw, "mean_cosine_aligned": aligned,
            "mean_cosine_shift_aligned": None if aligned is None else 1.0 - aligned,
            f"neighbour_overlap_at_{k}": overlap}


def popularity_drift(old: np.ndarray, new: np.ndarray, top: int = TOP_POPULAR) -> dict:
    """Shared items' popularity (rows aligned) in two exports."""
    top = min(top, old.size)
    a = set(np.argsort(-old, kind="stable")[:top]) if top else set()
    b = set(np.argsort(-new, kind="stable")[:top]) if top else set()
    return {"spearman": _spearman(old, new), f"top_{top}_overlap": len(a & b) / top if top else None}


def export_drift(tenant: str, root: Path | None = None) -> dict:
    """Drift between the tenant's two newest exports (None values when it has only one)."""
    versions = _versions(stage_dir(tenant, "export", root))
    if len(versions) < 2:
        return {"exports": [f"v{v:04d}" for v in versions], "note": "one export only: nothing to compare"}
    old_dir, new_dir = (stage_dir(tenant, "export", root) / f"v{v:04d}" / "artifacts" for v in versions[-2:])
    (old_vec, old_ids), (new_vec, new_ids) = _item_table(old_dir), _item_table(new_dir)
    old_at = {iid: i for i, iid in enumerate(old_ids) if i > 0 and iid}
    pairs = [(old_at[iid], j) for j, iid in enumerate(new_ids) if j > 0 and iid in old_at]
    out = {"exports": [f"v{v:04d}" for v in versions[-2:]], "items_old": len(old_at),
           "items_new": sum(1 for i in new_ids[1:] if i), "items_shared": len(pairs)}
    if len(pairs) < 2:
        return {**out, "note": "fewer than 2 shared items"}
    oi, ni = (np.array(x) for x in zip(*pairs))
    out["vectors"] = vector_drift(old_vec[oi], new_vec[ni])
    old_pop, new_pop = np.load(old_dir / "popularity.npy"), np.load(new_dir / "popularity.npy")
    out["popularity"] = popularity_drift(old_pop[oi], new_pop[ni])
    return out


def _sample_users(artifacts: Path, n: int, seed: int) -> list[str]:
    users = pl.read_parquet(artifacts / "users.parquet", columns=["user_id"])["user_id"].to_list()
    rng = np.random.default_rng(seed)
    return [users[i] for i in sorted(rng.choice(len(users), min(n, len(users)), replace=False))] if users else []


def ann_recall(artifacts: Path, users: list[str], k: int = 10) -> dict:
    """Recall@k of the export's index vs exact search, on the sampled users' query vectors."""
    from tapestry.serving.ann import exact_topk, load_index, recall_at_k
    from tapestry.serving.feature_lookup import FeatureLookup
    from tapestry.serving.pipeline import request_tensors
    from tapestry.serving.user_encoder import UserEncoder

    manifest = json.loads((artifacts / "manifest.json").read_text())
    lookup, encoder = FeatureLookup.from_artifacts(artifacts), UserEncoder.from_artifacts(artifacts)
    rows = [request_tensors(manifest["tenant"], u, 1) for u in users]
    feats = [r for r in lookup.batch(rows) if isinstance(r, dict)]
    for f in feats:
        f["TENANT"] = rows[0]["TENANT"]
    embs = [r["USER_EMB"] for r in encoder.batch(feats) if isinstance(r, dict)]
    queries = np.concatenate([e[np.any(e != 0, axis=1)] for e in embs]) if embs else np.zeros((0, 1), np.float32)
    if queries.shape[0] == 0:
        return {"queries": 0, "note": "no sampled user has a history to encode"}
    index = load_index(artifacts / "items.faiss")
    k = min(k, index.ntotal)
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    exact = exact_topk(encoder.model.item_embeddings().detach().cpu().float().numpy(), queries, k)
    return {"queries": int(queries.shape[0]), "k": k, "recall": recall_at_k(found, exact),
            "index": manifest.get("index", {}), "query_source": "sampled known users' stored histories"}


def serving_skew(artifacts: Path, users: list[str]) -> dict:
    """The served feature_lookup's history window and attributes vs the ETL tables, for the sampled users."""
    from tapestry.serving.feature_lookup import FeatureLookup
    from tapestry.serving.pipeline import request_tensors

    manifest = json.loads((artifacts / "manifest.json").read_text())
    etl_dir, max_len = Path(manifest["etl_version"]), int(manifest["max_len"])
    lookup = FeatureLookup.from_artifacts(artifacts)
    served = lookup.batch([request_tensors(manifest["tenant"], u, 1) for u in users])
    user_map = pl.read_parquet(etl_dir / "user_map.parquet")
    idx_of = dict(zip(user_map["user_id"].to_list(), user_map["user_idx"].to_list()))
    events = pl.read_parquet(etl_dir / "events.parquet", columns=["user_idx", "item_idx", "timestamp"])
    events = events.with_row_index("_order").filter(pl.col("user_idx").is_in([idx_of.get(u, -1) for u in users]))
    offline = {r[0]: r[1] for r in events.group_by("user_idx").agg(
        pl.col("item_idx").sort_by("timestamp", "_order")).iter_rows()}
    attrs = {r[0]: sorted(r[1] or []) for r in pl.read_parquet(
        artifacts / "users.parquet", columns=["user_id", "attrs"]).iter_rows()}
    same = newer = unknown = attr_same = failed = 0
    for user, out in zip(users, served):
        if not isinstance(out, dict):
            failed += 1
            continue
        history = [int(i) for i in np.asarray(out["HISTORY"]) if i > 0]
        if int(out["USER_KIND"][0]) != 1:   # USER_KNOWN: the store has the user
            unknown += 1
            continue
        trained = list(offline.get(idx_of.get(user, -1), []))
        # The served window ends with events ingested since the ETL: strip those before comparing.
        extra, served_window = 0, history
        while history and trained[-len(history):] != history:
            history, extra = history[:-1], extra + 1
        if served_window and not history:   # nothing in common: the whole window differs, none of it "newer"
            extra = 0
        # The same window: the served events (less the newer ones) are the offline history's last ones, all of
        # them up to the window's length (a store missing older events is skew too).
        same += int(len(history) == min(len(trained), max_len - extra) and (bool(history) or not trained))
        newer += extra
        attr_same += int(sorted(np.flatnonzero(np.asarray(out["USER_ATTRS"]) > 0).tolist()) == attrs.get(user, []))
    known = len(users) - unknown - failed
    return {"users": len(users), "known_to_store": known, "unknown_to_store": unknown, "failed": failed,
            "history_matches_offline": same / known if known else None,
            "events_newer_than_etl_per_user": newer / known if known else None,
            "attrs_match_export": attr_same / known if known else None,
            "store": manifest.get("online_store", {}).get("kind", "embedded")}


def quarantine_rates(tenant: str, root: Path | None = None) -> dict:
    """The latest ETL's quarantine rate and reasons, and ingest's."""
    out: dict = {}
    try:
        etl = json.loads((latest_version(tenant, "etl", root) / "manifest.json").read_text())
        c = etl["counts"]
        out["etl"] = {"version": etl.get("version"), "input_rows": c["input_rows"],
                      "quarantined_rows": c["quarantined_rows"],
                      "rate": c["quarantined_rows"] / c["input_rows"] if c["input_rows"] else None,
                      "by_reason": c.get("by_reason", {})}
    except FileNotFoundError:
        out["etl"] = None
    path = tenant_dir(tenant, root) / "ingest" / "quarantine.jsonl"
    reasons: dict[str, int] = {}
    sources: set[str] = set()
    if path.exists():
        from tapestry.online.jsonl import read_jsonl

        for _, record in read_jsonl(path):
            reasons[record.get("reason", "?")] = reasons.get(record.get("reason", "?"), 0) + 1
            if record.get("source"):
                sources.add(record["source"])
    lines = 0
    for source in sources:   # the data lines of each source file as it is now (header excluded)
        p = Path(source)
        if p.is_file():
            with open(p, "rb") as f:
                lines += max(sum(1 for _ in f) - 1, 0)
    total = sum(reasons.values())
    out["ingest"] = {"quarantined_lines": total, "by_reason": reasons, "source_lines": lines or None,
                     "rate": total / lines if lines else None}
    return out


def live_metrics(metrics_url: str, tenant: str) -> dict:
    """The tenant's series on a running Triton's metrics port (tapestry.serving.metrics), summed since it started:
    answered rows by strategy, per stage rows / errors / empty results / candidates per row / mean latency, ignored
    recent items, and rows per experiment arm."""
    import urllib.request

    from tapestry.serving.metrics import parse_prometheus

    url = metrics_url if "://" in metrics_url else f"http://{metrics_url}"
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=10) as response:
        page = parse_prometheus(response.read().decode())
    mine = [(name, dict(labels), v) for (name, labels), v in page.items()
            if name.startswith("tapestry_") and dict(labels).get("tenant") == tenant]

    def total(name: str, key: str) -> dict:
        out: dict = {}
        for n, labels, v in mine:
            if n == name:
                out[labels[key]] = out.get(labels[key], 0.0) + v
        return out

    rows, candidates = total("tapestry_stage_rows_total", "stage"), total("tapestry_stage_candidates_total", "stage")
    latency_sum = total("tapestry_stage_latency_seconds_sum", "stage")
    calls = total("tapestry_stage_latency_seconds_count", "stage")
    errors, empty = total("tapestry_stage_errors_total", "stage"), total("tapestry_empty_results_total", "stage")
    stages = {stage: {"rows": rows.get(stage, 0.0), "errors": errors.get(stage, 0.0), "empty": empty.get(stage, 0.0),
                      "candidates_per_row": candidates[stage] / rows[stage] if rows.get(stage) and stage in candidates
                      else None,
                      "mean_latency_ms": 1e3 * latency_sum[stage] / calls[stage] if calls.get(stage) else None}
              for stage in sorted(set(rows) | set(errors) | set(calls))}
    arms = {f"{labels['experiment']}/{labels['arm']}": v for n, labels, v in mine if n == "tapestry_arm_requests_total"}
    return {"metrics_url": metrics_url, "requests_by_strategy": total("tapestry_requests_total", "strategy"),
            "ignored_recent_items": sum(total("tapestry_ignored_recent_items_total", "tenant").values()),
            "stages": stages, "arms": arms}


def _live(tenant: str, root: Path | None, metrics_url: str | None) -> dict:
    if metrics_url is None:
        from tapestry.serving.status import live_state

        state = live_state(tenant, root)
        metrics_url = (state or {}).get("metrics_url")
        if not metrics_url:
            return {"note": "no running `tapestry serve` for the tenant (or pass --metrics-url)"}
    return live_metrics(metrics_url, tenant)


def monitor(tenant: str, root: Path | None = None, sample: int = 200, k: int = 10, seed: int = 0,
            metrics_url: str | None = None) -> dict:
    """Every check for the tenant's latest export, and its live series when a server for it runs (or at
    `metrics_url`); a check that cannot run says why instead of failing the rest."""
    validate_tenant(tenant)
    export = latest_version(tenant, "export", root)
    artifacts = export / "artifacts"
    users = _sample_users(artifacts, sample, seed)
    report = {"tenant": tenant, "export": export.name, "sampled_users": len(users)}
    checks = {"drift": lambda: export_drift(tenant, root), "ann_recall": lambda: ann_recall(artifacts, users, k),
              "skew": lambda: serving_skew(artifacts, users), "quarantine": lambda: quarantine_rates(tenant, root),
              "live": lambda: _live(tenant, root, metrics_url)}
    for name, check in checks.items():
        try:
            report[name] = check()
        except Exception as e:  # noqa: BLE001 - one broken input must not hide the other checks
            report[name] = {"error": f"{type(e).__name__}: {e}"}
    return report


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def format_text(report: dict) -> str:
    lines = [f"tenant {report['tenant']}  export {report['export']}  sampled users {report['sampled_users']}"]
    for section in ("drift", "ann_recall", "skew", "quarantine", "live"):
        lines.append(f"\n{section}")
        for key, value in _flat(report.get(section) or {}):
            lines.append(f"  {key:<42} {_fmt(value)}")
    return "\n".join(lines)


def _flat(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value if not isinstance(value, (list, dict)) else json.dumps(value)


def monitor_section(tenant: str, root: Path | None = None, sample: int = 100) -> str:
    """The `tapestry report` page's Monitoring section (HTML), from `monitor`."""
    import html

    try:
        report = monitor(tenant, root, sample=sample)
    except FileNotFoundError as e:
        return f"<h2>Monitoring</h2><p class=empty>{html.escape(str(e))}</p>"
    out = [f"<h2>Monitoring</h2><p class=meta>export {html.escape(report['export'])}, "
           f"{report['sampled_users']} sampled users (`tapestry monitor --tenant {html.escape(tenant)}`; live "
           "per-request series: Triton's metrics port)</p>"]
    for section in ("drift", "ann_recall", "skew", "quarantine", "live"):
        rows = "".join(f"<tr><td class=l>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in _flat(report.get(section) or {}))
        out.append(f"<h3>{section.replace('_', ' ')}</h3><table>{rows}</table>")
    return "".join(out)
