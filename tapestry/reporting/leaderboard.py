"""The multi-seed leaderboard: statistics across seeds, paired tests against the baseline path, a table and a plot.

Shared by `benchmarks/leaderboard.py` (which trains the line-ups) and `tapestry report --leaderboard` (which shows the
committed JSON files), so the two never disagree on what a number means.

- Across seeds: the mean and a 95 % Student-t interval of each metric (with 3 seeds the interval is wide: t = 4.30).
- Paired test of a path against the baseline: per user, the metric averaged over seeds; the Wilcoxon signed-rank
  test of those per-user differences (two-sided), and a paired-bootstrap 95 % interval of the mean difference.
"""
from __future__ import annotations

import math

import numpy as np


def across_seeds(values: list[float]) -> dict:
    """{"mean", "ci95" (half-width of the t-interval; 0 with one seed), "per_seed"}."""
    v = np.asarray(values, dtype=np.float64)
    half = 0.0
    if len(v) > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": round(float(v.mean()), 6), "ci95": round(half, 6), "per_seed": [round(float(x), 6) for x in v]}


def paired_test(path: np.ndarray, baseline: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Per-user metric arrays of the same users (already averaged over seeds) -> p-value and effect size."""
    from scipy import stats

    path, baseline = np.asarray(path, np.float64), np.asarray(baseline, np.float64)
    if path.shape != baseline.shape:
        raise ValueError(f"paired arrays differ in shape: {path.shape} vs {baseline.shape}")
    diff = path - baseline
    if not np.any(diff):
        p = 1.0
    else:
        p = float(stats.wilcoxon(path, baseline, zero_method="wilcox", alternative="two-sided").pvalue)
    rng = np.random.default_rng(seed)
    boots = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(n_boot)])
    base = float(baseline.mean())
    return {"p_value": p, "mean_diff": round(float(diff.mean()), 6),
            "ci95_diff": [round(float(np.quantile(boots, 0.025)), 6), round(float(np.quantile(boots, 0.975)), 6)],
            "relative": round(float(diff.mean()) / base, 4) if base else None, "users": int(len(diff))}


def metric_names(report: dict) -> list[str]:
    first = next(iter(report["paths"].values()))
    return [m for m in first if "@" in m]


def leaderboard_markdown(report: dict) -> str:
    """One markdown table: path, each metric's mean ± ci95 over seeds, vs baseline (relative, p)."""
    metrics = metric_names(report)
    primary = metrics[0] if metrics else ""
    head = ["path", *metrics, f"vs {report['baseline']} ({primary})", "p", "fit s"]
    lines = [f"**{report['dataset']}**, {len(report['seeds'])} seeds {report['seeds']}; served path: "
             f"`{report['served']}`, baseline: `{report['baseline']}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(report["paths"], key=lambda n: -report["paths"][n][primary]["mean"]) if primary else []
    for name in order:
        p = report["paths"][name]
        test = report.get("paired", {}).get(name)
        rel = f"{test['relative']:+.1%}" if test and test.get("relative") is not None else ""
        pval = f"{test['p_value']:.2g}" if test else ""
        label = f"**{name}**" if name == report["served"] else name
        if p.get("seeds") and p["seeds"] != report["seeds"]:     # e.g. a peer run on some seeds only
            label += f" (seeds {p['seeds']})"
        lines.append("| " + " | ".join([label, *(f"{p[m]['mean']:.4f} ± {p[m]['ci95']:.4f}" for m in metrics), rel,
                                         pval, f"{p.get('fit_seconds', {}).get('mean', 0):.0f}"]) + " |")
    return "\n".join(lines)


def leaderboard_png(reports: list[dict]) -> bytes:
    """Mean and 95 % interval of the primary metric per path, one panel per data set."""
    from tapestry.reporting.plots import png_bytes, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, max(len(reports), 1), figsize=(5.2 * max(len(reports), 1), 3.6), squeeze=False)
    for ax, r in zip(axes[0], reports):
        primary = metric_names(r)[0]
        names = sorted(r["paths"], key=lambda n: r["paths"][n][primary]["mean"])
        means = [r["paths"][n][primary]["mean"] for n in names]
        errs = [r["paths"][n][primary]["ci95"] for n in names]
        colors = ["#C44E52" if n == r["served"] else "#8C8C8C" if n == r["baseline"] else "#4C72B0" for n in names]
        ax.barh(names, means, xerr=errs, color=colors, capsize=3)
        ax.tick_params(labelsize=7)
        ax.set_title(f"{r['dataset']}: {primary} ({len(r['seeds'])} seeds, 95 % CI)", fontsize=9)
    return png_bytes(fig, dpi=110)
