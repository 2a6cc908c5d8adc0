"""AutoScale: power-law fits, the bounded/capped DDO solve, the scale predictor, and DDO end to end."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import yaml
from scipy.optimize import minimize
from train_helpers import tiny_recipe_tree

from warmstart.cli import main
from warmstart.config import DDOConfig, Recipe, validate
from warmstart.errors import UserError
from warmstart.recipes.autoscale import plan_runs, predict, run_ddo, train_proxy
from warmstart.recipes.autoscale_laws import (
    fit_power_law,
    kkt_residual,
    power_law,
    predict_mixture,
    solve_ddo,
)
from warmstart.train.checkpoint import list_checkpoints, load_state

PAPER_03B = [0.223, 0.029, 0.166, 0.203, 0.214, 0.097, 0.068]
PAPER_12B = [0.233, 0.029, 0.186, 0.173, 0.262, 0.089, 0.029]
PAPER_PRED = [0.234, 0.027, 0.200, 0.142, 0.308, 0.077, 0.012]
RP = ["cc", "github", "books", "wiki", "c4", "stackexchange", "arxiv"]


# ----------------------------------------------------------------------------------------------- predictor
def test_predictor_reproduces_the_papers_one_step_prediction():
    n1 = {d: 0.3e9 * w for d, w in zip(RP, PAPER_03B, strict=True)}
    n2 = {d: 1.2e9 * w for d, w in zip(RP, PAPER_12B, strict=True)}
    budget = sum(n2[d] ** 2 / n1[d] for d in RP)
    assert budget == pytest.approx(5.0e9, rel=0.01)
    pred = predict_mixture([n1, n2], budget)
    assert pred.t == pytest.approx(2.0, abs=1e-9)  # N_i(2)^2/N_i(1) is exactly t = 2
    assert sum(pred.tokens.values()) == pytest.approx(budget, rel=1e-12)
    for d, want in zip(RP, PAPER_PRED, strict=True):
        assert pred.weights[d] == pytest.approx(want, abs=0.0025), d
    # t = 0 and t = 1 give back the two optima: interpolation and extrapolation lie on one curve
    back = predict_mixture([n2, n1], 1.2e9 * sum(PAPER_12B))  # order of the inputs does not matter
    for d in RP:
        assert back.tokens[d] == pytest.approx(n2[d], rel=1e-9)
    mid = predict_mixture([n1, n2], 0.6e9)
    assert 0 < mid.t < 1 and not (0 <= predict_mixture([n1, n2], 3e9).t <= 1)


def test_predictor_with_three_budgets_fits_the_shared_log_linear_trend():
    alpha = np.log([3.0, 1.0, 0.5])
    beta = np.array([0.7, 1.1, 0.2])
    names = ["a", "b", "c"]
    opt = [
        {n: float(np.exp(al + be * s)) for n, al, be in zip(names, alpha, beta, strict=True)}
        for s in (0.0, 0.4, 1.0)
    ]
    target = float(np.exp(alpha + beta * 2.5).sum())
    pred = predict_mixture(opt, target)
    assert pred.fit_rmse < 1e-12 and pred.method.startswith("rank-1")
    assert pred.t == pytest.approx(2.5, rel=1e-9)
    for n, al, be in zip(names, alpha, beta, strict=True):
        assert pred.tokens[n] == pytest.approx(np.exp(al + be * 2.5), rel=1e-9)
    opt[1]["a"] *= 1.2  # off the trend: a least-squares fit, no longer exact
    assert predict_mixture(opt, target).fit_rmse > 1e-3


def test_predictor_rejects_bad_inputs():
    with pytest.raises(UserError, match="two or more"):
        predict_mixture([{"a": 1.0}], 2.0)
    with pytest.raises(UserError, match="different domains"):
        predict_mixture([{"a": 1.0, "b": 1.0}, {"a": 2.0, "c": 2.0}], 5.0)


# ----------------------------------------------------------------------------------------------- fits
@pytest.mark.parametrize("a,b,c", [(0.1, 0.6, 3.0), (-0.1, 0.3, 4.5), (0.5, 1.5, 2.2)])
def test_fit_interpolates_three_points_and_recovers_parameters_from_more(a, b, c):
    """3 points, 3 parameters: an exact interpolation, which need not be unique (the family can pass through the
    same three points with other (a, b, c)), so the parameters are only identified with more multipliers."""
    x = [0.2, 1.0, 3.0]
    fit = fit_power_law(x, power_law(x, a, b, c))
    assert fit.method == "interpolation"
    assert fit.rmse < 1e-9
    x6 = [0.2, 0.5, 1.0, 2.0, 3.0, 6.0]
    fit6 = fit_power_law(x6, power_law(x6, a, b, c))
    assert fit6.method == "least-squares"
    assert (fit6.a, fit6.b, fit6.c) == pytest.approx((a, b, c), abs=1e-3)


def test_fit_is_least_squares_with_more_points_and_reports_residuals():
    rng = np.random.default_rng(0)
    x = np.array([0.2, 0.33, 0.5, 1.0, 2.0, 3.0, 5.0])
    y = power_law(x, 0.15, 0.8, 3.0) + rng.normal(0, 1e-3, len(x))
    fit = fit_power_law(x, y)
    assert fit.method == "least-squares"
    assert fit.b == pytest.approx(0.8, abs=0.05) and fit.a == pytest.approx(0.15, abs=0.03)
    assert fit.c == pytest.approx(3.0, abs=0.02)
    assert np.allclose(fit.residuals, y - power_law(x, fit.a, fit.b, fit.c))
    assert 1e-4 < fit.rmse < 3e-3


def test_three_point_rule_takes_the_curve_with_the_smallest_shift_and_lists_the_others():
    """Two curves of the family pass through these 3 points; the documented rule takes the smaller |a|, whatever the
    order of the points, and records the other one (which passes through them too)."""
    x = [3.0, 0.2, 1.0]
    y = power_law(x, 0.05, 0.25, 2.0)
    fit = fit_power_law(x, y)
    assert fit.method == "interpolation" and not fit.identified and "smallest |a|" in fit.note
    assert (fit.a, fit.b, fit.c) == pytest.approx((0.05, 0.25, 2.0), rel=1e-9)
    assert len(fit.alternatives) == 1
    alt = fit.alternatives[0]
    assert abs(alt["a"]) > abs(fit.a) + 0.5
    assert np.max(np.abs(power_law(x, alt["a"], alt["b"], alt["c"]) - y)) < 1e-12
    assert fit_power_law(sorted(x), power_law(sorted(x), 0.05, 0.25, 2.0)).a == pytest.approx(
        fit.a, rel=1e-12
    )


def test_three_points_no_curve_passes_through_gives_the_least_squares_curve_and_says_so():
    # the loss falls more from x = 1 to 3 than from 0.2 to 1: it bends less than a logarithm
    x, y = [0.2, 1.0, 3.0], [6.0816, 5.9781, 5.8111]
    fit = fit_power_law(x, y)
    assert fit.method == "least-squares" and not fit.identified and "no curve" in fit.note
    assert fit.rmse > 1e-3 and np.allclose(fit.residuals, np.array(y) - fit(np.array(x)))
    up = fit_power_law(x, [5.0, 5.2, 5.1])  # does not fall at all
    assert up.method == "least-squares" and not up.identified


@pytest.mark.parametrize("a,b,c", [(0.1, 0.6, 3.0), (-0.1, 0.3, 4.5), (0.2, 0.5, 2.0), (0.1, 0.9, 2.0)])
@pytest.mark.parametrize("n", [3, 6])
def test_fit_is_stable_under_a_1e_12_perturbation(a, b, c, n):
    x = [0.2, 1.0, 3.0] if n == 3 else [0.2, 0.5, 1.0, 2.0, 3.0, 6.0]
    y = power_law(x, a, b, c)
    base = fit_power_law(x, y)
    for k in (1, -1):
        f = fit_power_law(x, y * (1 + k * 1e-12 * np.array([1, -2, 3, -1, 2, -3][:n])))
        assert (f.a, f.b, f.c) == pytest.approx((base.a, base.b, base.c), rel=1e-6, abs=1e-9)
        assert f.method == base.method and f.identified == base.identified


def test_more_points_are_identified_unless_they_cannot_separate_a_from_b():
    x6 = [0.2, 0.5, 1.0, 2.0, 3.0, 6.0]
    assert fit_power_law(x6, power_law(x6, 0.1, 0.6, 3.0)).identified
    close = [1.0, 1.0001, 1.0002, 1.0003]  # a tiny range: the local slope and curvature cannot pin a and b
    fit = fit_power_law(close, power_law(close, 0.1, 0.6, 3.0))
    assert not fit.identified and fit.note


def test_fit_needs_three_distinct_points():
    with pytest.raises(UserError, match="3 distinct"):
        fit_power_law([1.0, 1.0, 3.0], [4.0, 4.0, 3.0])


# ----------------------------------------------------------------------------------------------- solve
def _slsqp(a, b, scale, total, lo, hi):
    res = minimize(
        lambda n: np.sum((n + a) ** (-b)),
        x0=np.clip(np.full(len(a), total / scale.sum()), lo, hi),
        jac=lambda n: -b * (n + a) ** (-b - 1),
        method="SLSQP",
        bounds=list(zip(lo, hi, strict=True)),
        constraints=[{"type": "eq", "fun": lambda n: scale @ n - total, "jac": lambda n: scale}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return res.x


@pytest.mark.parametrize("seed", range(6))
def test_solver_meets_kkt_bounds_and_agrees_with_slsqp(seed):
    rng = np.random.default_rng(seed)
    m = 5
    a, b = rng.uniform(0.0, 1.0, m), rng.uniform(0.1, 2.0, m)
    scale = rng.uniform(0.5, 2.0, m)
    lo, hi = rng.uniform(0.0, 0.4, m), rng.uniform(1.0, 3.0, m)
    total = float(scale @ (lo + hi) / 2)
    sol = solve_ddo(a, b, total, scale=scale, lower=lo, upper=hi)
    kkt = kkt_residual(sol, a, b, total, scale=scale, lower=lo, upper=hi)
    assert abs(kkt["budget_error"]) < 1e-9 and kkt["stationarity"] < 1e-8
    assert np.all(sol.n >= lo - 1e-12) and np.all(sol.n <= hi + 1e-12)
    ref = _slsqp(a, b, scale, total, lo, hi)
    assert sol.objective <= np.sum((ref + a) ** (-b)) + 1e-10
    assert np.allclose(sol.n, ref, atol=1e-4)


def test_solver_holds_a_capped_domain_and_reoptimises_the_rest():
    # domain 0's loss falls fastest: it wants the most
    a, b = np.array([0.1, 0.1, 0.1]), np.array([2.0, 0.5, 0.5])
    free = solve_ddo(a, b, 3.0)
    assert free.n[0] > 1.2
    capped = solve_ddo(a, b, 3.0, upper=[1.0, np.inf, np.inf])
    assert capped.n[0] == pytest.approx(1.0) and capped.at_upper == [0]
    # the rest share what is left
    assert capped.n[1] == pytest.approx(1.0) and capped.n[2] == pytest.approx(1.0)
    with pytest.raises(UserError, match="allow only"):
        solve_ddo(a, b, 3.0, upper=[0.5, 0.5, 0.5])


# ----------------------------------------------------------------------------------------------- DDO e2e (oracle)
TRUE = {"a": (0.05, 0.25), "b": (0.1, 0.9), "c": (0.2, 0.5)}  # domain -> (a_i, b_i) of the synthetic truth


@pytest.fixture(scope="module")
def three_domain_dir(tmp_path_factory, tokenizer_dir):
    from conftest import _stdlib_texts

    from warmstart.data import prepare

    texts = _stdlib_texts()
    root = tmp_path_factory.mktemp("three")
    parts = {"a": texts["code"][:20], "b": texts["code"][20:], "c": texts["prose"]}
    domains = {}
    for name, docs in parts.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        domains[name] = [{"path": str(root / f"{name}.jsonl")}]
    prepare(
        {"tokenizer": str(tokenizer_dir), "out": str(root / "shards"), "domains": domains, "val_docs": 4},
        progress=False,
    )
    return root / "shards"


def _ddo_cfg(data_dir, tokenizer_dir, out, **kw) -> DDOConfig:
    proxy = tiny_recipe_tree(data_dir, tokenizer_dir, out, "proxy", data={"weights": {}})
    proxy["train"] = {"tokens": 256 * 40, "batch_tokens": 256, "micro_batch_size": 4, "progress": False}
    return validate(DDOConfig, {"name": "mix", "out_dir": str(out), "proxy": proxy, **kw})


def _oracle(budget, noise):
    """The synthetic truth: separable power laws in each domain's tokens, in units of its base amount."""
    calls = []

    def run(recipe: Recipe) -> dict:
        calls.append(recipe.name)
        total = recipe.train.steps * recipe.train.batch_tokens
        ws = recipe.data.weights
        x = {d: total * ws[d] / sum(ws.values()) / (budget / 3) for d in TRUE}
        loss = 2.0 + sum((x[d] + a) ** (-b) for d, (a, b) in TRUE.items())
        rng = np.random.default_rng(zlib.crc32(recipe.name.encode()))
        return {f"val/{d}/loss": loss + rng.normal(0, noise) for d in TRUE}

    run.calls = calls
    return run


