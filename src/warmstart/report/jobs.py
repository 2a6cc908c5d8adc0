"""A job's report and its terminal summary (`warmstart adapt` / `derive`, recipes/jobs): the decision first (every
candidate, what was chosen and why, the FLOPs spent deciding; derive's block search), then what the run did (the
stability gap, before/after per domain, compute), from the job's files only (decision.json, shift.json, the run's
summary), so a re-run writes the same report."""

from __future__ import annotations

from pathlib import Path

from warmstart.recipes.jobs.common import JobResult
from warmstart.tables import fmt


def decision_table(dec: dict, old: bool) -> dict:
    cols = ["candidate", "max LR", *(["replay"] if old else []), "steps probed", "new-text loss",
            *(["old-text loss change"] if old else []), "probe FLOPs", "outcome"]
    formats = ["str", "sci", *(["pct"] if old else []), "int", "loss", *(["loss"] if old else []), "sci", "str"]
    rows = []
    for c in dec["candidates"]:
        last = str(max(int(k) for k in c["new_loss"]))
        rows.append([c["name"], c["lr"], *([c["replay"]] if old else []), c["steps"], c["new_loss"][last],
                     *([c["forgetting"][last]] if old else []), c["train_flops"] + c["eval_flops"], c["status"]])
    note = (f"rule: {dec['rule']} Chosen: {dec['chosen']} ({dec['why']}). Horizon correction: {dec['correction']} "
            f"FLOPs spent deciding: {dec['deciding_flops']:.3e} ({fmt(dec['deciding_share'], 'frac')} of the run's "
            f"training FLOPs; format probe {dec['format_flops']:.2e}, before-training losses "
            f"{dec['shift_flops']:.2e}, probes {dec['probe_flops']:.2e}{_search(dec)}), charged to the run from "
            "step 0.")
    return {"title": "Decision", "columns": cols, "formats": formats, "rows": rows, "note": note}


def _search(dec: dict) -> str:
    return f", block search {dec['search_flops']:.2e}" if dec.get("search_flops") else ""


def before_after_table(before: dict, after: dict, new: list[str], old: list[str], before_label: str) -> dict:
    rows = []
    for kind, names in (("new", new), ("old", old)):
        for n in names:
            b, a = before[n]["loss"], after.get(f"val/{n}/loss")
            rows.append([n, kind, b, a, None if a is None else a - b])
    return {"title": f"Loss per domain: {before_label} and after the run (the same validation windows)",
            "columns": ["domain", "text", before_label, "after", "change"],
            "formats": ["str", "str", "loss", "loss", "loss"], "rows": rows}


def search_table(choice: dict) -> dict:
    """The block search of a derived model (inherited.json `choice`, eval/block_choice.py): every cut evaluated,
    its loss at step 0 on the sample, the tokens it was evaluated on, and what it lost to."""
    seen = choice.get("evaluated", {})
    rows = []
    for cut, loss in (choice.get("step0_loss") or {}).items():
        e = seen.get(cut, {})
        fate = "chosen" if cut == choice.get("chosen") else (
            f"dropped for {e['dropped_for']}" if "dropped_for" in e else "evaluated")
        rows.append([cut, loss, e.get("tokens"), choice.get("candidate_flops", {}).get(cut), fate])
    note = f"rule {choice.get('rule')}: chose {choice.get('chosen')}; search FLOPs {choice.get('search_flops', 0):.3e}"
    if choice.get("note"):
        note += f"; {choice['note']}"
    return {"title": "Block search", "columns": ["cut", "step-0 loss on the sample", "tokens", "FLOPs", "outcome"],
            "formats": ["str", "loss", "int", "sci", "str"], "rows": rows, "note": note}


def compute_table(dec: dict, run_summary: dict, baseline: Path | None = None) -> dict:
    train = run_summary["flops_per_token"] * run_summary["tokens"]
    rows = [["deciding (charged at step 0)", dec["deciding_flops"]], ["training the run", train],
            ["total", run_summary["flops"]]]
    note = (f"compute saved against the baseline {baseline}: the compute-saved table (the run's FLOPs include "
            "everything spent deciding)" if baseline else
            "no baseline run given: compute saved needs one (the job's --baseline RUN)")
    return {"title": "Compute", "columns": ["what", "FLOPs"], "formats": ["str", "sci"], "rows": rows, "note": note}


def write(r: JobResult, baseline: Path | None = None) -> dict:
    """The report of the job's run, beside `baseline` (a run directory it replaces) when given: then the report's
    compute-saved table measures the run, deciding FLOPs included, against it on val/avg/loss."""
    from warmstart.report import make_report

    lead = {"decision": decision_table(r.decision, bool(r.old))}
    if r.search is not None:
        lead["block_search"] = search_table(r.search)
    after = r.run_summary["final_eval"]
    runs = [r.out / "run"] + ([baseline] if baseline else [])
    return make_report(
        runs, r.out / "report", baseline=baseline, title=f"warmstart {r.kind}: {r.out.name}", lead_tables=lead,
        extra_tables={"before_after": before_after_table(r.shift["losses"], after, r.new, r.old, r.before_label),
                      "compute": compute_table(r.decision, r.run_summary, baseline)},
    )


