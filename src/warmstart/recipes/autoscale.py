"""AutoScale end to end: DDO proxy runs -> fitted laws -> optimal mixture (`mixture.json`), and its prediction.

How a multiplier maps to tokens (the paper's reading: perturb one domain, keep the others fixed). With budget N
(the proxy recipe's train.tokens, rounded down to whole steps) and base weights w, the base run trains N tokens,
domain j getting w_j N. The run "domain i x k" gives domain i k w_i N tokens and every other domain the same
w_j N as the base run, so it trains N (1 + (k - 1) w_i) tokens (more for k > 1, fewer for k < 1) with weights
proportional to those amounts. Step counts are whole, so the realised amount of domain i is
steps x batch_tokens minus the others' amounts: the other domains keep exactly their base tokens (the sampler
meets each weight within one sequence) and the fit uses the realised multiplier x = realised tokens / (w_i N),
not the nominal k.

Why not keep the total fixed and renormalise: that would change every other domain's amount too, and the
separable model would attribute their change to domain i. The cost of this reading is that the x3 runs are longer.

The optimum is in the same units: n_i multiplies w_i N, subject to sum_i m w_i n_i = m (sum n_i = m for uniform
base weights, as in the paper's code), so its tokens are n_i w_i N and its weights n_i w_i.

Each proxy run is a normal run directory under MIXTURE_DIR/runs/ (re-running skips finished ones and resumes
interrupted ones). The proxy's training objective is whatever its recipe says; DDO only reads the final
per-domain validation losses.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from warmstart import atomic, jsonfile
from warmstart.config import DDOConfig, Recipe, to_yaml, validate
from warmstart.errors import UserError
from warmstart.recipes.autoscale_laws import fit_power_law, kkt_residual, predict_mixture, solve_ddo

FORMAT = "warmstart-mixture-v1"
Runner = Callable[[Recipe], dict]  # a proxy recipe -> its final eval ({"val/<domain>/loss": ...})


@dataclass
class ProxyRun:
    name: str
    domain: str | None  # the perturbed domain (None: the base run)
    multiplier: float  # nominal k
    steps: int
    weights: dict[str, float]
    tokens: dict[str, float]  # realised tokens per mixed domain
    x: float  # realised multiplier of `domain` (1 for the base run)


def _fmt_mult(k: float) -> str:
    return f"{k:g}"


def plan_runs(cfg: DDOConfig, names: list[str], base: dict[str, float]) -> tuple[int, list[ProxyRun]]:
    """The budget N (whole steps) and the 1 + m x len(multipliers) proxy runs; see the module docstring."""
    batch = cfg.proxy.train.batch_tokens
    requested = cfg.proxy.train.tokens or cfg.proxy.train.steps * batch
    base_steps = requested // batch
    if base_steps < 1:
        raise UserError(f"proxy.train.tokens: {requested} is less than one batch ({batch} tokens)")
    budget = base_steps * batch

    def make(domain: str | None, k: float) -> ProxyRun:
        want = sum(base[d] * budget * (k if d == domain else 1.0) for d in names)
        steps = max(1, round(want / batch))
        total = steps * batch
        # the others keep exactly their base tokens; the perturbed domain absorbs the whole-step rounding
        tokens = {d: base[d] * budget for d in names}
        if domain is not None:
            tokens[domain] = total - sum(v for d, v in tokens.items() if d != domain)
            if tokens[domain] <= 0:
                raise UserError(
                    f"multipliers: {k:g} x {domain!r} rounds to no tokens at batch_tokens {batch}; "
                    "raise the budget or the multiplier"
                )
        weights = {d: round(v / total, 12) for d, v in tokens.items()}
        x = tokens[domain] / (base[domain] * budget) if domain else 1.0
        name = "base" if domain is None else f"{domain}-x{_fmt_mult(k)}"
        return ProxyRun(name, domain, k, steps, weights, tokens, x)

    runs = [make(None, 1.0)] + [make(d, k) for d in names for k in cfg.multipliers]
    return budget, runs


def proxy_recipe(cfg: DDOConfig, run: ProxyRun) -> Recipe:
    """The proxy recipe with this run's name, weights and step count."""
    tree = yaml.safe_load(to_yaml(cfg.proxy))
    tree["name"] = run.name
    tree["out_dir"] = str(cfg.mixture_dir / "runs")
    tree["data"]["weights"] = run.weights
    tree["data"]["weights_from"] = None
    tree["train"]["tokens"] = None
    tree["train"]["steps"] = run.steps
    return validate(Recipe, tree, f"{cfg.name}: proxy run {run.name}")