def _true_optimum(budget, lo=None, hi=None, step=5e-4):
    """Brute force on a fine grid of the weight simplex (independent of the solver)."""
    g = np.arange(0, 1 + step / 2, step)
    w0, w1 = np.meshgrid(g, g, indexing="ij")
    w2 = 1 - w0 - w1
    ws = np.stack([w0, w1, w2])
    ok = w2 >= -1e-12
    for j, d in enumerate(TRUE):
        if lo and d in lo:
            ok &= ws[j] >= lo[d] - 1e-12
        if hi and d in hi:
            ok &= ws[j] <= hi[d] + 1e-12
    loss = sum((np.maximum(ws[j], 0) * 3 + a) ** (-b) for j, (a, b) in enumerate(TRUE.values()))
    loss = np.where(ok, loss, np.inf)
    i = np.unravel_index(np.argmin(loss), loss.shape)
    return {d: float(ws[j][i]) for j, d in enumerate(TRUE)}


def test_ddo_recovers_the_oracles_optimum(three_domain_dir, tokenizer_dir, tmp_path):
    cfg = _ddo_cfg(three_domain_dir, tokenizer_dir, tmp_path, multipliers=[0.2, 0.5, 2.0, 3.0])
    oracle = _oracle(256 * 40, noise=2e-4)
    mix = run_ddo(cfg, runner=oracle)
    assert len(oracle.calls) == 1 + 3 * 4 and oracle.calls[0] == "base"
    want = _true_optimum(256 * 40)
    for d in TRUE:
        assert mix["weights"][d] == pytest.approx(want[d], abs=0.01), d
        assert mix["fits"][d]["method"] == "least-squares"
        assert mix["fits"][d]["b"] == pytest.approx(TRUE[d][1], rel=0.15)
    assert sum(mix["weights"].values()) == pytest.approx(1.0)
    assert mix["predicted_loss"]["optimum"] < mix["predicted_loss"]["base_measured"]
    assert mix["solver"]["kkt"]["stationarity"] < 1e-8
    on_disk = json.loads((tmp_path / "mix" / "mixture.json").read_text())
    assert on_disk["weights"] == mix["weights"]


