"""What a report reads: run directories (metrics.jsonl, summary.json, config.yaml), mixture and grow directories.

Everything here is plain data; the numbers in the tables (final losses, gap metrics here, compute saved in
`saved.py`) are computed once so that the plots, the Markdown, the HTML and summary.json all show the same values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from warmstart.errors import UserError
from warmstart.eval.gap import gap_metrics
from warmstart.jsonfile import read_json_object
from warmstart.runtime import rundir
from warmstart.runtime.metrics import read_metrics


@dataclass
class Run:
    name: str
    path: Path
    evals: list[dict]
    trains: list[dict]
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    eval_changes: list[dict] = field(default_factory=list)  # "eval_change" events: a resume changed the evaluation

    def domains(self) -> list[str]:
        keys: dict[str, None] = {}
        for m in self.evals:
            for k in m:
                p = k.split("/")
                if len(p) == 3 and p[0] == "val" and p[2] == "loss" and p[1] != "avg":
                    keys.setdefault(p[1])
        return list(keys)

    def curve(self, key: str) -> list[tuple[int, int, float, float]]:
        """(step, tokens, flops, value) of every eval event holding `key`, by step."""
        out = []
        for m in self.evals:
            v = m.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out.append(
                    (int(m["step"]), int(m.get("tokens") or 0), float(m.get("flops") or 0.0), float(v))
                )
        return out

    @property
    def tokens(self) -> int:
        last = self.evals[-1] if self.evals else {}
        return int(self.summary.get("tokens", last.get("tokens", 0)) or 0)

    @property
    def flops(self) -> float:
        last = self.evals[-1] if self.evals else {}
        return float(self.summary.get("flops", last.get("flops", 0.0)) or 0.0)


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in paths]


def load_run(path: Path, name: str) -> Run:
    rundir.say_unclean_stop(path)
    if not rundir.metrics_path(path).is_file():
        raise UserError(f"{path}: no {rundir.METRICS} (not a warmstart run directory)")
    events = read_metrics(path)
    evals = sorted((m for m in events if m.get("event") == "eval"), key=lambda m: m["step"])
    trains = sorted((m for m in events if m.get("event") == "train"), key=lambda m: m["step"])
    # task scores from `warmstart eval` (event "task") join the eval event at their step, or stand alone
    by_step = {m["step"]: m for m in evals}
    for m in (m for m in events if m.get("event") == "task"):
        scores = {k: v for k, v in m.items() if k.startswith("task/")}
        if m["step"] in by_step:
            by_step[m["step"]].update(scores)
        else:
            evals.append({**m, "event": "eval"})
    evals.sort(key=lambda m: m["step"])
    if not evals:
        raise UserError(f"{rundir.metrics_path(path)}: no evaluation events (the run has not evaluated yet)")
    summary = rundir.load_summary(path) if rundir.summary_path(path).is_file() else {}
    config = rundir.read_config(path) or {}
    changes = [m for m in events if m.get("event") == "eval_change"]
    return Run(name, path, evals, trains, summary, config, changes)


def quantity_changes(run: Run) -> str | None:
    """Where a run's own curve changes quantity: a resume that changed its evaluation (its "eval_change" events),
    or evaluations whose windows or packing differ from the first one's; None when it never does."""
    said = [f"after step {m['step']} ({m.get('changed')})" for m in run.eval_changes]
    first = run.evals[0] if run.evals else {}
    for m in run.evals[1:]:
        for key in ("windows", "packing"):
            if key in first and key in m and m[key] != first[key]:
                said.append(f"at step {m['step']} ({key} {first[key]} -> {m[key]})")
                first = m
                break
    return f"{run.name}: {'; '.join(said)}" if said else None


def read_mixture(path: Path) -> dict | None:
    """{budget, weights, predicted} of a mixture.json (or a directory holding one); None when it has no weights."""
    p = path / "mixture.json" if path.is_dir() else path
    if not p.is_file():
        return None
    mix = read_json_object(p)
    weights = mix.get("weights")
    if not isinstance(weights, dict) or not weights:
        return None
    budget = mix.get("budget")
    if not isinstance(budget, (int, float)) and isinstance(mix.get("tokens"), dict):
        budget = sum(float(v) for v in mix["tokens"].values())
    if not isinstance(budget, (int, float)):
        return None
    return {
        "name": path.name,
        "budget": float(budget),
        "weights": {k: float(v) for k, v in weights.items()},
        "predicted": "sources" in mix or "prediction" in mix,
    }


