"""Tables as Markdown and one self-contained HTML page (PNG files embedded as base64 data URIs).

Tables and their text/Markdown cells come from `warmstart.recipes.tables`; this module adds the HTML.

A table is {"columns": [...], "formats": [...], "rows": [[value, ...]]} with raw JSON values; summary.json holds the
same tables, and every HTML cell carries its raw value in `data-value`, so the page can be checked against it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from warmstart import jsonfile
from warmstart.tables import fmt, markdown_table

__all__ = ["fmt", "markdown_table", "html_table", "markdown_page", "html_page"]

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #666; font-size: 0.9em; }
"""


def html_table(table: dict, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table["columns"])
    body = []
    for row in table["rows"]:
        cells = "".join(
            f'<td data-value="{html.escape(jsonfile.dumps(v), quote=True)}">{html.escape(fmt(v, f))}</td>'
            for v, f in zip(row, table["formats"], strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def markdown_page(
    title: str, intro: list[str], tables: dict[str, dict], images: list[Path], notes: list[str]
) -> str:
    parts = [f"# {title}", "", *intro, ""]
    for t in tables.values():
        parts += [f"## {t['title']}", "", markdown_table(t), ""]
        if t.get("note"):
            parts += [f"_{t['note']}_", ""]
    parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def html_page(
    title: str, intro: list[str], tables: dict[str, dict], images: list[Path], notes: list[str]
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(line)}</p>" for line in intro]
    for key, t in tables.items():
        parts.append(f"<h2>{html.escape(t['title'])}</h2>")
        parts.append(html_table(t, key))
        if t.get("note"):
            parts.append(f'<p class="note">{html.escape(t["note"])}</p>')
    parts.append("<h2>Plots</h2>")
    for p in images:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(p.name)}</figcaption></figure>"
        )
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