def _true_law_optimum(hi=None):
    """The oracle's own law solved by scipy's SLSQP (independent of `solve_ddo`): weights, sum to 1."""
    a = np.array([TRUE[d][0] for d in TRUE])
    b = np.array([TRUE[d][1] for d in TRUE])
    upper = np.array([3 * (hi or {}).get(d, 1.0) for d in TRUE])
    n = _slsqp(a, b, np.ones(3), 3.0, np.zeros(3), upper)
    return {d: float(n[j] / 3) for j, d in enumerate(TRUE)}


def test_ddo_respects_bounds_and_token_caps(three_domain_dir, tokenizer_dir, tmp_path):
    """The oracle is noiseless and its law is in the fitted family, so the 3-point rule gives back its curve and
    the mixture equals the law's optimum to the solvers' precision (SLSQP's 1e-6 sets the tolerance)."""
    budget = 256 * 40
    free = _true_law_optimum()
    assert free == pytest.approx(_true_optimum(budget), abs=1e-3)  # the brute-force grid agrees (step 5e-4)
    top = max(free, key=free.get)
    # a bound below the free optimum of the favourite domain
    cfg = _ddo_cfg(three_domain_dir, tokenizer_dir, tmp_path / "b", bounds={top: [0.0, free[top] - 0.1]})
    mix = run_ddo(cfg, runner=_oracle(budget, noise=0.0))
    for d, (a, b) in TRUE.items():
        f = mix["fits"][d]
        assert f["method"] == "interpolation" and (f["a"], f["b"]) == pytest.approx((a, b), rel=1e-7)
    assert mix["weights"][top] == pytest.approx(free[top] - 0.1, abs=1e-12)
    assert mix["solver"]["at_upper"] == [top]
    assert mix["solver"]["kkt"]["stationarity"] < 1e-9 and abs(mix["solver"]["kkt"]["budget_error"]) < 1e-12
    want = _true_law_optimum(hi={top: free[top] - 0.1})
    for d in TRUE:
        assert mix["weights"][d] == pytest.approx(want[d], abs=1e-6), d
    # a cap from the domain's available tokens x max_epochs
    from warmstart.data.shards import open_data_dir

    avail = open_data_dir(three_domain_dir)[top].n_tokens("train")
    cap_w = free[top] - 0.15
    cfg = _ddo_cfg(three_domain_dir, tokenizer_dir, tmp_path / "c", max_epochs=cap_w * budget / avail)
    mix = run_ddo(cfg, runner=_oracle(budget, noise=0.0))
    assert mix["caps"][top]["capped"] is True
    assert mix["tokens"][top] == pytest.approx(avail * cfg.max_epochs, rel=1e-9)
    want = _true_law_optimum(hi={top: cap_w})
    for d in TRUE:
        assert mix["weights"][d] == pytest.approx(want[d], abs=1e-6), d
        assert mix["caps"][d]["capped"] is (d == top)