def saved_line(rep: dict, run_dir: Path) -> str | None:
    """One summary line: the run's compute saved against the baseline, marginal (the job's own FLOPs, deciding
    included; None without a baseline). A run the report cannot compare with the baseline says why."""
    if not rep.get("baseline"):
        return None
    run = next(x for x in rep["runs"] if Path(x["path"]).resolve() == Path(run_dir).resolve())
    s = run.get("compute_saved") or {}
    target = f"the baseline {rep['baseline']}'s final {rep['metric']} {rep['target']:.4f}"
    if not s.get("comparable", True):
        return f"compute saved: not comparable with the baseline ({s.get('not_comparable')})"[:300]
    if s.get("flop_fraction") is None:
        return f"compute saved: the run did not reach {target}"

    def share(frac: float, what: str) -> str:
        return f"{1 - frac:.1%} of the {what} saved" if frac <= 1 else f"{frac - 1:.1%} more {what}"

    return (f"compute saved (marginal): {share(s['flop_fraction'], 'FLOPs')} (deciding included), "
            f"{share(s['token_fraction'], 'tokens')} to reach {target}")


def finish(r: JobResult, say=print, baseline: Path | None = None) -> dict:
    """The gap, the report and the terminal summary (recomputed on every call: they read only the job's files);
    returns the report's summary with the summary lines ("lines"). `baseline`: a run directory the job's run
    replaces (compute saved)."""
    from warmstart.eval.gap import run_gap

    gap = run_gap(r.out / "run")
    rep = write(r, baseline)
    lines = summary_lines(r, gap, saved_line(rep, r.out / "run"))
    for line in lines:
        say(line)
    return {**rep, "lines": lines}


def _clip(text: str, n: int) -> str:
    """`text` cut to at most `n` characters at a word boundary, with an ellipsis when cut (the report has it
    whole)."""
    if len(text) <= n:
        return text
    return text[: n - 1].rsplit(" ", 1)[0] + " …"


def summary_lines(r: JobResult, gap: dict, saved: str | None = None) -> list[str]:
    """At most 12 lines: what was decided, what it cost, what the run gave, where the report is."""
    kind, out, dec, shift, run_summary = r.kind, r.out, r.decision, r.shift, r.run_summary
    new, old, bound, before_label = r.new, r.old, r.bound, r.before_label
    after = run_summary["final_eval"]

    def avg(names, src):
        vals = [src(n) for n in names]
        return sum(vals) / len(vals)

    b_new = avg(new, lambda n: shift["losses"][n]["loss"])
    a_new = avg(new, lambda n: after[f"val/{n}/loss"])
    dropped = sum(len(rd["dropped"]) for rd in dec["rounds"])
    halved = sum(len(rd["halved"]) for rd in dec["rounds"])
    setting = f"max LR {dec['max_lr']:g}" + (f", replay {dec['replay']:.0%} of old text" if old else "")
    lines = [
        f"{kind}: {out / 'run' / 'final'}",
        _clip(f"decision: {setting} ({dec['chosen']}); {dec['why']}", 300),
        f"probes: {len(dec['candidates'])} candidates, rungs of {'/'.join(map(str, dec['rungs']))} steps; "
        f"{dropped} dropped by the paired test, {halved} stopped by halving",
        *r.extra,
        f"deciding: {dec['deciding_flops']:.3g} FLOPs = {dec['deciding_share']:.1%} of the run's training FLOPs "
        "(charged from step 0)",
        f"new text ({', '.join(new)}): loss {b_new:.4f} ({before_label}) -> {a_new:.4f}",
    ]
    if old:
        b_old = avg(old, lambda n: shift["losses"][n]["loss"])
        a_old = avg(old, lambda n: after[f"val/{n}/loss"])
        lines.append(f"old text ({', '.join(old)}): loss {b_old:.4f} -> {a_old:.4f} ({a_old - b_old:+.4f}; bound "
                     f"+{bound:g})")
    elif kind == "adapt":
        lines.append("old text: none given (--old), so forgetting was not measured")
    g = [(d, v) for d, v in gap.items() if d in [f"val/{n}/loss" for n in new]]
    if g:
        d, v = max(g, key=lambda kv: kv[1]["depth"])
        if v.get("note"):
            lines.append(f"stability gap: not measured ({v['note']})")
        elif v["depth"] > 0:
            rec = f"recovered by step {v['recover_step']}" if v.get("recovered") else "not recovered"
            lines.append(f"stability gap: deepest dip {v['depth']:.4f} nats on {d.split('/')[1]} at step "
                         f"{v['worst_step']}; {rec}")
        else:
            lines.append("stability gap: none (no new domain's loss rose above its start)")
    if r.rounds:
        ref = avg(new, lambda n: shift["losses"][n]["loss"])
        done = "matched" if r.rounds[-1]["matched"] else "not matched by k - 1 blocks"
        lines.append("rounds: " + ", ".join(f"{x['layers']} blocks {x['loss']:.4f}" for x in r.rounds)
                     + f" (the checkpoint {ref:.4f}): {done}; all rounds' FLOPs {sum(x['flops'] for x in r.rounds):.3g}")
    if saved:
        lines.append(saved)
    lines = lines[:11]
    lines.append(f"report: {out / 'report' / 'report.html'}")
    return lines
