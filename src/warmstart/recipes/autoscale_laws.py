"""AutoScale's mathematics (Kang et al. 2024): per-domain power laws, the DDO solve, and the scale predictor.

Pure numpy/scipy, no torch, so every formula here is testable in milliseconds.

Units. A domain's amount is a *multiplier* of its base amount: x = 1 is the tokens the domain gets in the base
run (base weight x budget). The validation target is modelled as separable power laws in those multipliers,

    L(n_1..n_m) = sum_i (n_i + a_i)^(-b_i) + const,

fitted per domain from runs where only domain i's amount changes (`fit_power_law`). The DDO optimum minimises it
subject to sum_i s_i n_i = T (s_i = base tokens of domain i, T = the budget; with uniform base weights and s_i = 1
this is the paper's sum n_i = m) and lo_i <= n_i <= hi_i (`solve_ddo`).

Solve method: the problem is convex and separable, so its KKT conditions give the optimum in closed form up to
one multiplier lam: interior domains satisfy b_i (n_i + a_i)^(-b_i - 1) = lam s_i, i.e.
n_i(lam) = (lam s_i / b_i)^(-1/(b_i + 1)) - a_i, clipped to [lo_i, hi_i] (the active bounds); sum_i s_i n_i(lam)
is non-increasing in lam, and brentq finds the lam that meets the budget. A domain capped by its available tokens
is thus held at its cap and the others re-optimised with the same lam. `kkt_residual` checks the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from warmstart.errors import UserError

_B_RANGE = (1e-4, 20.0)


def power_law(x, a: float, b: float, c: float):
    """L(x) = (x + a)^(-b) + c."""
    return np.power(np.asarray(x, dtype=float) + a, -b) + c


@dataclass
class PowerLawFit:
    """A fitted `(x + a)^(-b) + c`, with the points it came from and how well it matches them.

    `identified` is False when the points do not pin the curve down (`note` says why): several curves of the
    family pass through 3 points, none does, a parameter sits at its bound, or (> 3 points) the Jacobian is so
    ill-conditioned that the data cannot separate `a` from `b`. The curve is still the one the documented rule
    picks, so the same points give the same curve on every machine; only its extrapolation is less certain.
    """

    a: float
    b: float
    c: float
    x: list[float]
    y: list[float]
    residuals: list[float]  # y - L(x), per point
    rmse: float
    method: (
        str  # "interpolation" (3 points, 3 parameters) or "least-squares" (> 3 points, or no curve fits 3)
    )
    identified: bool = True
    note: str = ""
    alternatives: list[dict] = field(
        default_factory=list
    )  # other curves through the same 3 points: {a, b, c}

    def __call__(self, x):
        return power_law(x, self.a, self.b, self.c)

    def to_dict(self) -> dict:
        return asdict(self)


# The family is (x + a)^(-b) + c with x > 0 the multiplier: a in (-min x, _A_MAX], b in _B_RANGE.
_A_MAX = 100.0
_COND_MAX = (
    1e8  # above this scaled Jacobian condition number (> 3 points) the fit is reported as not identified
)


def _a_range(x: np.ndarray) -> tuple[float, float]:
    return -0.999 * float(x.min()), _A_MAX


def _a_grid(x: np.ndarray, n: int = 96) -> np.ndarray:
    """Grid over a, uniform in log(x_min + a): dense near the pole at a = -x_min and at small |a|."""
    lo, hi = _a_range(x)
    xm = float(x.min())
    return np.geomspace(lo + xm, hi + xm, n) - xm


def _ratio_b(a: float, x: np.ndarray, r: float) -> float | None:
    """The unique b > 0 with [f(x0) - f(x1)] / [f(x1) - f(x2)] = r for f = (x + a)^(-b), x0 < x1 < x2.

    With u = log(x + a), p = u1 - u0, q = u2 - u1 the ratio is e^{bq} (e^{bp} - 1) / (e^{bq} - 1), whose log has
    derivative q + p / (1 - e^{-bp}) - q / (1 - e^{-bq}) > 0 (since 1/b <= t / (1 - e^{-bt}) <= t + 1/b): it rises
    strictly from p/q (b -> 0) to infinity, so b exists and is unique iff r > p/q. None otherwise (or if b > 20).
    """
    u = np.log(x + a)
    p, q = float(u[1] - u[0]), float(u[2] - u[1])

    def log_ratio(b: float) -> float:
        return b * q + math.log(math.expm1(b * p)) - math.log(math.expm1(b * q)) - math.log(r)

    lo, hi = _B_RANGE
    if r <= p / q or log_ratio(lo) >= 0 or log_ratio(hi) <= 0:
        return None
    return brentq(log_ratio, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)


def _interpolate(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float]]:
    """Every (a, b, c) of the family through 3 points (x sorted ascending), found as the roots of one equation.

    c drops out of the differences; the ratio of the two differences fixes b for each a (`_ratio_b`); the first
    difference itself (the amplitude, which the family ties to a and b) leaves g(a) = f(x0) - f(x1) - (y0 - y1) = 0.
    Its sign changes on a fine grid of a are refined by brentq, so each root is found to machine precision.
    """
    r = (y[0] - y[1]) / (y[1] - y[2])
    if not (y[0] > y[1] > y[2]) or not math.isfinite(r):
        return []

    def g(a: float) -> float:
        b = _ratio_b(a, x, r)
        if b is None:
            return math.nan
        f = np.power(x + a, -b)
        return float(f[0] - f[1] - (y[0] - y[1]))

    grid = _a_grid(x, 400)
    vals = [g(a) for a in grid]
    roots = []
    for i in range(len(grid) - 1):
        g0, g1 = vals[i], vals[i + 1]
        if not (math.isfinite(g0) and math.isfinite(g1)):
            continue
        if g0 == 0.0:
            roots.append(float(grid[i]))
        elif g0 * g1 < 0:
            roots.append(
                brentq(g, grid[i], grid[i + 1], xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
            )
    out = []
    for a in roots:
        b = _ratio_b(a, x, r)
        if b is not None:
            out.append((a, b, float(np.mean(y - np.power(x + a, -b)))))
    return out


def _best_b(a: float, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """min over b of the squared error with c at its least-squares value (mean gap); returns (sse, b)."""

    def sse(b: float) -> float:
        f = np.power(x + a, -b)
        res = y - f - np.mean(y - f)
        return float(res @ res)

    bs = np.geomspace(*_B_RANGE, 121)
    vals = np.array([sse(b) for b in bs])
    i = int(np.argmin(vals))
    lo, hi = bs[max(i - 1, 0)], bs[min(i + 1, len(bs) - 1)]
    res = minimize_scalar(sse, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13 * hi})
    return (float(res.fun), float(res.x)) if res.fun <= vals[i] else (float(vals[i]), float(bs[i]))


def _least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares by variable projection: c is linear (profiled out), b a bounded 1-D search for each a,
    and a a grid plus a bounded 1-D search of the profile. Every step is a 1-D problem solved to a tight
    tolerance, so the result does not hinge on where a multi-dimensional optimiser happens to stop."""
    grid = _a_grid(x)
    prof = [_best_b(float(a), x, y)[0] for a in grid]
    i = int(np.argmin(prof))
    lo, hi = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
    res = minimize_scalar(
        lambda a: _best_b(a, x, y)[0], bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}
    )
    a = float(res.x) if res.fun <= prof[i] else float(grid[i])
    b = _best_b(a, x, y)[1]
    return a, b, float(np.mean(y - np.power(x + a, -b)))