def test_ddo_mixture_is_stable_under_a_1e_12_perturbation_of_the_proxy_losses(
    three_domain_dir, tokenizer_dir, tmp_path
):
    """The mixture is a property of the proxy losses, not of the machine's rounding: a relative change of 1e-12
    in every loss (far more than a different BLAS or libm makes) moves no weight by more than 1e-8."""
    budget = 256 * 40

    def perturbed(sign):
        exact = _oracle(budget, noise=0.0)

        def run(recipe):
            out = exact(recipe)
            k = zlib.crc32(recipe.name.encode()) % 7 - 3  # a different tiny change per run, up to 3e-12
            return {key: v * (1 + sign * k * 1e-12) for key, v in out.items()}

        return run

    mixes = [
        run_ddo(_ddo_cfg(three_domain_dir, tokenizer_dir, tmp_path / str(i)), runner=r)
        for i, r in enumerate([_oracle(budget, noise=0.0), perturbed(1), perturbed(-1)])
    ]
    for mix in mixes[1:]:
        for d in TRUE:
            assert abs(mix["weights"][d] - mixes[0]["weights"][d]) < 1e-8, d
            assert mix["fits"][d]["a"] == pytest.approx(mixes[0]["fits"][d]["a"], rel=1e-6)


def test_plan_perturbs_one_domain_and_keeps_the_others(three_domain_dir, tokenizer_dir, tmp_path):
    cfg = _ddo_cfg(three_domain_dir, tokenizer_dir, tmp_path)
    budget, runs = plan_runs(cfg, list(TRUE), {d: 1 / 3 for d in TRUE})
    assert budget == 256 * 40 and [r.name for r in runs][:3] == ["base", "a-x0.2", "a-x3"]
    up = runs[2]  # a x3: domain a gets ~3x its base tokens, the others keep theirs; total grows
    assert up.tokens["a"] == pytest.approx(3 * budget / 3, rel=0.02)
    assert up.tokens["b"] == pytest.approx(budget / 3, rel=1e-12)
    assert sum(up.tokens.values()) == up.steps * 256
    assert up.steps == round(budget * (1 + 2 / 3) / 256)
    assert up.x == pytest.approx(up.tokens["a"] / (budget / 3))


