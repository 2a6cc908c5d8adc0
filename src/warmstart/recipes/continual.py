"""Continual pre-training recipes built on `train()`: the pretraining-like mixture of Guo et al. (2024).

Pretraining-like mixture: keep the old (pretraining) mixture's proportions among the general domains, give the
new domain a chosen share of every batch (Guo et al. replace the web share: ~82% domain data, ~18% general), and
let the general part be re-sampled each epoch (sampler subset mode `resample`: a fresh random K-token subset of
each general domain per epoch) when `general_tokens_per_epoch` is given.
"""

from __future__ import annotations

import copy
from fractions import Fraction

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

