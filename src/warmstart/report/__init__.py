"""`warmstart report RUN [RUN...] --out DIR`: plots, stability-gap numbers and compute saved, as PNG + MD + HTML.

Compute saved is measured against `--baseline` (the run the method replaces), marginal and total, like with like
only: the definitions and the rules are in `warmstart.report.saved`.

Inputs are run directories (and, when present, AutoScale mixture directories and grow directories). Outputs in
DIR: one PNG per figure, report.md, report.html (self-contained: the PNGs embedded) and summary.json (the same
table values as the pages).
"""

from __future__ import annotations

from pathlib import Path

from warmstart import atomic
from warmstart.errors import UserError
from warmstart.eval.gap import gap_table, not_finite_line
from warmstart.report import page, plots
from warmstart.report.data import Run, classify, final_value, gaps, quantity_changes
from warmstart.report.saved import check_upstream_values, compute_saved, eval_differences, start_kind

__all__ = ["make_report"]


def _find_baseline(runs: list[Run], baseline: str | Path | None) -> Run:
    if baseline is None:
        return runs[0]
    want = Path(baseline).resolve()
    for r in runs:
        if r.path.resolve() == want or r.name == str(baseline):
            return r
    raise UserError(f"--baseline: {baseline} is not one of the runs given")


def _runs_table(runs: list[Run]) -> dict:
    domains: dict[str, None] = {}
    tasks: dict[str, None] = {}
    for r in runs:
        domains.update(dict.fromkeys(r.domains()))
        for m in r.evals:
            tasks.update(dict.fromkeys(k for k in m if k.startswith("task/")))
    loss_keys = [f"val/{d}/loss" for d in domains] + ["val/avg/loss"]
    cols = ["run", "start", "params", "steps", "tokens", "FLOPs", "packing", "val windows", "seq_len",
            "val targets (final eval)", *(f"final {k}" for k in loss_keys)]
    cols += [f"final {k}" for k in tasks]
    formats = ["str", "str", "int", "int", "int", "sci", "str", "str", "int", "str",
               *(["loss"] * len(loss_keys)), *(["frac"] * len(tasks))]
    rows = []
    for r in runs:
        kind, src = start_kind(r)
        params = r.summary.get("params")
        rows.append(
            [
                r.name,
                kind if src is None else f"{kind} from {src}",
                int(params) if isinstance(params, (int, float)) else None,
                int(r.evals[-1]["step"]),
                r.tokens,
                r.flops,
                *packing_of(r),
                ((r.config or {}).get("data") or {}).get("seq_len"),
                _targets(r),
                *(final_value(r, k) for k in loss_keys),
                *(final_value(r, k) for k in tasks),
            ]
        )
    return {"title": "Runs", "columns": cols, "formats": formats, "rows": rows}


def _targets(run: Run) -> str | None:
    """'a 2,048, b 1,024': the targets each domain's final evaluation scored."""
    got = [(d, final_value(run, f"val/{d}/tokens")) for d in run.domains()]
    return ", ".join(f"{d} {int(n):,}" for d, n in got if n is not None) or None


def not_the_same_quantity(runs: list[Run], metric: str, ref: Run) -> str | None:
    """One line when the runs' validation numbers, which the report puts side by side (curves, finals, gap
    table), are not the same quantity on the same targets as `ref`'s; None when they all are."""
    bad = []
    for r in runs:
        if r is ref:
            continue
        problems = [p for p in eval_differences(r, ref, metric)[0] if not p.startswith("no ")]
        if problems:
            bad.append(f"{r.name}: {'; '.join(problems)}")
    if not bad:
        return None
    return (f"NOT THE SAME QUANTITY: these runs' validation losses are measured differently from {ref.name}'s, so "
            "the curves, finals and stability-gap numbers side by side do not compare (" + " | ".join(bad)
            + "); evaluate them alike (`warmstart eval RUN --seq-len/--max-tokens/--windows`) to compare")


def packing_of(run: Run) -> tuple[str | None, str | None]:
    """(how training packed its windows, which windows its evaluations scored) from the run's config.yaml; a run
    made before `data.packing` existed read the plain stream."""
    if not run.config:
        return None, None
    data, ev = run.config.get("data") or {}, run.config.get("eval") or {}
    windows = ev.get("windows") or "packed"
    packing = data.get("packing", "stream")
    return packing, windows if windows == "documents" else f"packed ({packing})"