def test_ddo_config_rejects_bad_input(data_dir, tokenizer_dir, tmp_path):
    proxy = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path, "proxy")  # has data.weights
    with pytest.raises(UserError, match="proxy.data.weights"):
        validate(DDOConfig, {"name": "m", "proxy": proxy})
    proxy["data"]["weights"] = {}
    with pytest.raises(UserError, match="multipliers"):
        validate(DDOConfig, {"name": "m", "proxy": proxy, "multipliers": [1.0, 3.0]})
    cfg = validate(DDOConfig, {"name": "m", "out_dir": str(tmp_path), "proxy": proxy, "target": ["nope"]})
    with pytest.raises(UserError, match="target: 'nope'"):
        run_ddo(cfg, runner=lambda r: {})


# ----------------------------------------------------------------------------------------------- real tiny DDO
def test_real_tiny_ddo_rerun_skips_and_train_uses_the_mixture(data_dir, tokenizer_dir, tmp_path, capsys):
    proxy = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path, "proxy", data={"weights": {}})
    proxy["train"] = {"tokens": 256 * 5, "batch_tokens": 256, "micro_batch_size": 8, "progress": False}
    proxy["eval"] = {"every": 1000, "max_tokens": 256, "batch_size": 8}
    recipe = tmp_path / "ddo.yaml"
    recipe.write_text(
        yaml.safe_dump({"name": "tiny", "out_dir": str(tmp_path / "mix"), "proxy": proxy, "max_epochs": 50})
    )
    assert main(["mixture", "ddo", str(recipe)]) == 0
    mdir = tmp_path / "mix" / "tiny"
    mix = json.loads((mdir / "mixture.json").read_text())
    runs = sorted(p.name for p in (mdir / "runs").iterdir())
    assert runs == ["base", "code-x0.2", "code-x3", "prose-x0.2", "prose-x3"]
    assert [r["name"] for r in mix["proxy_runs"]] == runs
    for r in mix["proxy_runs"]:
        summary = json.loads((mdir / "runs" / r["name"] / "summary.json").read_text())
        assert summary["steps"] == r["steps"]
        assert r["target_loss"] == pytest.approx(summary["final_eval"]["val/avg/loss"])
    assert set(mix["weights"]) == {"code", "prose"} and sum(mix["weights"].values()) == pytest.approx(1.0)
    assert mix["budget"] == 256 * 5 and sum(mix["tokens"].values()) == pytest.approx(256 * 5)
    for f in mix["fits"].values():  # 3 points: an exact curve, or (none passes through them) a flagged one
        assert len(f["residuals"]) == 3
        assert f["rmse"] < 1e-9 if f["method"] == "interpolation" else (not f["identified"] and f["note"])
    assert {"base_measured", "optimum", "change"} <= set(mix["predicted_loss"])

    stamps = {p: p.stat().st_mtime_ns for p in (mdir / "runs").rglob("*") if p.is_file()}
    assert main(["mixture", "ddo", str(recipe)]) == 0
    assert capsys.readouterr().out.count("complete; skipping") == 5
    assert {p: p.stat().st_mtime_ns for p in (mdir / "runs").rglob("*") if p.is_file()} == stamps
    assert json.loads((mdir / "mixture.json").read_text())["weights"] == mix["weights"]

    # `warmstart train` reads the mixture's weights: the sampler's counts follow them
    tree = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", "use", data={"weights": {}})
    tree["data"]["weights_from"] = str(mdir / "mixture.json")
    tree["train"]["steps"] = 8
    (tmp_path / "use.yaml").write_text(yaml.safe_dump(tree))
    assert main(["train", str(tmp_path / "use.yaml")]) == 0
    state = load_state(list_checkpoints(tmp_path / "runs" / "use" / "checkpoints")[-1])
    counts = state["sampler"]["counts"]
    n = sum(counts.values())
    for d, w in mix["weights"].items():
        assert abs(counts[d] - w * n) < 1.0, (d, counts, mix["weights"])


