"""Stability-gap metrics (Guo et al. 2024) from a run's evaluation curve: how deep the dip, how long to recover.

For one metric curve of (step, tokens, value) points:

- start: the value at `baseline_step` (the first point at or after it; by default step 0, before any update);
- worst: the worst value after the start (highest loss, or lowest accuracy when `higher_is_better`), with its
  step and tokens; depth = how much worse than the start it got, in the bad direction, never negative;
- recovered / recover_step / recover_tokens: the first point after the worst that is back at or better than the
  start (None if it never is). With no dip (depth 0) the run counts as recovered at the start point itself;
- final and change = final - start (raw values, not smoothed).
With one evaluation at or after the start there is no curve: depth 0 is not a claim of no dip, so `recovered` is
None and a `note` says the sample is too small (the table: "too few evaluations").

An evaluation whose value is not a number (null in metrics.jsonl: NaN or infinite, a diverged run) cannot be a
start, a worst point or a final value; it is left out and its step listed in `not_finite_steps`, which `gap` and
`report` say in one line (`not_finite_line`), so a diverged run's last finite loss is never passed off as its end.

Noise: with `window` > 1 the values after the start are replaced by a centred moving MEDIAN over `window` eval
points (shrunk at the ends) before the worst point and the recovery are found, so a single noisy evaluation
neither makes a dip nor ends one. The median, not the mean, because one outlier evaluation must not move it.
The start value itself is never smoothed (it is the reference the run is compared against), and the reported
worst value is the smoothed one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from warmstart import atomic
from warmstart.errors import UserError, warn
from warmstart.runtime import rundir


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving median over `window` points; the window is shrunk symmetrically at both ends."""
    if window <= 1 or len(values) <= 1:
        return values.copy()
    half = window // 2
    out = np.empty_like(values)
    n = len(values)
    for i in range(n):
        h = min(half, i, n - 1 - i)
        out[i] = float(np.median(values[i - h : i + h + 1]))
    return out


def gap_metrics(
    points: list[tuple[int, int, float]],
    higher_is_better: bool = False,
    baseline_step: int = 0,
    window: int = 1,
) -> dict:
    """Stability-gap numbers of one curve; `points` are (step, tokens, value) sorted by step (see module doc)."""
    if int(window) < 1:
        raise UserError(f"gap window: must be >= 1 (got {window})")
    points = [p for p in points if int(p[0]) >= baseline_step]
    pts = [(int(s), int(t), float(v)) for s, t, v in points if v is not None and np.isfinite(v)]
    not_finite = [int(s) for s, _, v in points if v is None or not np.isfinite(v)]
    if not pts:
        raise UserError(f"gap: no evaluation at or after step {baseline_step}")
    steps = np.array([p[0] for p in pts])
    if np.any(np.diff(steps) < 0):
        raise UserError("gap: points must be sorted by step")
    tokens = [p[1] for p in pts]
    raw = np.array([p[2] for p in pts], dtype=np.float64)
    sign = -1.0 if higher_is_better else 1.0  # in `bad` units, larger is worse
    start = raw[0]
    after = _smooth(raw[1:], int(window)) if len(raw) > 1 else raw[1:]
    bad = sign * np.concatenate(([start], after))
    worst_i = int(np.argmax(bad))  # the first of equal worst points; index 0 = no dip at all
    depth = float(max(bad[worst_i] - bad[0], 0.0))
    recover_i = None
    if depth == 0.0:
        recover_i = 0
    else:
        later = np.flatnonzero(bad[worst_i + 1 :] <= bad[0])
        if len(later):
            recover_i = worst_i + 1 + int(later[0])
    final = float(raw[-1])
    few = {}
    if len(pts) < 2:  # a start and nothing after it: no dip is measured, so none is claimed and no recovery either
        recover_i = None
        few = {"note": f"one evaluation at or after step {baseline_step}: too few to measure a dip or a recovery "
                       "(at least 2)"}
    return {
        "start": float(start),
        "worst": float(sign * bad[worst_i]),
        "worst_step": int(steps[worst_i]),
        "worst_tokens": int(tokens[worst_i]),
        "depth": depth,
        "recovered": None if len(pts) < 2 else recover_i is not None,
        "recover_step": int(steps[recover_i]) if recover_i is not None else None,
        "recover_tokens": int(tokens[recover_i]) if recover_i is not None else None,
        "final": final,
        "change": final - float(start),
        "points": len(pts),
        "not_finite_steps": not_finite,
        "window": int(window),
        "higher_is_better": bool(higher_is_better),
        **few,
    }


