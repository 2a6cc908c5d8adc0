"""Continual pre-training recipes built on `train()`: the quickstart's gap report + replay variant, and the
pretraining-like mixture of Guo et al. (2024).

Pretraining-like mixture: keep the old (pretraining) mixture's proportions among the general domains, give the
new domain a chosen share of every batch (Guo et al. replace the web share: ~82% domain data, ~18% general), and
let the general part be re-sampled each epoch (sampler subset mode `resample`: a fresh random K-token subset of
each general domain per epoch) when `general_tokens_per_epoch` is given.
"""

from __future__ import annotations

import copy
import json
from fractions import Fraction
from pathlib import Path

from warmstart.config import Recipe, validate
from warmstart.errors import UserError


def pretraining_like_weights(
    old_weights: dict[str, float], new_domain: str, new_share: float
) -> dict[str, float]:
    """New-domain share `new_share`; the rest split among the old domains in their old proportions (exact)."""
    if not 0 < new_share < 1:
        raise UserError(f"new_share: must be in (0, 1) (got {new_share})")
    old = {d: Fraction(repr(float(w))) for d, w in old_weights.items() if d != new_domain and w > 0}
    total = sum(old.values())
    if not old or total <= 0:
        raise UserError(
            "old_weights: need at least one general domain with positive weight besides the new one"
        )
    rest = 1 - Fraction(repr(float(new_share)))
    out = {new_domain: float(new_share)}
    out.update({d: float(rest * w / total) for d, w in old.items()})
    return out


def pretraining_like_recipe(
    base: dict,
    old_weights: dict[str, float],
    new_domain: str,
    new_share: float,
    general_tokens_per_epoch: int | None = None,
) -> Recipe:
    """`base` (a recipe tree) with data.weights = the pretraining-like mixture; with `general_tokens_per_epoch`,
    each general domain gets a `resample` subset of its share of that many tokens (re-drawn every epoch)."""
    tree = copy.deepcopy(base)
    weights = pretraining_like_weights(old_weights, new_domain, new_share)
    data = tree.setdefault("data", {})
    data["weights"] = weights
    data.pop("replay", None)
    if general_tokens_per_epoch is not None:
        rest = sum(w for d, w in weights.items() if d != new_domain)
        subsets = dict(data.get("subsets", {}))
        for d, w in weights.items():
            if d != new_domain:
                subsets[d] = {
                    "tokens": max(1, round(general_tokens_per_epoch * w / rest)),
                    "mode": "resample",
                }
        data["subsets"] = subsets
    return validate(Recipe, tree, "pretraining-like mixture")


def _train_once(recipe: Recipe) -> None:
    from warmstart.train.runs import run_once

    outcome = run_once(recipe)
    if outcome.status == "interrupted":
        raise SystemExit(outcome.exit_code)


def quickstart_step(root: Path, upstream_run: Path, rewarm_run: Path) -> str:
    """The quickstart's continual step: the re-warm run's stability gap, plus a 25%-replay variant of it.

    The replay run is the re-warm recipe of `warmstart.recipes.quickstart.recipes(root)` with
    `data.replay = {fraction: 0.25, domains: {prose: 1.0}}` (same steps and schedule; compute-equivalent),
    started from `upstream_run`; it is skipped when complete. Returns the text table (and writes gap.json in
    both run directories).
    """
    from warmstart.eval.gap import run_gap
    from warmstart.recipes.quickstart import UPSTREAM, recipes

    root, upstream_run, rewarm_run = Path(root), Path(upstream_run), Path(rewarm_run)
    if not (rewarm_run / "summary.json").is_file():
        raise UserError(f"{rewarm_run}: the re-warm run is not complete (no summary.json); run it first")
    base = recipes(root)["downstream-rewarm"].model_dump(mode="json", by_alias=True)
    base["name"] = "downstream-rewarm-replay25"
    base["out_dir"] = str(rewarm_run.parent)
    base["init"]["from"] = str(upstream_run)
    base["data"]["replay"] = {"fraction": 0.25, "domains": {UPSTREAM: 1.0}}
    replay = validate(Recipe, base, "quickstart:downstream-rewarm-replay25")
    _train_once(replay)

    lines = []
    for label, run in (("re-warm", rewarm_run), ("re-warm + 25% replay", replay.run_dir)):
        gaps = run_gap(run)
        final = json.loads((run / "summary.json").read_text())["final_eval"]
        lines.append(f"{label} ({run.name}):")
        lines.append(
            f"  {'domain':<12} {'start':>8} {'worst':>8} {'@step':>6} {'depth':>7} {'recovered at':>14} "
            f"{'final':>8} {'change':>8}"
        )
        for key, g in gaps.items():
            dom = key.split("/")[1]
            rec = f"step {g['recover_step']}" if g["recovered"] else "not recovered"
            lines.append(
                f"  {dom:<12} {g['start']:8.3f} {g['worst']:8.3f} {g['worst_step']:6d} {g['depth']:7.3f} "
                f"{rec:>14} {final[key]:8.3f} {g['change']:+8.3f}"
            )
    return "\n".join(lines)