def test_train_proxy_refuses_a_changed_recipe(data_dir, tokenizer_dir, tmp_path):
    """A proxy run dir made by another recipe is never silently reused (its config.yaml is compared first)."""
    from warmstart.config import to_yaml

    r = validate(Recipe, tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path, "p", train={"steps": 2}))
    r.run_dir.mkdir(parents=True)
    (r.run_dir / "config.yaml").write_text(to_yaml(r))
    (r.run_dir / "summary.json").write_text(json.dumps({"steps": 2, "final_eval": {"val/code/loss": 1.5}}))
    (r.run_dir / "final").mkdir()
    assert train_proxy(r) == {"val/code/loss": 1.5}  # finished: read, not re-trained
    changed = validate(Recipe, tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path, "p", train={"steps": 3}))
    with pytest.raises(UserError, match="different recipe"):
        train_proxy(changed)


# ----------------------------------------------------------------------------------------------- predict CLI
def test_mixture_predict_cli_writes_a_mixture(tmp_path):
    for name, budget, w in (("a", 0.3e9, PAPER_03B), ("b", 1.2e9, PAPER_12B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mixture.json").write_text(
            json.dumps(
                {
                    "weights": dict(zip(RP, w, strict=True)),
                    "tokens": {d: budget * v for d, v in zip(RP, w, strict=True)},
                    "budget": budget,
                }
            )
        )
    out = tmp_path / "pred.json"
    rc = main(
        [
            "mixture",
            "predict",
            "--from",
            str(tmp_path / "a"),
            "--from",
            str(tmp_path / "b" / "mixture.json"),
            "--budget",
            "10B",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    pred = json.loads(out.read_text())
    assert pred["budget"] == 10e9 and pred["extrapolation"] is True
    # the paper's 10B prediction: about .232/.027/.204/.128/.330/.072/.007
    for d, want in zip(RP, [0.232, 0.027, 0.204, 0.128, 0.330, 0.072, 0.007], strict=True):
        assert pred["weights"][d] == pytest.approx(want, abs=0.004), d
    assert predict([tmp_path / "a", tmp_path / "b"], 10e9)["weights"] == pred["weights"]
    one = ["mixture", "predict", "--from", str(tmp_path / "a"), "--budget", "5e9", "--out", str(out)]
    assert main(one) == 2  # one budget is not enough
    assert main([*one, "--from", str(tmp_path / "nope")]) == 2  # no such mixture


def test_shipped_autoscale_recipes_validate():
    from pathlib import Path

    from warmstart.config import load, load_recipe

    root = Path(__file__).resolve().parent.parent / "src" / "warmstart" / "examples" / "autoscale"
    cfg = load(DDOConfig, root / "ddo-small.yaml")
    assert cfg.multipliers == [0.2, 3.0] and cfg.target == "avg"
    assert load_recipe(root / "train-mixture.yaml").data.weights_from == "mixtures/predicted.json"


def test_real_tiny_ddo_with_masked_lm_proxies(data_dir, tokenizer_dir, tmp_path):
    """BERT-style proxies: the objective is part of the proxy recipe; DDO trains them through the same loop."""
    proxy = tiny_recipe_tree(
        data_dir,
        tokenizer_dir,
        tmp_path,
        "proxy",
        data={"weights": {}},
        model={"preset": "bert-tiny", "objective": "masked"},
    )
    proxy["train"] = {"tokens": 256 * 4, "batch_tokens": 256, "micro_batch_size": 8, "progress": False}
    proxy["eval"] = {"every": 1000, "max_tokens": 256, "batch_size": 8}
    cfg = validate(
        DDOConfig,
        {
            "name": "mlm",
            "out_dir": str(tmp_path / "mix"),
            "proxy": proxy,
            "multipliers": [1 / 3, 2],
            "max_epochs": 50,
        },
    )
    mix = run_ddo(cfg)
    assert set(mix["weights"]) == {"code", "prose"} and sum(mix["weights"].values()) == pytest.approx(1.0)
    for run in (tmp_path / "mix" / "mlm" / "runs").iterdir():
        assert yaml.safe_load((run / "config.yaml").read_text())["model"]["objective"] == "masked"
        assert json.loads((run / "final" / "config.json").read_text())["model_type"] == "bert"
