"""The ablation table: model x data set x {overall, cold items, cold users}, as rows, text and a PNG.

Shared by `benchmarks/ablation.py` (many data sets) and `tapestry report` (one tenant's metrics.json), so the two
never disagree on what a row means. Metric cut-off k is read off the metrics themselves (@10 leave-one-out, @20
for Gowalla's fixed split).
"""
from __future__ import annotations

from pathlib import Path

SLICES = ("overall", "cold_items", "cold_users")


def ablation_rows(metrics: dict, dataset: str, device: str = "") -> list[dict]:
    """One row per model x slice from a metrics.json dict ({model: {valid, test, slices, fit_seconds}})."""
    rows = []
    for model, m in metrics.items():
        if not isinstance(m, dict) or "test" not in m:
            continue
        k = next(key for key in m["test"] if key.startswith("recall@")).split("@")[1]
        slices = {"overall": m["test"], **m.get("slices", {})}
        valid = m.get("valid", {})
        # A fixed train/test split (Gowalla) has no validation users: no number, rather than a misleading 0.
        valid_ndcg = valid.get(f"ndcg@{k}") if valid.get("num_users", 1) else None
        for name, s in slices.items():
            rows.append({"dataset": dataset, "model": model, "slice": name, "k": int(k),
                         "recall": s[f"recall@{k}"], "ndcg": s[f"ndcg@{k}"], "users": s["num_users"],
                         "valid_ndcg": valid_ndcg if name == "overall" else None,
                         "fit_s": m.get("fit_seconds"), "device": device})
    return rows


def format_ablation_table(rows: list[dict]) -> str:
    lines = [f"{'dataset':<10}{'model':<28}{'slice':<12}{'users':>7}{'R@k':>8}{'N@k':>8}{'valid N@k':>10}"
             f"{'fit s':>8}  device"]
    for r in rows:
        valid = f"{r['valid_ndcg']:.4f}" if r["valid_ndcg"] is not None else ""
        fit = f"{r['fit_s']:.0f}" if r["fit_s"] is not None and r["slice"] == "overall" else ""
        lines.append(f"{r['dataset']:<10}{r['model']:<28}{r['slice']:<12}{r['users']:>7}{r['recall']:>8.4f}"
                     f"{r['ndcg']:>8.4f}{valid:>10}{fit:>8}  {r['device']}")
    return "\n".join(lines)


def ablation_png(rows: list[dict]) -> bytes:
    """One horizontal bar chart of NDCG@k per data set (rows of the figure) and slice (columns), as PNG bytes."""
    from tapestry.reporting.plots import png_bytes, pyplot

    plt = pyplot()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows)) or ["(none)"]
    fig, axes = plt.subplots(len(datasets), len(SLICES), figsize=(4.2 * len(SLICES), 2.8 * len(datasets) + 0.6),
                             squeeze=False)
    for i, ds in enumerate(datasets):
        for j, sl in enumerate(SLICES):
            ax = axes[i][j]
            part = [r for r in rows if r["dataset"] == ds and r["slice"] == sl]
            ax.barh([r["model"] for r in part], [r["ndcg"] for r in part], color="#4C72B0")
            ax.invert_yaxis()
            ax.tick_params(labelsize=7)
            k = part[0]["k"] if part else 10
            n = part[0]["users"] if part else 0
            ax.set_title(f"{ds} - {sl} (n={n}) - NDCG@{k}", fontsize=9)
            if not n:
                # An empty slice is a fact about the data (e.g. no cold test items), not a zero score.
                ax.text(0.5, 0.5, "empty slice", ha="center", va="center", transform=ax.transAxes, color="grey")
    return png_bytes(fig, dpi=110)


def plot_ablation(rows: list[dict], path: Path) -> Path:
    """The same chart written to a PNG file (the benchmark's ablation.png)."""
    Path(path).write_bytes(ablation_png(rows))
    return Path(path)
