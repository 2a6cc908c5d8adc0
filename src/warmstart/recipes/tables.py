"""Tables as raw values, and their text and Markdown renderings; the stability-gap table every command shows.

A table is {"title", "columns": [...], "formats": [...], "rows": [[value, ...]], "note"} with raw JSON values
(the report adds its HTML rendering in `warmstart.report.page`). `gap_table` builds the one stability-gap table
from `warmstart.eval.gap.gap_metrics` results: the report, sweep.md, `warmstart gap` and the quickstart all
show its rows.
"""

from __future__ import annotations


def fmt(value, spec: str) -> str:
    """Display text of one cell; `spec` is 'int', 'sci', 'loss', 'frac', 'pct', 'bool' or 'str'."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if spec == "bool":
        return "yes" if value else "no"
    if spec == "int":
        return f"{int(round(value)):,}"
    if spec == "sci":
        return f"{value:.3e}"
    if spec == "loss":
        return f"{value:.4f}"
    if spec == "frac":
        return f"{value:.3f}"
    if spec == "pct":
        return f"{100 * value:+.1f}%"
    return str(value)


def _cells(table: dict) -> list[list[str]]:
    return [[fmt(v, f) for v, f in zip(row, table["formats"], strict=True)] for row in table["rows"]]


def markdown_table(table: dict) -> str:
    cols = table["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for cells in _cells(table):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def text_table(table: dict) -> str:
    """Fixed-width text: the first column left-aligned, the others right-aligned, two spaces apart."""
    rows = [list(table["columns"]), *_cells(table)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


GAP_COLUMNS = [
    "run",
    "domain",
    "start",
    "worst",
    "worst step",
    "worst tokens",
    "depth",
    "recovered",
    "recovered at tokens",
    "final",
    "change",
]
GAP_FORMATS = ["str", "str", "loss", "loss", "int", "int", "loss", "bool", "int", "loss", "loss"]


def _metric_label(key: str) -> str:
    """'val/code/loss' -> 'code' (a domain's validation loss); any other metric key as it is."""
    parts = key.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "val" and parts[2] == "loss" else key


def gap_table(gaps: dict[str, dict[str, dict]]) -> dict:
    """The stability-gap table: one row per (run, metric) of `gaps` = {run label: {metric key or domain:
    `gap_metrics` result}}; start/worst/depth/final/change in the metric's units (a loss), steps and tokens as
    counted by the run's log."""
    rows = []
    for run, metrics in gaps.items():
        for key, g in metrics.items():
            rows.append(
                [
                    run,
                    _metric_label(key),
                    g["start"],
                    g["worst"],
                    g["worst_step"],
                    g["worst_tokens"],
                    g["depth"],
                    g["recovered"],
                    g["recover_tokens"] if g["recovered"] else "never",
                    g["final"],
                    g["change"],
                ]
            )
    return {
        "title": "Stability gap (validation loss per domain)",
        "columns": list(GAP_COLUMNS),
        "formats": list(GAP_FORMATS),
        "rows": rows,
        "note": "start = the first evaluation; worst = highest loss after it; recovered = the "
        "first evaluation after the worst back at or below the start.",
    }
