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
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import OptimizeWarning, brentq, curve_fit

from warmstart.errors import UserError

_B_RANGE = (1e-4, 20.0)


def power_law(x, a: float, b: float, c: float):
    """L(x) = (x + a)^(-b) + c."""
    return np.power(np.asarray(x, dtype=float) + a, -b) + c


@dataclass
class PowerLawFit:
    """A fitted `(x + a)^(-b) + c`, with the points it came from and how well it matches them."""

    a: float
    b: float
    c: float
    x: list[float]
    y: list[float]
    residuals: list[float]  # y - L(x), per point
    rmse: float
    method: str  # "interpolation" (3 points, 3 parameters) or "least-squares" (> 3 points)

    def __call__(self, x):
        return power_law(x, self.a, self.b, self.c)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_power_law(x, y) -> PowerLawFit:
    """Fit `(x + a)^(-b) + c` to (multiplier, target loss) points with scipy's bounded curve_fit.

    Bounds: a > -min(x) (the curve stays finite at every observed point), 1e-4 <= b <= 20, c <= min(y) (the
    power term is positive). For fixed (a, b) the best c is the mean gap, so every point of a grid over (a, b)
    gets its c; curve_fit (trust-region reflective) refines the 8 best and the lowest squared error wins (the
    surface has several basins: a single start can stop in the wrong one). With 3 points the result is an exact
    interpolation that need not be unique (other (a, b, c) can pass through the same points and part ways outside
    them); more multipliers make it a real fit that identifies the parameters.
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
    a_lo = -0.999 * float(x.min())
    c_hi = float(y.min())
    span = float(y.max() - y.min()) + 1.0
    lower, upper = [a_lo, _B_RANGE[0], c_hi - 100.0 * span - 100.0], [100.0, _B_RANGE[1], c_hi]

    starts = []
    a_grid = np.concatenate(
        [a_lo + (0.0 - a_lo) * np.array([0.1, 0.4, 0.7, 0.9]), [0.0, 0.1, 0.3, 1.0, 3.0, 10.0]]
    )
    for a in a_grid:
        for b in np.geomspace(0.02, 8.0, 12):
            f = np.power(x + a, -b)
            c = min(float(np.mean(y - f)), c_hi)
            if c >= lower[2]:
                starts.append((float(np.sum((y - f - c) ** 2)), [float(a), float(b), c]))
    if not starts:
        raise UserError("power-law fit: no starting point; are the losses finite and on a sensible scale?")
    starts.sort(key=lambda t: t[0])
    best_sse, popt = starts[0][0], np.asarray(starts[0][1])
    for _, p0 in starts[:8]:  # the surface has several basins: refine the best few grid points, keep the best
        try:
            # 3 points, 3 parameters: no covariance to estimate, and none is used
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                p, _ = curve_fit(
                    power_law,
                    x,
                    y,
                    p0=p0,
                    bounds=(lower, upper),
                    method="trf",
                    maxfev=20000,
                    xtol=1e-14,
                    ftol=1e-14,
                    gtol=1e-14,
                )
        except RuntimeError:
            continue
        sse = float(np.sum((y - power_law(x, *p)) ** 2))
        if sse < best_sse:
            best_sse, popt = sse, p
    a, b, c = (float(v) for v in popt)
    res = y - power_law(x, a, b, c)
    return PowerLawFit(
        a=a,
        b=b,
        c=c,
        x=x.tolist(),
        y=y.tolist(),
        residuals=res.tolist(),
        rmse=float(np.sqrt(np.mean(res**2))),
        method="interpolation" if len(x) == 3 else "least-squares",
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
    names = list(optima[0])
    for o in optima[1:]:
        if set(o) != set(names):
            raise UserError(
                f"mixture predict: the optima cover different domains ({sorted(names)} vs {sorted(o)})"
            )
    order = sorted(range(len(optima)), key=lambda k: sum(optima[k].values()))
    Y = np.array([[math.log(max(float(optima[k][n]), 1e-300)) for n in names] for k in order])
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