def _saved_table(runs: list[Run], saved: dict[str, dict], metric: str, base: Run) -> dict:
    cols = [
        "run",
        "compared as",
        "tokens to target",
        "tokens saved (marginal)",
        "FLOPs to target",
        "FLOPs saved (marginal)",
        "upstream tokens",
        "upstream FLOPs",
        "tokens saved (total)",
        "FLOPs saved (total)",
    ]
    formats = ["str", "str", "int", "saved", "sci", "saved", "int", "sci", "saved", "saved"]
    rows = []
    for r in runs:
        s = saved[r.name]
        if not s["comparable"]:
            gone = f"not comparable: {s['not_comparable']}"
            rows.append([r.name, s["compared_as"], gone, gone, gone, gone,
                         s["upstream_tokens"], s["upstream_flops"], gone, gone])
            continue
        nr = None if s["reached"] else "not reached"
        rows.append(
            [
                r.name,
                s["compared_as"],
                nr or s["tokens_to_target"],
                nr or s["tokens_saved"],
                nr or s["flops_to_target"],
                nr or s["flops_saved"],
                s["upstream_tokens"],
                s["upstream_flops"],
                nr or s["total_tokens_saved"],
                nr or s["total_flops_saved"],
            ]
        )
    return {
        "title": f"Compute saved against {base.name}",
        "columns": cols,
        "formats": formats,
        "rows": rows,
        "note": f"target = the baseline's final {metric}; 'to target' = first reaching it, linear between "
        "eval points; saved = 1 - (run's need / the baseline's own need), shown as the multiple ('none: Nx the "
        "baseline') once the run needs more than twice the baseline's compute. Marginal: each run's own tokens and "
        "FLOPs. Total: plus the compute of the checkpoint it started from (upstream; empty = unknown), for the "
        "run and for the baseline alike. Rules (what is not comparable): warmstart/report/saved.py.",
    }


RUN_FILES = ("config.yaml", "metrics.jsonl", "grow_summary.json", "mixture.json", "inherited.json", "manifest.json",
             "config.json")


def check_report_out(out: str | Path, paths: list[str | Path]) -> Path:
    """Where a report may write: a new or empty directory, or an earlier report (it holds report.html) that is
    not a run, grow, data or checkpoint directory; never one of the reported directories (its summary.json would
    be replaced). A new folder inside a run is fine. Raises UserError naming --out; nothing is written."""
    out = Path(out)
    try:
        target = out.resolve()
        same = [raw for raw in paths if target == Path(raw).resolve()]
    except (OSError, RuntimeError) as e:  # a symlink loop: Path.resolve raises RuntimeError on Python 3.11
        raise UserError(f"--out: {out}: cannot be resolved ({e}); choose another directory") from None
    if same:
        raise UserError(f"--out: {out} is the reported directory {same[0]}; its summary.json would be replaced; "
                        "write the report to a new directory")
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out: {out} is a symbolic link to nothing ({out.readlink()}); choose another directory")
    if out.is_dir() and any(out.iterdir()):
        own = [f for f in RUN_FILES if (out / f).exists()]
        if own or not (out / "report.html").is_file():
            what = f"it holds {own[0]}" if own else "it is not empty and holds no earlier report (report.html)"
            raise UserError(f"--out: {out}: {what}; a report would overwrite its files; choose a new directory")
    return out


