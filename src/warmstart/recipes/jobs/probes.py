"""Probes: short runs of the one training loop over candidate settings, raced, and the rule that chooses.

Plan (`plan_rungs`): successive halving (Jamieson & Talwalkar 2016; Li et al. 2018) with eta = 2. Every candidate
trains s steps (rung 0); after each rung the losers stop and the best half (rounded up) continue, each rung
doubling the steps (s, 2s, 4s). A survivor continues its own run from its checkpoint (the run is resumed with a
longer step count), so no step is trained twice. s is the largest whole number of steps whose total cost, the
training steps plus each rung's evaluation (forward passes over the validation windows), fits `probe_share` of
the budget's FLOPs; up to 3 rungs, fewer when the budget is small; none at all (one line, nothing written) when
not every candidate can train one step.

Probes re-warm like the full run (the same warmup steps, where they fit in the first rung) and then hold the
candidate's max LR (a constant schedule: its LR at a step does not depend on how long the probe runs, so a probe
continued to the next rung is the run a longer probe would have been). Each probe is an ordinary run directory
under OUT/probes/.

Race (`race_rung`): at the end of every rung each surviving probe's per-window validation losses are measured on
every domain (new and old). The leader is the best by the rule below; a probe is dropped early when a one-sided
paired t-test over the new domains' windows (`block_choice.shown_worse`, level `alpha`) shows it worse than a
leader that keeps the forgetting bound and it does not forget less than that leader; then halving keeps the best
half of the rest. Every rung's numbers are written (probes/NAME/rung-R.json) before a probe continues, so a
re-run reads them instead of measuring a model that has since trained further.

Rule (`choose`): the lowest new-domain loss among the candidates whose old-domain loss rose by at most the bound
(mean over the old domains of the loss after the probe minus the checkpoint's); when none keeps it, the one that
forgot least. Without old text, the lowest new-domain loss.

Correction for the probes' horizon: the best LR falls as the horizon grows (a short run rewards the fast early
drop of a large LR, a long one pays for its noise floor; Bjorck et al. 2024, "Scaling Optimal LR Across Token
Horizons": LR*(D) = B * D^-beta), so a probe ranking is biased toward large LRs. The chosen LR is the probes' best
LR moved to the run's horizon, `horizon_lr` = lr * (probe steps / run steps)^beta, then the nearest candidate LR in
log scale (`nearest_lr`): a candidate, so the full run is one the probes measured. beta is `--horizon-exponent`
(config.DEFAULT_HORIZON_EXPONENT, 0.12, by default: fitted by bench/adapt.py on five SmolLM2 cells,
bench/results/adapt.md, where the probes' best LR was 3e-4 every time and the full budget's best 1e-4 in two of five;
a first fit of 0.2 on three of them lost on the other two; 0 turns the correction off). At
that LR the replay share: a short probe sees little of the forgetting a full run accumulates (on SmolLM2 a 1-step
probe at max LR 3e-4 without replay lowered the old text's loss by 0.055 nats; the full 40-step run raised it by
0.11), so among that LR's candidates that keep the bound and that the paired test cannot tell from the lowest-loss
one, the largest share is chosen. A clearly better share still wins. When none of that LR's candidates kept the bound
in the probes, the LR stays the probes' best. `derive` uses no correction (beta 0): on a fresh cut the short-probe
bias was measured the other way round (bench/results/derive-v1.md), and there is no replay to tie on.

Warmup transient: the paired test drops nothing in a rung that ends within SETTLE x the warmup steps (halving
still applies): right after its warmup a large LR's loss is a transient, not a ranking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from warmstart.errors import UserError
from warmstart.eval.block_choice import shown_worse

ETA = 2
MAX_RUNGS = 3
SETTLE = 2  # a probe is past its warmup transient once it has trained more than SETTLE x its warmup steps


@dataclass
class Candidate:
    name: str
    lr: float
    replay: float = 0.0


def candidates(lrs: list[float], replays: list[float] | None) -> list[Candidate]:
    """LR x replay share (replay only with old text), smallest LR first, no replay first."""
    out = []
    for lr in sorted(lrs):
        if replays is None:
            out.append(Candidate(f"lr={lr:g}", lr))
        else:
            out.extend(Candidate(f"lr={lr:g},replay={r:g}", lr, r) for r in sorted(replays))
    return out


def survivors_after(n: int) -> int:
    return max(1, math.ceil(n / ETA))


def rung_cost(n: int, first: int, rungs: int, step_tokens: int, eval_tokens: float) -> float:
    """Training-token equivalents of a plan: every rung's new steps for its probes, plus one evaluation per probe
    per rung (`eval_tokens`: forward passes, a third of a training token each)."""
    cost, alive, done = 0.0, n, 0
    for r in range(rungs):
        steps = first * ETA**r
        cost += alive * ((steps - done) * step_tokens + eval_tokens / 3.0)
        done, alive = steps, survivors_after(alive)
    return cost


def most_first_steps(n: int, rungs: int, step_tokens: int, eval_tokens: float, cap: float) -> int:
    """The largest first rung whose plan costs at most `cap` (0 if not even one step fits). `rung_cost` is
    first x a + b (a: the training tokens per first-rung step over all rungs, b: the evaluations), so this is a
    division, not a search: a budget of 1e15 tokens is planned as fast as one of 1e4."""
    b = rung_cost(n, 0, rungs, step_tokens, eval_tokens)
    a = rung_cost(n, 1, rungs, step_tokens, eval_tokens) - b
    first = max(0, math.floor((cap - b) / a))
    while first > 0 and rung_cost(n, first, rungs, step_tokens, eval_tokens) > cap:  # float rounding at the edge
        first -= 1
    while rung_cost(n, first + 1, rungs, step_tokens, eval_tokens) <= cap:
        first += 1
    return first


def plan_rungs(n: int, total_steps: int, step_tokens: int, probe_share: float, eval_tokens: float,
               spent: float = 0.0, max_rungs: int = MAX_RUNGS, tokens: int | None = None) -> list[int]:
    """Each rung's step count (cumulative): the most rungs whose first rung gets at least 2 steps, else one rung
    of the most steps that fit in `probe_share` of the budget less `spent` (what deciding cost before the probes:
    the format probe, the before-training evaluation, a block search; in training tokens); no rung longer than the
    run. UserError (naming the budget as given, `tokens`, and the smallest whole number of batches that fits)
    when not every candidate gets one step."""
    cap = probe_share * total_steps * step_tokens - spent
    for rungs in range(max_rungs, 0, -1):
        first = min(most_first_steps(n, rungs, step_tokens, eval_tokens, cap), total_steps // ETA ** (rungs - 1))
        if first >= 2 or (rungs == 1 and first >= 1):
            return [first * ETA**r for r in range(rungs)]
    need = math.ceil((rung_cost(n, 1, 1, step_tokens, eval_tokens) + spent) / probe_share / step_tokens)
    before = f" besides the {spent:,.0f} training tokens' worth spent before them" if spent else ""
    given = tokens if tokens is not None else total_steps * step_tokens
    whole = "" if given == total_steps * step_tokens else f" ({total_steps:,} whole batches)"
    raise UserError(f"--tokens {given:,}{whole}: too small for the probes ({n} candidates of at least "
                    f"one {step_tokens:,}-token step each and their evaluation must fit in --probe-share "
                    f"{probe_share:g} of the budget{before}: at least {need * step_tokens:,} tokens, {need:,} "
                    f"batches of {step_tokens:,}); raise --tokens or --probe-share, or give fewer candidates")


def per_window(losses: dict, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(summed loss, scored tokens) of every window of `names`, concatenated in order."""
    s = np.concatenate([np.asarray(losses[n]["sums"], dtype=np.float64) for n in names])
    c = np.concatenate([np.asarray(losses[n]["counts"], dtype=np.float64) for n in names])
    return s, c


