"""`tapestry report --tenant T`: one self-contained HTML page (PNGs inlined as data URIs, no external files).

Sections: data (ETL counts, quarantine reasons), metrics per model and slice (the tenant's ablation table and its
plot), training loss curves, the committed multi-seed leaderboards (benchmarks/results/leaderboard-*.json), optional
benchmark ablation tables (`benchmarks/results/ablation*.json`), serving latency histograms when a latency benchmark
ran for the tenant, and monitoring (drift, ANN recall, skew, quarantine: tapestry.reporting.monitor). Everything
comes from versioned artifacts, so a report can be rebuilt later and says which ETL / models versions it describes.
"""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

import polars as pl

from tapestry.artifacts import atomic_write_text, latest_version, stage_dir
from tapestry.config import PROJECT_ROOT, validate_tenant
from tapestry.reporting.ablation import ablation_png, ablation_rows
from tapestry.reporting.monitor import monitor_section
from tapestry.reporting.plots import latency_histograms_png, loss_curves_png

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em;margin-bottom:0} h2{border-bottom:2px solid #4C72B0;padding-bottom:3px;margin-top:1.8em}
.meta{color:#666;font-size:.9em} table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:3px 9px;text-align:right} th{background:#eef2f8}
td.l,th.l{text-align:left} img{max-width:100%;border:1px solid #eee} .empty{color:#999}
"""


def _seconds(r: dict) -> str | None:
    return f"{r['fit_s']:.1f}" if r["slice"] == "overall" and r["fit_s"] is not None else None


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    def cell(tag: str, i: int, v) -> str:
        text = f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
        return f'<{tag}{" class=l" if i < left else ""}>{html.escape(text)}</{tag}>'

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _data_section(etl_dir: Path) -> str:
    manifest = json.loads((etl_dir / "manifest.json").read_text())
    c = manifest["counts"]
    counts = [["input event rows", c["input_rows"]], ["valid", c["valid_rows"]],
              ["quarantined (events)", c["quarantined_rows"]],
              ["quarantined (entity tables)", c.get("quarantined_entity_rows", 0)],
              ["train / valid / test", f"{c['train_rows']:,} / {c['valid_rows_split']:,} / {c['test_rows']:,}"],
              ["users / items", f"{manifest['num_users'] - 1:,} / {manifest['num_items'] - 1:,}"],
              ["split", manifest.get("split", "")]]
    out = [f"<h2>Data</h2><p class=meta>ETL {html.escape(str(etl_dir))}, created {manifest.get('created_at', '')}</p>",
           _table(["", "value"], counts)]
    q = etl_dir / "quarantine.parquet"
    qdf = pl.read_parquet(q) if q.exists() else pl.DataFrame()
    if qdf.height:
        by = qdf.group_by("source", "reason").len().sort("len", descending=True)
        out.append("<h3>Quarantine by reason</h3>" + _table(["source", "reason", "rows"], by.rows(), left=2))
    else:
        out.append("<p class=empty>No row was quarantined.</p>")
    return "".join(out)


def _metrics_section(metrics: dict, tenant: str) -> str:
    rows = ablation_rows(metrics, tenant)
    if not rows:
        return "<h2>Metrics</h2><p class=empty>No evaluated model.</p>"
    k = rows[0]["k"]
    table = _table(["model", "slice", "test users", f"Recall@{k}", f"NDCG@{k}", f"valid NDCG@{k}", "fit s"],
                   [[r["model"], r["slice"], r["users"], r["recall"], r["ndcg"], r["valid_ndcg"], _seconds(r)]
                    for r in rows], left=2)
    png = ablation_png(rows)
    return ("<h2>Metrics per model and slice</h2><p class=meta>Test split, full ranking over all items; cold items /"
            " cold users are the test targets with few training interactions / users with short histories.</p>"
            + table + _img(png, "NDCG per model and slice"))


def _loss_section(metrics: dict) -> str:
    histories = {n: m.get("loss_history") or [] for n, m in metrics.items() if isinstance(m, dict)}
    if not any(histories.values()):
        return "<h2>Training loss</h2><p class=empty>No loss history recorded (models trained before it was kept).</p>"
    return "<h2>Training loss</h2>" + _img(loss_curves_png(histories), "training loss per epoch")


def _benchmark_ablation_section(paths: list[Path]) -> str:
    rows = []
    for p in paths:
        report = json.loads(Path(p).read_text())
        rows += ablation_rows(report["metrics"], report["dataset"], report.get("machine", {}).get("device", ""))
    if not rows:
        return ""
    table = _table(["data set", "model", "slice", "users", "Recall@k", "NDCG@k", "valid NDCG@k", "fit s", "device"],
                   [[r["dataset"], r["model"], r["slice"], r["users"], r["recall"], r["ndcg"], r["valid_ndcg"],
                     _seconds(r), r["device"]] for r in rows], left=3)
    png = ablation_png(rows)
    names = ", ".join(html.escape(Path(p).name) for p in paths)
    return f"<h2>Ablation benchmark</h2><p class=meta>{names}</p>" + table + _img(png, "ablation NDCG")


def _leaderboard_section(paths: list[Path]) -> str:
    """The committed multi-seed leaderboards (benchmarks/results/leaderboard-*.json by default)."""
    from tapestry.reporting.leaderboard import leaderboard_png, metric_names

    reports = [json.loads(Path(p).read_text()) for p in paths]
    if not reports:
        return ""
    out = "<h2>Leaderboard (multi-seed)</h2>"
    for r in reports:
        metrics = metric_names(r)
        rows = []
        for name in sorted(r["paths"], key=lambda n: -r["paths"][n][metrics[0]]["mean"]):
            p, test = r["paths"][name], r.get("paired", {}).get(name)
            rows.append([("* " if name == r["served"] else "") + name,
                         *(f"{p[m]['mean']:.4f} ± {p[m]['ci95']:.4f}" for m in metrics),
                         f"{test['relative']:+.1%}" if test and test.get("relative") is not None else "",
                         f"{test['p_value']:.2g}" if test else ""])
        out += (f"<p class=meta>{html.escape(r['dataset'])}: {len(r['seeds'])} seeds, served path "
                f"<b>{html.escape(r['served'])}</b> (chosen on {html.escape(r.get('served_chosen_on', ''))}), "
                f"baseline {html.escape(r['baseline'])}; ± is the 95 % interval across seeds, p the paired "
                f"Wilcoxon test against the baseline</p>"
                + _table(["path", *metrics, f"vs {r['baseline']}", "p"], rows))
    return out + _img(leaderboard_png(reports), "leaderboard")


def _latency_section(path: Path | None) -> str:
    if path is None or not path.exists():
        return ("<h2>Serving latency</h2><p class=empty>No latency benchmark for this tenant "
                "(python benchmarks/serving_latency.py --tenant T).</p>")
    report = json.loads(path.read_text())
    results = report["results"]
    rows = [[name, r["requests"], r["p50_ms"], r["p99_ms"], r.get("p50_ratio_to_in_process")]
            for name, r in results.items()]
    out = (f"<h2>Serving latency</h2><p class=meta>{html.escape(path.name)}, {report.get('created_at', '')}</p>"
           + _table(["path", "requests", "p50 ms", "p99 ms", "p50 / in-process"], rows))
    samples = {name: r.get("samples_ms") or [] for name, r in results.items()}
    if any(samples.values()):
        out += _img(latency_histograms_png(samples), "latency histograms")
    return out


def build_report(tenant: str, root: Path | None = None, ablation: list[Path] | None = None,
                 latency: Path | None = None, leaderboard: list[Path] | None = None) -> str:
    """The HTML text of the report for the tenant's latest models version."""
    validate_tenant(tenant)
    model_dir = latest_version(tenant, "models", root)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    etl_dir = Path((model_dir / "etl_version.txt").read_text().strip())
    if leaderboard is None:
        leaderboard = sorted((PROJECT_ROOT / "benchmarks" / "results").glob("leaderboard-*.json"))
    if latency is None:
        default = PROJECT_ROOT / "benchmarks" / "results" / f"serving_latency-{tenant}.json"
        latency = default if default.exists() else None
    title = f"tapestry report - {tenant}"
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class=meta>models {html.escape(str(model_dir))} - generated "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>",
             _data_section(etl_dir) if etl_dir.is_dir() else f"<p class=empty>ETL {etl_dir} no longer exists.</p>",
             _metrics_section(metrics, tenant), _loss_section(metrics),
             _leaderboard_section(list(leaderboard)), _benchmark_ablation_section(list(ablation or [])),
             _latency_section(latency), monitor_section(tenant, root),
             "</body></html>"]
    return "\n".join(parts)


def write_report(tenant: str, root: Path | None = None, output: Path | None = None, **kwargs) -> Path:
    """Write the report atomically; default `<root>/<tenant>/reports/report-<models version>.html`."""
    text = build_report(tenant, root, **kwargs)
    if output is None:
        output = stage_dir(tenant, "reports", root) / f"report-{latest_version(tenant, 'models', root).name}.html"
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, text)
    return output