def make_report(
    paths: list[str | Path],
    out: str | Path,
    baseline: str | Path | None = None,
    metric: str = "val/avg/loss",
    gap_window: int = 1,
    upstream_tokens: dict[str, float] | None = None,
    upstream_flops: dict[str, float] | None = None,
    extra_tables: dict[str, dict] | None = None,
    lead_tables: dict[str, dict] | None = None,
    title: str = "warmstart report",
) -> dict:
    """Write the report for `paths` into `out`; returns summary.json's content (plus the written paths).

    `baseline`: the run the others replace; without it there is no compute-saved table (a guessed baseline, such
    as the first run, would compare a lone run with itself). `upstream_tokens` / `upstream_flops`: the compute
    of the checkpoint a run started from, by run name/path or init.from value, where the report cannot read it
    (compute saved: `warmstart.report.saved`). `extra_tables`: tables the caller computed (`warmstart.tables`
    layout; the quickstart's Inheritune and AutoScale results), shown after the report's own, by key;
    `lead_tables` the same, shown before them (a job's decision table opens its report); `title` heads the pages."""
    if not paths:
        raise UserError("report: give at least one run directory")
    out = check_report_out(out, paths)
    check_upstream_values(upstream_tokens, upstream_flops)  # with or without a baseline that would use them
    runs, mixes, grows, notes = classify(paths)
    tables: dict[str, dict] = {}
    summary: dict = {"metric": metric, "runs": [], "notes": notes}
    gap: dict[str, dict[str, dict]] = {}
    if runs:
        saved: dict[str, dict] = {}
        gap = {r.name: gaps(r, gap_window) for r in runs}
        notes.extend(line for r in runs for dom, g in gap[r.name].items()
                     if (line := not_finite_line(r.name, f"val/{dom}/loss", g)))
        tables["runs"] = _runs_table(runs)
        base = None if baseline is None else _find_baseline(runs, baseline)
        if base is None:
            notes.append("no baseline given: no compute-saved table (give --baseline RUN, the run the others replace)")
            if upstream_tokens or upstream_flops:
                notes.append("--upstream-tokens/--upstream-flops not used: they count only in the compute-saved table")
        else:
            saved = compute_saved(runs, base, metric, upstream_tokens, upstream_flops)
            if saved[base.name]["tokens_to_target"] == 0:  # run / 0: every marginal fraction is undefined
                notes.append(f"the baseline {base.name} is at its own final {metric} "
                             f"{saved[base.name]['target']:.4f} from its first evaluation (0 tokens: it never "
                             "improved on its start), so no marginal fraction of its compute is defined (—)")
            tables["saved"] = _saved_table(runs, saved, metric, base)
            summary.update({"baseline": base.name, "target": saved[base.name]["target"]})
        tables["gap"] = gap_table(gap)
        differ = not_the_same_quantity(runs, metric, base or runs[0])
        changed = [line for r in runs if (line := quantity_changes(r))]
        if changed:  # one run's curve joined across an evaluation that changed: not one quantity either
            differ = " ".join(filter(None, [differ, "NOT THE SAME QUANTITY WITHIN A RUN: the evaluation changed "
                                            "mid-run, so the curve before and after the change does not compare ("
                                            + " | ".join(changed) + ")"]))
        if differ:  # at the top of the pages and first on the terminal
            summary["not_the_same_quantity"] = differ
        summary["runs"] = [
            {
                "name": r.name,
                "path": str(r.path),
                "steps": int(r.evals[-1]["step"]),
                "tokens": r.tokens,
                "flops": r.flops,
                "params": r.summary.get("params"),
                "final": {k: v for k, v in r.evals[-1].items() if k.startswith(("val/", "task/"))},
                "compute_saved": saved.get(r.name),
                "gap": gap[r.name],
            }
            for r in runs
        ]
    else:
        notes.append("no run directories given: no loss curves, gap or compute-saved tables")
    if mixes:
        summary["mixtures"] = mixes
    if grows:
        summary["grow"] = grows
    for key, table in (extra_tables or {}).items():
        if key in tables:
            raise ValueError(f"extra_tables: {key!r} is one of the report's own tables")
        tables[key] = table
    for key in lead_tables or {}:
        if key in tables:
            raise ValueError(f"lead_tables: {key!r} is one of the report's own tables")
    tables = {**(lead_tables or {}), **tables}

    out.mkdir(parents=True, exist_ok=True)  # only once every number is computed: a refused report writes nothing
    images = [
        plots.val_loss(runs, out, "tokens"),
        plots.val_loss(runs, out, "flops"),
        plots.line_per_run(runs, out, "lr", "learning-rate schedule", "lr_schedule.png"),
        plots.line_per_run(runs, out, "train/loss", "training loss", "train_loss.png"),
        plots.gap_windows(runs, gap, out),
        plots.mixture_weights(mixes, out),
        plots.grow_rounds(grows, out),
    ]
    images = [p for p in images if p is not None]
    summary["tables"] = tables
    summary["images"] = [p.name for p in images]

    intro = [f"runs: {', '.join(r.name for r in runs) or 'none'}"]
    if "baseline" in summary:
        intro.append(f"baseline: {summary['baseline']} (final {metric} {summary['target']:.4f})")
    if summary.get("not_the_same_quantity"):
        intro.append(f"**{summary['not_the_same_quantity']}**")
    atomic.write_text(out / "report.md", page.markdown_page(title, intro, tables, images, notes))
    atomic.write_text(out / "report.html", page.html_page(title, intro, tables, images, notes))
    atomic.write_json(out / "summary.json", summary)
    return {**summary, "html": str(out / "report.html"), "markdown": str(out / "report.md")}