def train_proxy(recipe: Recipe) -> dict:
    """Run one proxy through the training loop (once: a finished run is read, not re-trained); its final eval."""
    from warmstart.train.runs import run_to_end

    return run_to_end(recipe).final_eval


def target_weights(cfg: DDOConfig, eval_names: list[str]) -> dict[str, float]:
    """The validation target as weights over eval domains (summing to 1)."""
    if cfg.target == "avg":
        tw = {d: 1.0 for d in eval_names}
    elif isinstance(cfg.target, list):
        tw = {d: 1.0 for d in cfg.target}
    else:
        tw = {d: float(w) for d, w in cfg.target.items() if w > 0}
    for d in tw:
        if d not in eval_names:
            raise UserError(f"target: {d!r} is not an evaluated domain (have: {', '.join(eval_names)})")
    total = sum(tw.values())
    return {d: w / total for d, w in tw.items()}


def _target_loss(final_eval: dict, tw: dict[str, float], run: str, run_dir: Path | None = None) -> float:
    """The proxy's target loss; UserError naming the run when a loss is missing or not a finite number (a
    diverged proxy: NaN in memory, null once read back from its summary.json), which would otherwise reach
    the power-law fit as a point and come out as a mixture."""
    where = f" ({run_dir})" if run_dir is not None else ""
    try:
        losses = {d: final_eval[f"val/{d}/loss"] for d in tw}
    except KeyError as e:
        raise UserError(f"proxy run {run}: no final validation loss {e.args[0]}") from None
    for d, v in losses.items():
        if not isinstance(v, int | float) or not math.isfinite(v):
            raise UserError(
                f"proxy run {run}{where}: its final val/{d}/loss is {v if v is None else float(v)} (the run "
                "diverged?); no power law can be fitted through it: lower proxy.schedule.max_lr and delete the run "
                "directory to train it again"
            )
    return float(sum(w * losses[d] for d, w in tw.items()))


def _domains(cfg: DDOConfig) -> tuple[list[str], list[str], dict[str, int]]:
    from warmstart.data.shards import open_data_dir

    data = open_data_dir(cfg.proxy.data.dir)
    names = list(cfg.domains) if cfg.domains is not None else list(data)
    for d in names + list(cfg.base_weights) + list(cfg.bounds):
        if d not in data:
            raise UserError(f"{cfg.name}: no domain {d!r} in {cfg.proxy.data.dir} (have: {', '.join(data)})")
    for d in list(cfg.base_weights) + list(cfg.bounds):
        if d not in names:
            raise UserError(
                f"{cfg.name}: {d!r} has base weights/bounds but is not one of the mixed domains {names}"
            )
    if len(names) < 2:
        raise UserError(f"{cfg.name}: DDO mixes at least two domains (got {names})")
    evals = cfg.proxy.eval.domains if cfg.proxy.eval.domains is not None else list(data)
    return names, evals, {d: data[d].n_tokens("train") for d in names}