def _metric_keys(evals: list[dict]) -> list[tuple[str, bool]]:
    keys: dict[str, bool] = {}
    for m in evals:
        for k in m:
            parts = k.split("/")
            if len(parts) == 3 and parts[0] == "val" and parts[2] == "loss" and parts[1] != "avg":
                keys.setdefault(k, False)
            elif len(parts) >= 3 and parts[0] == "task" and parts[2].startswith("acc"):
                keys.setdefault(k, True)
    return list(keys.items())


def run_gap(run_dir: str | Path, baseline_step: int = 0, window: int = 1) -> dict[str, dict]:
    """Gap metrics for every `val/<domain>/loss` (and `task/<name>/acc*`) of a run; writes RUN_DIR/gap.json."""
    from warmstart.runtime.metrics import read_metrics

    run_dir = Path(run_dir)
    rundir.say_unclean_stop(run_dir)
    if not rundir.metrics_path(run_dir).is_file():
        raise UserError(f"{run_dir}: no {rundir.METRICS} (not a run directory, or the run has not started)")
    events = read_metrics(run_dir)
    evals = sorted((m for m in events if m.get("event") == "eval"), key=lambda m: m["step"])
    for m in events:  # a start and later points in another quantity measure no dip: refused, not joined
        # the change is at a resume from step s: evaluations up to s are the old quantity, later ones the new
        if m.get("event") == "eval_change" and m["step"] >= baseline_step and any(e["step"] > m["step"] for e in evals):
            raise UserError(
                f"{run_dir}: its evaluation changed after step {m['step']} ({m.get('changed')}), after the start "
                f"(step {baseline_step}): the losses before and after are not the same quantity; give "
                f"--baseline-step {m['step'] + 1} to measure from the change"
            )
    keys = _metric_keys(evals)
    if not keys:
        raise UserError(f"{rundir.metrics_path(run_dir)}: no evaluation events with val/<domain>/loss")
    out = {}
    for key, hib in keys:
        pts = [(m["step"], m["tokens"], m[key]) for m in evals if key in m]
        out[key] = gap_metrics(pts, higher_is_better=hib, baseline_step=baseline_step, window=window)
        if out[key]["not_finite_steps"]:
            warn(not_finite_line(run_dir.name, key, out[key]))
    atomic.write_json(
        run_dir / "gap.json", {"baseline_step": baseline_step, "window": window, "metrics": out}
    )
    return out


def not_finite_line(run: str, key: str, g: dict) -> str:
    """What a `gap_metrics` result left out, in one line (empty when nothing was)."""
    steps = g.get("not_finite_steps") or []
    if not steps:
        return ""
    shown = ", ".join(str(s) for s in steps[:5]) + (f" and {len(steps) - 5} more" if len(steps) > 5 else "")
    return (f"{run}: {key} is not a number at step{'s' if len(steps) > 1 else ''} {shown} (the run diverged?); "
            f"left out: its stability gap is from the other {g['points']} evaluation{'s' if g['points'] != 1 else ''}")


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
                    "too few evaluations" if g["points"] < 2 else "no dip" if g["depth"] <= 0 else g["recovered"],
                    "—" if g["depth"] <= 0 else g["recover_tokens"] if g["recovered"] else "never",
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
        "first evaluation after the worst back at or below the start; no dip = never above the start.",
    }
