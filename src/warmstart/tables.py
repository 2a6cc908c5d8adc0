"""Tables as raw values, and their text and Markdown renderings.

A table is {"title", "columns": [...], "formats": [...], "rows": [[value, ...]], "note"} with raw JSON values, so
the numbers a report's JSON holds are the ones its pages show (the report adds its HTML rendering in
`warmstart.report.page`; the stability-gap table is built by `warmstart.eval.gap.gap_table`).
"""

from __future__ import annotations


def fmt(value, spec: str) -> str:
    """Display text of one cell; `spec` is 'int', 'sci', 'loss', 'frac', 'pct', 'saved', 'bool' or 'str'.

    'saved' is a compute-saved fraction (1 - run / baseline): a percentage while the run needs at most twice the
    baseline's compute, and beyond that the multiple itself ("none: 1.6e+08x the baseline"), which a percentage
    such as -16276041566.7% hides (a total that charges a checkpoint's whole pre-training)."""
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
    if spec == "saved":
        return f"{100 * value:+.1f}%" if value >= -1 else f"none: {1 - value:.3g}x the baseline"
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