def run_ddo(cfg: DDOConfig, runner: Runner | None = None) -> dict:
    """Proxy runs, per-domain fits, the bounded and capped solve; writes and returns MIXTURE_DIR/mixture.json."""
    runner = runner or train_proxy
    names, eval_names, available = _domains(cfg)
    raw = {d: float(cfg.base_weights.get(d, 1.0 if not cfg.base_weights else 0.0)) for d in names}
    missing = [d for d, w in raw.items() if w <= 0]
    if missing:
        raise UserError(f"base_weights: give every mixed domain a weight > 0 (missing: {missing})")
    base = {d: w / sum(raw.values()) for d, w in raw.items()}
    tw = target_weights(cfg, eval_names)
    budget, runs = plan_runs(cfg, names, base)
    cfg.mixture_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(cfg.mixture_dir / "ddo.yaml", to_yaml(cfg))

    records = []
    for i, run in enumerate(runs):
        print(f"[ddo] proxy {i + 1}/{len(runs)}: {run.name} ({run.steps} steps)")
        final = runner(proxy_recipe(cfg, run))
        records.append((run, final, _target_loss(final, tw, run.name, cfg.mixture_dir / "runs" / run.name)))
    base_loss = records[0][2]

    fits = {}
    for d in names:
        pts = [(1.0, base_loss)] + [(r.x, y) for r, _, y in records if r.domain == d]
        fits[d] = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
        if not fits[d].identified:
            print(f"[ddo] {d}: {fits[d].note}")

    m = len(names)
    w = np.array([base[d] for d in names])
    a = np.array([fits[d].a for d in names])
    b = np.array([fits[d].b for d in names])
    lower = np.array([cfg.bounds.get(d, (0.0, 1.0))[0] / base[d] for d in names])
    upper = np.array([cfg.bounds.get(d, (0.0, 1.0))[1] / base[d] for d in names])
    caps = {}
    for j, d in enumerate(names):
        cap_tokens = available[d] * cfg.max_epochs if cfg.max_epochs is not None else math.inf
        cap_mult = cap_tokens / (base[d] * budget)
        caps[d] = {
            "available_tokens": available[d],
            "max_epochs": cfg.max_epochs,
            "cap_tokens": cap_tokens if math.isfinite(cap_tokens) else None,
            "binding": cap_mult < upper[j],
        }
        upper[j] = min(upper[j], cap_mult)
    scale, total = m * w, float(m)
    sol = solve_ddo(a, b, total, scale=scale, lower=lower, upper=upper)
    kkt = kkt_residual(sol, a, b, total, scale=scale, lower=lower, upper=upper)
    for j, d in enumerate(names):
        caps[d]["capped"] = bool(caps[d]["binding"] and j in sol.at_upper)
        caps[d].pop("binding")

    weights = {d: float(sol.n[j] * w[j]) for j, d in enumerate(names)}
    wsum = sum(weights.values())
    weights = {d: v / wsum for d, v in weights.items()}
    change = float(sum(fits[d](sol.n[j]) - fits[d](1.0) for j, d in enumerate(names)))
    mixture = {
        "format": FORMAT,
        "kind": "ddo",
        "name": cfg.name,
        "budget": budget,
        "weights": weights,
        "tokens": {d: weights[d] * budget for d in names},
        "multipliers": {d: float(sol.n[j]) for j, d in enumerate(names)},
        "base_weights": base,
        "target": tw,
        "predicted_loss": {
            "base_measured": base_loss,
            "optimum": base_loss + change,
            "change": change,
            "note": "separable power-law model: base run's target plus the sum of per-domain fitted changes",
        },
        "fits": {
            d: {**fits[d].to_dict(), "form": "(x + a)^(-b) + c, x = multiple of the base amount"}
            for d in names
        },
        "solver": {
            "method": "KKT closed form with active bounds (brentq on the budget multiplier)",
            "constraint": "sum_i m w_i n_i = m",
            "lam": sol.lam,
            "at_lower": [names[j] for j in sol.at_lower],
            "at_upper": [names[j] for j in sol.at_upper],
            "kkt": kkt,
            "bounds": {
                d: [float(lower[j] * w[j]), float(min(upper[j] * w[j], 1.0))] for j, d in enumerate(names)
            },
        },
        "caps": caps,
        "proxy_runs": [
            {
                "name": r.name,
                "run_dir": str(cfg.mixture_dir / "runs" / r.name),
                "domain": r.domain,
                "multiplier": r.multiplier,
                "x": r.x,
                "steps": r.steps,
                "weights": r.weights,
                "tokens": r.tokens,
                "target_loss": y,
                "final_eval": {k: v for k, v in final.items() if k.endswith("/loss")},
            }
            for r, final, y in records
        ],
        "proxy": {
            "model": cfg.proxy.model.model_dump(mode="json"),
            "batch_tokens": cfg.proxy.train.batch_tokens,
            "seq_len": cfg.proxy.data.seq_len,
            "data_dir": os.path.abspath(cfg.proxy.data.dir),  # readable from any working directory
        },
    }
    atomic.write_json(cfg.mixture_dir / "mixture.json", mixture)
    print(f"[ddo] wrote {cfg.mixture_dir / 'mixture.json'}")
    return mixture


