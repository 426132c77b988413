"""Human-facing output: the ablation table/plot and the self-contained HTML report (`tapestry report`)."""
from tapestry.reporting.ablation import ablation_rows, format_ablation_table, plot_ablation
from tapestry.reporting.html import build_report, write_report

__all__ = ["ablation_rows", "format_ablation_table", "plot_ablation", "build_report", "write_report"]
