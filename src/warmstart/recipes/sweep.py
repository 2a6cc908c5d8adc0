"""`warmstart sweep`: one training run per point of a grid of recipe overrides, resumable, with a summary table.

`--grid schedule.max_lr=1.5e-4,3e-4 --grid schedule.warmup_fraction=0,0.01` is the cartesian product of the
values (in the order given; the first grid key varies slowest). Values are parsed like `--set` (YAML scalars:
3e-4 is a float, 0 an int, true a bool, a path a string); a value may itself hold commas inside [] or {}.

Every point is a run directory OUT_DIR/NAME/<point>, where <point> is `key=value,key=value` built from the last
component of each grid key (the full dotted key when two grid keys share a last component) and the values as
written, with characters other than letters, digits and `._+-` in a value replaced by `_` (so `init.from=runs/a` names
`from=runs_a`). Re-running a sweep skips points with summary.json, resumes interrupted ones from their newest
checkpoint (set train.checkpoint_every to lose less), restarts points that died before their first checkpoint,
and refuses a point whose run directory holds a different recipe. OUT_DIR/NAME/sweep.json and sweep.md hold per
point the grid values, the final per-domain validation losses and the stability-gap metrics (warmstart.eval.gap).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from warmstart import atomic
from warmstart.config import (
    DuplicateKeyError,
    Recipe,
    apply_overrides,
    check_unique_overrides,
    load_yaml,
    read_yaml,
    set_dotted,
    split_assignment,
    validate,
)
from warmstart.config import recipe_path as resolve_recipe_path
from warmstart.errors import UserError
from warmstart.eval.gap import gap_table
from warmstart.tables import markdown_table

_BAD_CHARS = re.compile(r"[^A-Za-z0-9._+\-]")  # in a value; `=` and `,` only separate


@dataclass
class Point:
    """One grid point: its overrides (key -> typed value), the raw strings, and its run directory name."""

    values: dict[str, Any]
    raw: dict[str, str]
    name: str


def _split_values(text: str) -> list[str]:
    """Split on commas outside [] and {} (so a value may be a YAML list or mapping)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`key=v1,v2` strings -> {key: [raw values]} in the order given."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, raw = split_assignment(item, "--grid", "KEY=V1,V2,..., e.g. --grid schedule.max_lr=1.5e-4,3e-4")
        if key in grid:
            raise UserError(f"--grid {key}: given twice; list all its values in one --grid")
        if key in ("name", "out_dir"):
            raise UserError(f"--grid {key}: the sweep names its run directories itself; grid other keys")
        values = _split_values(raw)
        if not raw.strip() or any(v == "" for v in values):
            raise UserError(f"--grid {item}: empty value; give comma-separated values")
        if len(set(values)) != len(values):
            raise UserError(f"--grid {item}: repeated value")
        grid[key] = values
    if not grid:
        raise UserError("sweep: give at least one --grid KEY=V1,V2,...")
    return grid


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _typed(raw: str) -> Any:
    """A YAML scalar, except that `3e-4` is a float too (YAML 1.1 reads it as a string: it wants `3.0e-4`)."""
    try:
        value = load_yaml(raw)
    except DuplicateKeyError as e:
        raise UserError(f"--grid value {raw!r}: {e.problem}") from None
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def _labels(keys: list[str]) -> dict[str, str]:
    last = [k.split(".")[-1] for k in keys]
    return {k: (lk if last.count(lk) == 1 else k) for k, lk in zip(keys, last, strict=True)}


