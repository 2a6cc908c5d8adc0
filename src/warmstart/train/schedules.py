"""Learning-rate schedules as closed forms of the optimizer step, so a resumed run gets exactly the same LR.

`lr_at(cfg, step, T)` is the LR of optimizer update `step` (0-based, 0 <= step < T = total steps).
With W warmup steps, max = schedule.max_lr and min = `min_lr(cfg)`:

    warmup (every kind), step < W:   max * (step + 1) / W
        (the first update is not wasted at LR 0; step W-1 is at max; W = 0 means no warmup)
    constant:   max after warmup
    cosine:     p = (step - W) / (T - W);  min + (max - min) * 0.5 * (1 + cos(pi * p))
        (the first step after warmup is at max; the curve would reach min at step T, one past the end)
    wsd:        warmup, stable at max, then a cooldown of D = round(decay_fraction * T) steps:
                q = (step - (T - D) + 1) / D in (0, 1];  min + (max - min) * f(q)
    infinite:   (Ibrahim et al. 2024, "Simple and scalable strategies to continually pre-train LLMs")
                const = constant_lr_ratio * max, C = round(cooldown_fraction * T), A = round(decay_fraction * T):
                warmup; then a cosine cooldown from max to const for W <= step < W + C:
                    p = (step - W) / C;  const + (max - const) * 0.5 * (1 + cos(pi * p))
                (the first cooldown step is at max; const is reached on the first constant step);
                constant at const; then a final anneal from const to min for the last A steps:
                    q = (step - (T - A) + 1) / A;  min + (const - min) * f(q)

    decay_shape f(q):  linear 1 - q;  cosine 0.5 * (1 + cos(pi * q));  1-sqrt 1 - sqrt(q)
    (f(1) = 0, so the last step of a wsd cooldown or an infinite anneal is exactly min_lr)

W is schedule.warmup_steps, else round(warmup_fraction * T), else 0. `round` is Python's (half to even).
A positive fraction that rounds to a phase with no effect on this run (a warmup of 0 or 1 steps: its one step
would be at max_lr anyway; a cooldown or anneal of 0 steps) is said once at the run's start (`vanished_phases`).
Inconsistent settings (warmup longer than the run, phases that do not fit, min_lr above max_lr) raise a
UserError naming the schedule key to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from warmstart.config import ScheduleConfig
from warmstart.errors import UserError


def warmup_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    """W: schedule.warmup_steps, else round(warmup_fraction * total_steps), else 0; never more than the run."""
    if cfg.warmup_steps is not None:
        w = cfg.warmup_steps
        if w > total_steps:
            raise UserError(
                f"schedule.warmup_steps: {w} warmup steps exceed the run's {total_steps} optimizer steps; "
                "lower schedule.warmup_steps (or use schedule.warmup_fraction)"
            )
        return w
    if cfg.warmup_fraction is not None:
        return round(cfg.warmup_fraction * total_steps)
    return 0


def vanished_phases(cfg: ScheduleConfig, total_steps: int) -> list[str]:
    """One line per schedule fraction asked for (> 0) that has no effect on a run of `total_steps` steps, saying
    what the run does instead and how to get the phase: the fraction is kept as asked (the curve of a longer run is
    unchanged), the user learns that it rounded away here."""
    out = []
    if cfg.warmup_steps is None and cfg.warmup_fraction:
        w = warmup_steps(cfg, total_steps)
        if w <= 1:
            out.append(
                f"schedule.warmup_fraction {cfg.warmup_fraction:g} of this run's {total_steps} steps is {w} warmup "
                f"step{'s' if w != 1 else ''}: no warmup (the first step is at schedule.max_lr either way); give "
                "schedule.warmup_steps (2 or more) for one"
            )
    phases = {"wsd": [("decay_fraction", "cooldown")], "infinite": [("cooldown_fraction", "cooldown to the "
              "constant LR"), ("decay_fraction", "final anneal")]}.get(cfg.kind, [])
    for key, what in phases:
        frac = getattr(cfg, key)
        if frac > 0 and round(frac * total_steps) == 0:
            out.append(
                f"schedule.{key} {frac:g} of this run's {total_steps} steps rounds to 0 steps: no {what}; raise "
                f"schedule.{key} to {1 / total_steps:.3g} (one step of this run) for one"
            )
    return out


def min_lr(cfg: ScheduleConfig) -> float:
    """The floor: schedule.min_lr if given, else min_lr_ratio * max_lr."""
    if cfg.min_lr is not None:
        if cfg.min_lr > cfg.max_lr:
            raise UserError(
                f"schedule.min_lr: {cfg.min_lr:g} is above schedule.max_lr {cfg.max_lr:g}; lower schedule.min_lr "
                "(or use schedule.min_lr_ratio)"
            )
        return cfg.min_lr
    return cfg.min_lr_ratio * cfg.max_lr


@dataclass(frozen=True)
class _Plan:
    """Validated phase lengths of one schedule over one run."""

    total: int
    warmup: int
    max_lr: float
    min_lr: float
    decay: int = 0  # wsd cooldown / infinite final anneal
    cooldown: int = 0  # infinite: max -> const
    const: float = 0.0  # infinite: the constant phase's LR


def _plan(cfg: ScheduleConfig, total_steps: int) -> _Plan:
    if total_steps < 1:
        raise UserError(
            f"schedule: the run has {total_steps} optimizer steps; at least 1 is needed "
            "(raise train.steps, or train.tokens to at least train.batch_tokens)"
        )
    w = warmup_steps(cfg, total_steps)
    lo = min_lr(cfg)
    if cfg.kind == "wsd":
        d = round(cfg.decay_fraction * total_steps)
        if w + d > total_steps:
            raise UserError(
                f"schedule.decay_fraction: {w} warmup + {d} cooldown steps exceed the run's {total_steps} steps; "
                "lower schedule.decay_fraction or the warmup (schedule.warmup_steps / warmup_fraction)"
            )
        return _Plan(total_steps, w, cfg.max_lr, lo, decay=d)
    if cfg.kind == "infinite":
        c = round(cfg.cooldown_fraction * total_steps)
        a = round(cfg.decay_fraction * total_steps)
        if w + c + a > total_steps:
            raise UserError(
                f"schedule.cooldown_fraction: {w} warmup + {c} cooldown + {a} anneal steps exceed the run's "
                f"{total_steps} steps; lower schedule.cooldown_fraction, schedule.decay_fraction or the warmup"
            )
        const = cfg.constant_lr_ratio * cfg.max_lr
        if const < lo:
            raise UserError(
                f"schedule.constant_lr_ratio: the constant LR {const:g} is below the final min_lr {lo:g}, so the "
                "anneal would raise the LR; raise schedule.constant_lr_ratio or lower schedule.min_lr/min_lr_ratio"
            )
        return _Plan(total_steps, w, cfg.max_lr, lo, decay=a, cooldown=c, const=const)
    return _Plan(total_steps, w, cfg.max_lr, lo)


def _shape(shape: str, q: float) -> float:
    """Decay from 1 (q -> 0) to exactly 0 (q = 1)."""
    if shape == "linear":
        return 1.0 - q
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * q))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(q)
    raise ValueError(f"unknown decay shape {shape!r}")


def lr_at(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """LR of optimizer update `step` (0-based) of a `total_steps` run; see the module docstring."""
    p = _plan(cfg, total_steps)
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside the run's steps 0..{total_steps - 1}")
    mx, lo, t, w = p.max_lr, p.min_lr, p.total, p.warmup
    if step < w:
        return mx * (step + 1) / w
    if cfg.kind == "constant":
        return mx
    if cfg.kind == "cosine":
        frac = (step - w) / (t - w)
        return lo + (mx - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if cfg.kind == "wsd":
        start = t - p.decay
        if step < start:
            return mx
        return lo + (mx - lo) * _shape(cfg.decay_shape, (step - start + 1) / p.decay)
    if cfg.kind == "infinite":
        if step < w + p.cooldown:
            frac = (step - w) / p.cooldown
            return p.const + (mx - p.const) * 0.5 * (1.0 + math.cos(math.pi * frac))
        start = t - p.decay
        if step < start:
            return p.const
        return lo + (p.const - lo) * _shape(cfg.decay_shape, (step - start + 1) / p.decay)
    raise ValueError(f"unknown schedule kind {cfg.kind!r}")


def schedule_values(cfg: ScheduleConfig, total_steps: int) -> list[float]:
    """The LR of every step of a run (for plots, logs and tests)."""
    _plan(cfg, total_steps)  # errors once, before the loop
    return [lr_at(cfg, s, total_steps) for s in range(total_steps)]