# ----------------------------------------------------------------------------------------------- the rule
def forgetting(rung: dict, old: list[str], shift: dict) -> float | None:
    if not old:
        return None
    return float(np.mean([rung["losses"][d]["loss"] - shift[d]["loss"] for d in old]))


def key(row: dict, bound: float | None) -> tuple:
    """Order by the rule: bound kept first, by new-domain loss; then the rest by how little they forgot."""
    f = row.get("forgetting")
    if bound is None or f is None or f <= bound:
        return (0, row["new_loss"], row["lr"])
    return (1, f, row["new_loss"])


def race_rung(rows: dict[str, dict], bound: float | None, new: list[str], alpha: float, last: bool,
              settled: bool = True) -> dict:
    """One rung's outcome from its rows (name -> {lr, replay, new_loss, old_loss, forgetting, losses}): the leader,
    who the paired test dropped (and against whom), who halving stopped, who goes on. `settled` False (the rung
    ends within SETTLE x the warmup): no drops by the test, halving only: a large LR's loss right after its warmup
    is a transient (on a fresh cut of SmolLM2, bench/results/derive-v1.md: max LR 3e-3 at 9.91 after 2 steps against
    3e-4's 6.40) that says little about where it ends."""
    names = sorted(rows, key=lambda n: key(rows[n], bound))
    leader = names[0]
    lead = rows[leader]
    lead_ok = key(lead, bound)[0] == 0
    dropped = {}
    ls, lc = per_window(lead["losses"], new)
    for n in names[1:]:
        s, c = per_window(rows[n]["losses"], new)
        used = lc > 0
        worse = shown_worse((s[used] - ls[used]) / lc[used], alpha)
        forgets_less = (rows[n].get("old_loss") is not None and rows[n]["old_loss"] < lead["old_loss"])
        if lead_ok and worse and not forgets_less and not last and settled:
            dropped[n] = leader
    rest = [n for n in names if n not in dropped]
    keep = rest if last else rest[: survivors_after(len(names))]
    halved = [n for n in rest if n not in keep]
    return {"leader": leader, "dropped": dropped, "halved": halved, "continue": keep}