def _num(d: dict, *keys):
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, dict):
            inner = _num(v, "loss", "val_loss", "value")
            if inner is not None:
                return inner
    return None


def read_grow(path: Path) -> dict | None:
    """Rounds (n_layers, params, val_loss, tokens, flops) and the reference loss of a grow_summary.json."""
    p = path / "grow_summary.json"
    if not p.is_file():
        return None
    g = read_json_object(p)
    rounds = []
    for r in g.get("rounds") or []:
        if not isinstance(r, dict):
            continue
        loss = _num(r, "val_loss", "loss")
        layers = _num(r, "n_layers", "layers")
        if loss is None or layers is None:
            continue
        rounds.append(
            {
                "n_layers": int(layers),
                "val_loss": loss,
                "params": _num(r, "params"),
                "tokens": _num(r, "tokens"),
                "flops": _num(r, "flops"),
            }
        )
    ref = _num(g, "reference_loss", "reference", "target_loss")
    if not rounds:
        return None
    base = g.get("baseline") if isinstance(g.get("baseline"), dict) else {}
    b_loss, b_layers = _num(base, "val_loss", "loss"), _num(base, "n_layers", "layers")
    baseline = {"n_layers": int(b_layers), "val_loss": b_loss} if b_loss is not None and b_layers else None
    return {"name": path.name, "rounds": rounds, "reference_loss": ref, "baseline": baseline}


def classify(paths: list[str | Path]) -> tuple[list[Run], list[dict], list[dict], list[str]]:
    """Split the given directories into runs, mixtures and grow summaries; notes say what was skipped and why."""
    runs_p, mixes, grows, notes = [], [], [], []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"report: {p} not found")
        if rundir.metrics_path(p).is_file():
            runs_p.append(p)
            continue
        g = read_grow(p)
        m = read_mixture(p)
        if g is not None:
            grows.append(g)
        if m is not None:
            mixes.append(m)
        if g is None and m is None:
            if (p / "grow_summary.json").is_file():
                notes.append(f"{p}: grow_summary.json has no rounds with n_layers and val_loss; skipped")
            elif p.is_file() or (p / "mixture.json").is_file():
                notes.append(f"{p}: no 'weights' and 'budget' in the mixture file; skipped")
            else:
                raise UserError(
                    f"report: {p} is not a run, mixture or grow directory (no metrics.jsonl, "
                    "mixture.json or grow_summary.json)"
                )
    runs = [load_run(p, n) for p, n in zip(runs_p, _unique_names(runs_p), strict=True)]
    return runs, mixes, grows, notes


# ----------------------------------------------------------------------------------------------- numbers
def reach(curve: list[tuple[int, int, float, float]], target: float) -> tuple[float, float] | None:
    """(tokens, flops) at which a loss curve first reaches `target`, linear between eval points; None if never.

    A curve that starts at or below the target reaches it at its first point.
    """
    if not curve:
        return None
    if curve[0][3] <= target:
        return float(curve[0][1]), float(curve[0][2])
    for (_, t0, f0, v0), (_, t1, f1, v1) in zip(curve, curve[1:], strict=False):
        if v1 <= target:
            frac = (v0 - target) / (v0 - v1)
            return t0 + frac * (t1 - t0), f0 + frac * (f1 - f0)
    return None


def final_value(run: Run, key: str) -> float | None:
    c = run.curve(key)
    return c[-1][3] if c else None


def gaps(run: Run, window: int = 1) -> dict[str, dict]:
    """Stability-gap metrics of every per-domain validation loss of a run (from step 0, its first eval)."""
    out = {}
    for dom in run.domains():
        key = f"val/{dom}/loss"  # null values too: gap_metrics leaves them out and lists their steps
        pts = [(int(m["step"]), int(m.get("tokens") or 0), m[key]) for m in run.evals if key in m]
        finite = [p for p in pts if isinstance(p[2], int | float) and math.isfinite(p[2])]
        if finite:
            out[dom] = gap_metrics(pts, baseline_step=finite[0][0], window=window)
    return out