# ----------------------------------------------------------------------------------------------- predict
def read_mixture(path: str | Path) -> dict:
    """A mixture.json (or a directory holding one) with a `tokens` table and a `budget`."""
    p = Path(path)
    if p.is_dir():
        p = p / "mixture.json"
    if not p.is_file():
        raise UserError(f"{path}: no mixture.json (run `warmstart mixture ddo` first)")
    try:
        mix = jsonfile.loads(p.read_text())
        tokens = {k: float(v) for k, v in mix["tokens"].items()}
    except jsonfile.DuplicateKeyError as e:
        raise UserError(f"{p}: {e}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{p}: not a mixture file (needs 'tokens' per domain and 'budget')") from None
    for d, v in tokens.items():  # the predictor takes logarithms: NaN, infinity or <= 0 has none that means anything
        if not 0 < v < math.inf:
            raise UserError(
                f"{p}: tokens.{d} is {v:g}; the scale predictor follows each domain's log token count, so every "
                "domain needs a finite count > 0 at every budget (a DDO domain held at a lower bound of 0 gets none: give it "
                "a positive `bounds` minimum, or leave it out of `domains`)"
            )
    mix["tokens"], mix["_path"] = tokens, str(p)
    return mix


def parse_tokens(text: str | float | int) -> float:
    """'5e6', '400k', '1.2M', '3B' -> tokens."""
    s = str(text).strip()
    mult = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}.get(s[-1:].lower())
    try:
        value = float(s[:-1]) * mult if mult else float(s)
    except ValueError:
        raise UserError(
            f"--budget: expected a token count like 5e6, 400k, 1.2M or 3B (got {text!r})"
        ) from None
    if not 0 < value < math.inf:  # 'inf', '1e400' or 'infk' would extrapolate the trend without end
        raise UserError(f"--budget: must be a finite number > 0 (got {text!r})")
    return value


def check_prediction_out(out: str | Path) -> Path:
    """Where `mixture predict --out` writes: a directory means DIR/mixture.json. An existing file is replaced
    only when it is a warmstart mixture file (never some other file of the user's); the location must be
    writable. Raises UserError naming --out."""
    from warmstart.outputs import check_out_file

    out = Path(out)
    if out.is_dir():
        out = out / "mixture.json"
    check_out_file(out, "--out")
    if out.exists():
        try:
            fmt = json.loads(out.read_text(encoding="utf-8")).get("format")
        except (ValueError, AttributeError, UnicodeDecodeError):
            fmt = None
        if fmt != FORMAT:
            raise UserError(f"--out: {out} exists and is not a mixture file; choose another --out")
    return out


def predict(sources: list[str | Path], budget: float, out: str | Path | None = None) -> dict:
    """AutoScale's prediction from DDO optima at two or more budgets; writes a mixture.json when `out` is given."""
    mixes = [read_mixture(s) for s in sources]
    pred = predict_mixture([m["tokens"] for m in mixes], budget)
    mixture = {
        "format": FORMAT,
        "kind": "prediction",
        "budget": budget,
        "weights": pred.weights,
        "tokens": pred.tokens,
        "t": pred.t,
        "ratios": pred.ratios,
        "method": pred.method,
        "fit_rmse_log_tokens": pred.fit_rmse,
        "extrapolation": not 0.0 <= pred.t <= 1.0,
        "sources": [
            {"path": m["_path"], "budget": sum(m["tokens"].values()), "weights": m.get("weights")}
            for m in mixes
        ],
    }
    if out is not None:
        out = Path(out)
        if out.is_dir():
            out = out / "mixture.json"
        atomic.write_json(out, mixture)
        print(f"[predict] wrote {out}")
    return mixture


def weights_table(columns: dict[str, dict], title: str = "mixture weights") -> dict:
    """Domains as rows, one column per mixture (a `warmstart.tables` table: print it with `text_table`)."""
    names = list(next(iter(columns.values()))["weights"])
    rows = [[d, *(columns[c]["weights"][d] for c in columns)] for d in names]
    return {"title": title, "columns": ["domain", *columns], "formats": ["str"] + ["frac"] * len(columns), "rows": rows}