def horizon_lr(lr: float, probe_steps: int, run_steps: int, exponent: float) -> float:
    """The best max LR at `run_steps` from the best at `probe_steps` (same batch, so steps stand for tokens):
    lr * (probe_steps / run_steps)^exponent (Bjorck et al. 2024, LR*(D) = B * D^-beta)."""
    return lr * (probe_steps / run_steps) ** exponent


def nearest_lr(target: float, lrs: list[float]) -> float:
    """The candidate LR nearest `target` in log scale (the smaller on a tie)."""
    return min(lrs, key=lambda v: (abs(math.log(v / target)), v))


def choose(rows: dict[str, dict], bound: float | None, new: list[str], alpha: float,
           latest: dict[str, dict] | None = None, run_steps: int | None = None,
           exponent: float = 0.0) -> tuple[str, str]:
    """(the chosen candidate, why). `rows`: the last rung's rows; `latest`: every candidate's row at the furthest
    rung it reached (default `rows`), where the horizon correction may move the LR to a candidate halving stopped.
    The rule picks the best; its LR moves to the run's horizon (`exponent` > 0 and `run_steps`); at that LR the
    replay share by the rule among the candidates that reached that LR's furthest rung (halved there or not: a race
    decided before its last rung leaves one survivor, and its LR's other shares measured as long count), a tie (the
    paired test at level `alpha`) going to the larger share."""
    ok = [n for n in rows if key(rows[n], bound)[0] == 0]
    if not ok:
        best = min(rows, key=lambda n: key(rows[n], bound))
        return best, (f"no candidate kept the old text's loss within +{bound:g} nats; chose the one that forgot "
                      f"least (+{rows[best]['forgetting']:.4f}), as measured (no horizon correction, no replay tie)")
    best = min(ok, key=lambda n: (rows[n]["new_loss"], rows[n]["lr"]))
    within = "" if bound is None else f" among those whose old-text loss rose by at most {bound:g} nats"
    why = f"lowest new-text loss{within}: {best} ({rows[best]['new_loss']:.4f})"
    latest = {**(latest or {}), **rows}
    lr = rows[best]["lr"]
    if exponent > 0 and run_steps and rows[best]["steps"] < run_steps:
        steps = rows[best]["steps"]
        target = horizon_lr(lr, steps, run_steps, exponent)
        moved = nearest_lr(target, sorted({r["lr"] for r in latest.values()}))
        why += (f"; at the run's horizon (Bjorck et al. 2024, LR* ~ horizon^-{exponent:g}) max LR {lr:g} after "
                f"{_steps(steps)} is {target:.4g} after {_steps(run_steps)}, ")
        if moved == lr:
            why += f"nearest candidate {lr:g} itself"
        elif not _keepers(latest, moved, bound):
            why += (f"nearest candidate {moved:g}, but no candidate at {moved:g} kept the bound at the furthest rung "
                    f"it reached, so {lr:g} stays")
        else:
            why += f"nearest candidate {moved:g}"
            lr = moved
    pool = _keepers(latest, lr, bound)
    lead = min(pool, key=lambda n: (latest[n]["new_loss"], -latest[n].get("replay", 0.0)))
    ls, lc = per_window(latest[lead]["losses"], new)
    used = lc > 0
    ties = [n for n in pool if n == lead or not shown_worse(
        (per_window(latest[n]["losses"], new)[0][used] - ls[used]) / lc[used], alpha)]
    chosen = min(ties, key=lambda n: (-latest[n].get("replay", 0.0), latest[n]["new_loss"]))
    if chosen != best:
        why += f"; at max LR {lr:g}: {lead} ({latest[lead]['new_loss']:.4f} after {_steps(latest[lead]['steps'])})"
        if chosen != lead:
            why += (f", tied by the paired test (alpha {alpha:g}) with {chosen} ({latest[chosen]['new_loss']:.4f}), "
                    f"which has the larger replay share (short probes see little of a full run's forgetting)")
        why += f": chose {chosen}"
    return chosen, why


def _steps(n: int) -> str:
    return f"{n:,} step" + ("" if n == 1 else "s")


def _keepers(latest: dict[str, dict], lr: float, bound: float | None) -> list[str]:
    """The candidates at max LR `lr` that reached their furthest rung (the most steps among them) and kept the
    bound there."""
    at = [n for n, r in latest.items() if r["lr"] == lr]
    far = max(latest[n]["steps"] for n in at)
    return [n for n in at if latest[n]["steps"] == far and key(latest[n], bound)[0] == 0]