def expand_grid(grid: dict[str, list[str]]) -> list[Point]:
    """The cartesian product of the grid (first key slowest), each point with its deterministic name."""
    keys = list(grid)
    labels = _labels(keys)
    points, names = [], {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        raw = dict(zip(keys, combo, strict=True))
        name = ",".join(f"{labels[k]}={_BAD_CHARS.sub('_', v)}" for k, v in raw.items())
        if name in names:
            raise UserError(
                f"--grid: points {names[name]} and {raw} both name the run directory {name!r}; "
                "use values that differ in more than punctuation"
            )
        names[name] = raw
        points.append(Point(values={k: _typed(v) for k, v in raw.items()}, raw=raw, name=name))
    return points


def point_recipes(
    base: dict, grid: dict[str, list[str]], overrides: list[str] | None = None, source: str = "recipe"
) -> list[tuple[Point, Recipe]]:
    """Validated recipes of every point: base recipe + --set overrides + the point's values; named by the point."""
    check_unique_overrides(overrides)
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if key in grid:
            raise UserError(f"--set {key}: also a --grid key; the grid sets it for every point, keep one")
    tree = apply_overrides(base, overrides)
    name = tree.get("name")
    if not name:
        raise UserError(f"{source}: the sweep needs the recipe's name (its runs go to out_dir/name/)")
    out_dir = Path(str(tree.get("out_dir", "runs"))) / str(name)
    out = []
    for pt in expand_grid(grid):
        t = json.loads(json.dumps(tree))
        for k, v in pt.values.items():
            set_dotted(t, k, v)
        t["name"], t["out_dir"] = pt.name, str(out_dir)
        out.append((pt, validate(Recipe, t, f"{source} [{pt.name}]")))
    return out


def run_point(recipe: Recipe) -> tuple[str, int]:
    """Train one grid point once (skipped when finished, resumed when interrupted): (status, exit code), the
    exit code 128 + signum when a signal stopped it."""
    from warmstart.train.runs import run_once

    outcome = run_once(recipe)
    return outcome.status, outcome.exit_code


def _row(pt: Point, recipe: Recipe, window: int) -> dict:
    from warmstart.eval.gap import run_gap
    from warmstart.runtime.rundir import finished_summary

    run_dir = recipe.run_dir
    row: dict = {"point": pt.name, "run_dir": str(run_dir), "grid": pt.values, "complete": False}
    s = finished_summary(run_dir, recipe)
    if s is not None:
        row["complete"] = True
        row["tokens"] = s.get("tokens")
        row["final"] = {
            k.split("/")[1]: v
            for k, v in s.get("final_eval", {}).items()
            if k.startswith("val/") and k.endswith("/loss") and k != "val/avg/loss"
        }
        row["gap"] = {k: g for k, g in run_gap(run_dir, window=window).items()}
    return row


def _markdown(rows: list[dict], keys: list[str]) -> str:
    """Two tables: the grid values and final per-domain losses of every point, then the stability gap."""
    domains = sorted({d for r in rows for d in r.get("final", {})})
    head = [*keys, *(f"final {d}" for d in domains)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["grid"][k]) for k in keys]
        for d in domains:
            v = r.get("final", {}).get(d)
            cells.append(f"{v:.4f}" if v is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    gap = gap_table({r["point"]: r["gap"] for r in rows if "gap" in r})
    return "\n".join(lines) + f"\n\n## {gap['title']}\n\n{markdown_table(gap)}\n"


def write_summary(
    out_dir: Path, points: list[tuple[Point, Recipe]], grid: dict[str, list[str]], window: int = 1
) -> list[dict]:
    rows = [_row(pt, r, window) for pt, r in points]
    keys = list(grid)
    atomic.write_json(out_dir / "sweep.json", {"grid": grid, "gap_window": window, "points": rows})
    atomic.write_text(out_dir / "sweep.md", _markdown(rows, keys))
    return rows


def run_sweep(
    recipe_path: str | Path, grid_items: list[str], overrides: list[str] | None = None, window: int = 1
) -> int:
    """Run every grid point of a recipe (skipping finished ones) and write sweep.json / sweep.md; exit code 0.
    A point stopped by a signal: the summary of the points so far is written, then `signals.Interrupted`
    (`warmstart.train.runs`' policy) is raised."""
    grid = parse_grid(grid_items)
    recipe_path = resolve_recipe_path(recipe_path)  # a packaged example by name, from any directory
    points = point_recipes(read_yaml(recipe_path), grid, overrides, source=str(recipe_path))
    out_dir = points[0][1].run_dir.parent
    from warmstart.outputs import check_out_dir

    check_out_dir(out_dir, "out_dir")
    print(f"sweep {out_dir}: {len(points)} point(s)")
    from warmstart.train.runs import run_once

    for i, (pt, recipe) in enumerate(points, 1):
        outcome = run_once(recipe)
        print(f"[sweep {i}/{len(points)}] {pt.name}: {outcome.status}")
        if outcome.status == "interrupted":
            break
    write_summary(out_dir, points, grid, window)
    print(f"summary: {out_dir / 'sweep.md'}")
    outcome.raise_if_interrupted()  # the summary holds the points finished so far; a re-run resumes the rest
    return 0