def _condition(x: np.ndarray, a: float, b: float) -> float:
    """Condition number of the Jacobian of the curve in (log(x_min + a), log b, c) at the points."""
    u = np.log(x + a)
    f = np.exp(-b * u)
    ja = -b * f / (x + a) * (float(x.min()) + a)  # d/d log(x_min + a)
    jb = -b * u * f  # d/d log b
    s = np.linalg.svd(np.column_stack([ja, jb, np.ones_like(x)]), compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def fit_power_law(x, y) -> PowerLawFit:
    """Fit `(x + a)^(-b) + c` to (multiplier, target loss) points: AutoScale's per-domain law (Kang et al. 2024,
    the DDO stage), with a rule that makes the curve a property of the points, not of the machine.

    Domain: a in (-0.999 min x, 100] (the curve stays finite at every observed point), 1e-4 <= b <= 20.

    3 points (the paper's base + two perturbations): the curve interpolates them. Such curves are the roots of one
    equation in a (see `_interpolate`), and there are often two (e.g. a = 0.05, b = 0.25 and a = 0.98, b = 1.53
    through the same points): the rule takes the one with the smallest |a|, the curve closest to the paper's plain
    power law x^(-b) + c, and records the others in `alternatives` (identified = False, since the points cannot
    tell them apart). If no curve of the family passes through the 3 points (they are not decreasing, or bend less
    than a logarithm), the least-squares curve below is used and the fit says so.

    > 3 points: least squares by variable projection (`_least_squares`); reported as not identified when a or b
    sits at its bound or the scaled Jacobian's condition number exceeds 1e8.

    Each step is a root or a 1-D minimum found to near machine precision, so perturbing the losses by 1e-12
    (relative) moves the curve by about that much times the problem's conditioning, on any CPU or BLAS.
    Raises UserError for fewer than 3 distinct multipliers, non-positive multipliers or non-finite losses.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise UserError("power-law fit: x and y must be 1-D and of equal length")
    if len(x) < 3:
        raise UserError(f"power-law fit: needs at least 3 points (base + 2 perturbations), got {len(x)}")
    if len(np.unique(x)) < 3:
        raise UserError(f"power-law fit: needs 3 distinct multipliers, got {sorted(set(x.tolist()))}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or np.any(x <= 0):
        raise UserError("power-law fit: multipliers must be > 0 and losses finite")
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    alternatives: list[dict] = []
    identified, note = True, ""
    if len(x) == 3:
        curves = sorted(_interpolate(xs, ys), key=lambda p: (abs(p[0]), p[0]))
        if curves:
            a, b, c = curves[0]
            method = "interpolation"
            alternatives = [{"a": ca, "b": cb, "c": cc} for ca, cb, cc in curves[1:]]
            if alternatives:
                identified = False
                note = (
                    f"{len(curves)} curves pass through the 3 points; took the one with the smallest |a| "
                    "(closest to a plain power law); more multipliers would decide"
                )
        else:
            a, b, c = _least_squares(xs, ys)
            method = "least-squares"
            identified = False
            note = (
                "no curve of the family passes through the 3 points (the loss does not fall, or bends less "
                "than a logarithm); the least-squares curve is used"
            )
    else:
        a, b, c = _least_squares(xs, ys)
        method = "least-squares"
        cond = _condition(xs, a, b)
        if not math.isfinite(cond) or cond > _COND_MAX:
            identified = False
            note = f"the points cannot separate a from b (condition number {cond:.3g}); use multipliers further apart"

    def near(v: float, bound: float) -> bool:
        return abs(v - bound) <= 1e-6 * max(1.0, abs(bound))

    a_lo, a_hi = _a_range(xs)
    at_bound = [
        n for n, v, lo, hi in (("a", a, a_lo, a_hi), ("b", b, *_B_RANGE)) if near(v, lo) or near(v, hi)
    ]
    if at_bound:
        identified = False
        note = (note + "; " if note else "") + f"{' and '.join(at_bound)} at the bound of its range"
    res = y - power_law(x, a, b, c)
    return PowerLawFit(
        a=float(a),
        b=float(b),
        c=float(c),
        x=x.tolist(),
        y=y.tolist(),
        residuals=res.tolist(),
        rmse=float(np.sqrt(np.mean(res**2))),
        method=method,
        identified=identified,
        note=note,
        alternatives=alternatives,
    )


# ----------------------------------------------------------------------------------------------- DDO solve
@dataclass
class DDOSolution:
    n: np.ndarray  # optimal multipliers
    lam: float  # the KKT multiplier of the budget constraint
    at_lower: list[int] = field(default_factory=list)  # indices held at their lower bound
    at_upper: list[int] = field(default_factory=list)  # indices held at their upper bound
    objective: float = 0.0


def _n_of_lam(lam: float, a, b, s, lo, hi) -> np.ndarray:
    with np.errstate(over="ignore", divide="ignore"):
        n = np.power(lam * s / b, -1.0 / (b + 1.0)) - a
    return np.clip(n, lo, hi)


def ddo_objective(n, a, b) -> float:
    return float(np.sum(np.power(np.asarray(n) + a, -np.asarray(b))))


def solve_ddo(a, b, total: float, scale=None, lower=None, upper=None) -> DDOSolution:
    """min sum_i (n_i + a_i)^(-b_i)  s.t.  sum_i scale_i n_i = total,  lower_i <= n_i <= upper_i.

    `scale` defaults to ones (the paper: sum n_i = m with total = m). Lower bounds are raised to keep n_i + a_i > 0.
    Raises UserError when the bounds cannot meet the budget.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    m = len(a)
    s = np.ones(m) if scale is None else np.asarray(scale, float)
    lo = np.zeros(m) if lower is None else np.asarray(lower, float).copy()
    hi = np.full(m, np.inf) if upper is None else np.asarray(upper, float)
    if np.any(b <= 0) or np.any(s <= 0):
        raise UserError("DDO solve: exponents b and scales must be > 0")
    floor = -a + 1e-9 * np.maximum(1.0, np.abs(a))
    lo = np.maximum(lo, floor)
    if np.any(lo > hi):
        i = int(np.argmax(lo - hi))
        raise UserError(
            f"DDO solve: domain {i} has lower bound {lo[i]:.6g} above its upper bound {hi[i]:.6g}"
        )
    lo_sum = float(s @ lo)
    hi_sum = float(s @ hi) if np.all(np.isfinite(hi)) else math.inf
    if lo_sum > total * (1 + 1e-12):
        raise UserError(
            f"DDO solve: the lower bounds alone need {lo_sum:.6g} > budget {total:.6g}; lower them"
        )
    if hi_sum < total * (1 - 1e-12):
        raise UserError(
            f"DDO solve: the upper bounds (and token caps) allow only {hi_sum:.6g} < budget {total:.6g}; "
            "raise them, allow more epochs, or lower the budget"
        )

    def gap(loglam: float) -> float:
        return float(s @ _n_of_lam(math.exp(loglam), a, b, s, lo, hi)) - total

    lo_l, hi_l = -50.0, 50.0
    while gap(lo_l) < 0 and lo_l > -1e4:
        lo_l *= 2
    while gap(hi_l) > 0 and hi_l < 1e4:
        hi_l *= 2
    if gap(lo_l) * gap(hi_l) > 0:
        n = lo if abs(lo_sum - total) <= abs(hi_sum - total) else hi
        lam = float("nan")
    else:
        loglam = brentq(gap, lo_l, hi_l, xtol=1e-14, rtol=1e-14, maxiter=500)
        lam = math.exp(loglam)
        n = _n_of_lam(lam, a, b, s, lo, hi)
    # spread the last rounding error over the free domains so the budget holds to machine precision
    free = (n > lo + 1e-12) & (n < hi - 1e-12)
    if free.any():
        n = n.copy()
        n[free] += (total - float(s @ n)) / float(s[free].sum())
    tol = 1e-9 * np.maximum(1.0, np.abs(n))
    return DDOSolution(
        n=n,
        lam=lam,
        at_lower=[int(i) for i in np.flatnonzero(n <= lo + tol)],
        at_upper=[int(i) for i in np.flatnonzero(n >= hi - tol)],
        objective=ddo_objective(n, a, b),
    )


def kkt_residual(sol: DDOSolution, a, b, total: float, scale=None, lower=None, upper=None) -> dict:
    """How far `sol` is from the KKT conditions: budget error, and stationarity/sign errors of the gradients.

    With g_i = -b_i (n_i + a_i)^(-b_i - 1) the gradient and mu = lam: free domains need g_i + mu s_i = 0, domains at
    their lower bound g_i + mu s_i >= 0 (more of them would not help), at their upper bound <= 0.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    s = np.ones(len(a)) if scale is None else np.asarray(scale, float)
    n = sol.n
    g = -b * np.power(n + a, -b - 1.0)
    r = (g + sol.lam * s) / np.maximum(np.abs(g), 1e-300)
    worst = 0.0
    for i in range(len(n)):
        if i in sol.at_lower:
            worst = max(worst, -r[i])
        elif i in sol.at_upper:
            worst = max(worst, r[i])
        else:
            worst = max(worst, abs(r[i]))
    return {"budget_error": float(s @ n - total), "stationarity": float(worst)}


# ----------------------------------------------------------------------------------------------- predictor
@dataclass
class Prediction:
    tokens: dict[str, float]
    weights: dict[str, float]
    t: float  # position on the shared scale: 0 = the smallest given budget, 1 = the largest
    ratios: dict[str, float]  # per-domain growth factor per unit of t
    method: str
    fit_rmse: float  # rms error of log N_i over the given optima (0 for two budgets)


def predict_mixture(optima: list[dict[str, float]], budget: float) -> Prediction:
    """AutoScale's predictor: domain i's optimal token count grows geometrically along one shared variable t.

    Two optima (token counts at budgets B1 < B2): N_i(t) = N_i(1) r_i^t with r_i = N_i(2)/N_i(1), so t = 0 and
    t = 1 give back the two optima exactly; t is solved (brentq) so that sum_i N_i(t) = `budget` (t in (0, 1)
    interpolates, t > 1 or t < 0 extrapolates).

    K > 2 optima: the model is log N_i(k) = alpha_i + beta_i s_k with one s_k per budget (log N*_i is affine in the
    log of the KKT multiplier, shared by every domain). Centering each domain's column over k leaves
    beta_i (s_k - mean s), a rank-1 matrix, so the least-squares fit is the leading singular pair of the centered
    K x m matrix of log N (Eckart-Young). s is then fixed affinely so the smallest budget has t = 0 and the
    largest t = 1 (sign chosen so t grows with the budget); alpha_i = mean_k(log N_ik) - beta_i mean(s). With K = 2
    this equals the two-point formula exactly.
    """
    if len(optima) < 2:
        raise UserError("mixture predict: needs the optima at two or more budgets (--from A --from B)")
    if not 0 < budget < math.inf:
        raise UserError(f"mixture predict: the budget must be a finite number > 0 (got {budget:g})")
    names = list(optima[0])
    for o in optima[1:]:
        if set(o) != set(names):
            raise UserError(
                f"mixture predict: the optima cover different domains ({sorted(names)} vs {sorted(o)})"
            )
    for o in optima:
        bad = [n for n in names if not 0 < float(o[n]) < math.inf]
        if bad:  # log(0) was once clamped to log(1e-300): a domain "growing" from nothing, a plausible mixture
            raise UserError(
                f"mixture predict: domain {bad[0]!r} has {float(o[bad[0]]):g} tokens in an optimum; the trend is "
                "geometric in each domain's tokens, so every domain needs a finite count > 0 at every budget"
            )
    order = sorted(range(len(optima)), key=lambda k: sum(optima[k].values()))
    Y = np.array([[math.log(float(optima[k][n])) for n in names] for k in order])
    totals = [sum(optima[k].values()) for k in order]
    if totals[0] == totals[-1]:
        raise UserError(
            "mixture predict: the given optima are all at the same budget; give two different budgets"
        )
    mean = Y.mean(axis=0)
    U, S, Vt = np.linalg.svd(Y - mean, full_matrices=False)
    s = U[:, 0] * S[0]
    beta = Vt[0]
    # affine map: t = (s - s_first) / (s_last - s_first)
    span = s[-1] - s[0]
    if abs(span) < 1e-300:
        raise UserError("mixture predict: the optima do not change between budgets; nothing to extrapolate")
    t_k = (s - s[0]) / span
    beta = beta * span
    alpha = mean - beta * float(t_k.mean())
    fit = alpha[None, :] + beta[None, :] * t_k[:, None]
    rmse = float(np.sqrt(np.mean((fit - Y) ** 2)))

    def total_at(t: float) -> float:
        return float(np.exp(alpha + beta * t).sum())

    lo, hi = -1.0, 2.0
    while total_at(lo) > budget and lo > -1e3:
        lo *= 2
    while total_at(hi) < budget and hi < 1e3:
        hi *= 2
    if (total_at(lo) - budget) * (total_at(hi) - budget) > 0:
        raise UserError(f"mixture predict: no point on the fitted trend has budget {budget:.6g}")
    t = brentq(lambda v: total_at(v) - budget, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=500)
    tok = np.exp(alpha + beta * t)
    tot = float(tok.sum())
    return Prediction(
        tokens={n: float(v) for n, v in zip(names, tok, strict=True)},
        weights={n: float(v / tot) for n, v in zip(names, tok, strict=True)},
        t=float(t),
        ratios={n: float(math.exp(v)) for n, v in zip(names, beta, strict=True)},
        method="two-point geometric"
        if len(optima) == 2
        else f"rank-1 log-linear least squares over {len(optima)}",
        fit_rmse=rmse,
    )
