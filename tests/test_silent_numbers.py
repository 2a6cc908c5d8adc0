"""Two silent kinds, everywhere they occur: an undefined or infinite number (NaN, inf, a count of 0 under a
division, a log of 0) that would flow into a fit, a ratio or an extrapolation and come out as a plausible result;
and a positive fraction or share that would round to nothing. Each is refused in one line naming the key, or said
once; never a quiet exit 0."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml
from train_helpers import tiny_recipe_tree

from warmstart.cli import main
from warmstart.config import DDOConfig, GrowRecipe, ScheduleConfig, load, validate
from warmstart.data.sampler import MixtureSampler
from warmstart.data.shards import open_data_dir
from warmstart.data.splits import val_count
from warmstart.errors import UserError
from warmstart.eval.gap import run_gap
from warmstart.recipes.autoscale import run_ddo
from warmstart.recipes.autoscale_laws import predict_mixture
from warmstart.report import make_report


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- (d) settings
GROW = {"name": "g", "reference": {"from": "ref"}, "data": {"dir": "d"}, "train": {"steps": 2}}
DDO = {"name": "m", "proxy": {"name": "p", "data": {"dir": "d"}, "model": {"preset": "llama-tiny"},
                              "train": {"steps": 2}}}


@pytest.mark.parametrize("model, base, override, key", [
    (GrowRecipe, GROW, "grow.tolerance=.inf", "grow.tolerance"),  # was: every round matched at once
    (GrowRecipe, GROW, "reference.loss=.nan", "reference.loss"),  # was: no round ever matched
    (DDOConfig, DDO, "multipliers=[.nan, 3]", "multipliers.0"),  # was: a traceback from round(nan)
    (DDOConfig, DDO, "proxy.optim.grad_clip=.inf", "proxy.optim.grad_clip"),
])
def test_a_setting_that_is_not_a_finite_number_is_refused_naming_its_key(model, base, override, key):
    with pytest.raises(UserError, match=rf"{key.replace('.', '[.]')}: Input should be a finite number"):
        load(model, None, [override], base=base)


def test_train_with_an_infinite_learning_rate_is_refused_before_anything_is_written(
        data_dir, tokenizer_dir, tmp_path, capsys):
    """Was: trained at max_lr inf (NaN weights and losses), exit 0."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs")))
    assert main(["train", str(path), "--set", "schedule.max_lr=.inf"]) == 2
    assert "schedule.max_lr: Input should be a finite number (got inf)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------------- (d) AutoScale
def _write_mixture(path: Path, tokens: dict, text: str | None = None) -> Path:
    path.mkdir(parents=True)
    body = text if text is not None else json.dumps({"tokens": tokens, "budget": sum(tokens.values())})
    (path / "mixture.json").write_text(body)
    return path


def test_mixture_predict_refuses_a_domain_without_tokens(tmp_path, capsys):
    """Was: log(0) clamped to log(1e-300), a domain 'growing' from nothing, and a written mixture, exit 0."""
    a = _write_mixture(tmp_path / "a", {"web": 6e8, "code": 0.0, "books": 4e8})
    b = _write_mixture(tmp_path / "b", {"web": 2e9, "code": 5e8, "books": 1.5e9})
    out = tmp_path / "pred.json"
    assert main(["mixture", "predict", "--from", str(a), "--from", str(b), "--budget", "1e10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{a / 'mixture.json'}: tokens.code is 0; the scale predictor follows each domain's log token count" in err
    assert not out.exists()
    with pytest.raises(UserError, match="domain 'code' has 0 tokens in an optimum"):
        predict_mixture([{"web": 1.0, "code": 0.0}, {"web": 2.0, "code": 1.0}], 4.0)


def test_mixture_predict_refuses_nan_tokens_and_an_infinite_budget(tmp_path, capsys):
    a = _write_mixture(tmp_path / "a", {}, '{"tokens": {"web": NaN, "code": 4e8}, "budget": 1e9}')
    b = _write_mixture(tmp_path / "b", {"web": 2e9, "code": 5e8})
    good = _write_mixture(tmp_path / "c", {"web": 6e8, "code": 4e8})
    out = tmp_path / "pred.json"
    assert main(["mixture", "predict", "--from", str(a), "--from", str(b), "--budget", "1e10", "--out", str(out)]) == 2
    assert "tokens.web is nan" in capsys.readouterr().err
    for budget in ("inf", "1e400", "infk"):
        assert main(["mixture", "predict", "--from", str(good), "--from", str(b), "--budget", budget,
                     "--out", str(out)]) == 2
        assert f"--budget: must be a finite number > 0 (got {budget!r})" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("bad", [float("nan"), None])  # None: a diverged run's loss read back from summary.json
def test_ddo_refuses_a_proxy_run_whose_loss_is_not_a_number(data_dir, tokenizer_dir, tmp_path, bad):
    """Was: NaN reached the fit as a point (refused without naming the run); None was a TypeError traceback."""
    proxy = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path, "proxy", data={"weights": {}})
    proxy["train"] = {"tokens": 256 * 40, "batch_tokens": 256, "micro_batch_size": 4, "progress": False}
    cfg = validate(DDOConfig, {"name": "mix", "out_dir": str(tmp_path), "proxy": proxy})

    def runner(recipe):
        loss = bad if recipe.name == "code-x3" else 3.0 - 0.1 * recipe.train.steps / 40
        return {"val/code/loss": loss, "val/prose/loss": 3.0}

    with pytest.raises(UserError, match=r"^proxy run code-x3 \(.*code-x3\): its final val/code/loss is "
                                        rf"{bad} \(the run diverged\?\); no power law can be fitted"):
        run_ddo(cfg, runner=runner)
    assert not (tmp_path / "mix" / "mixture.json").exists()


# ----------------------------------------------------------------------------------------------- (d) report, gap
def _run(root: Path, name: str, losses: list[float | None]) -> Path:
    """A run directory whose eval events hold `losses` (None: a non-finite value, written as null)."""
    run = root / name
    run.mkdir(parents=True)
    rows = [{"event": "eval", "step": i, "tokens": 100 * i, "flops": 1e3 * i, "val/a/loss": v, "val/avg/loss": v}
            for i, v in enumerate(losses)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"steps": len(losses) - 1, "tokens": 100 * (len(losses) - 1)}))
    return run


def test_report_refuses_a_baseline_whose_final_loss_is_not_a_number(tmp_path, capsys):
    """Was: the target silently became its last finite loss (3.0), and a compute-saved table against it, exit 0."""
    base = _run(tmp_path, "base", [5.0, 4.0, 3.0, None])
    run = _run(tmp_path, "fast", [5.0, 3.0, 2.0, 1.5])
    before = _digest(tmp_path)
    with pytest.raises(UserError, match=r"final val/avg/loss \(step 3\) is not a number \(the run diverged\?\)"):
        make_report([base, run], tmp_path / "rep", baseline=str(base))
    assert main(["report", str(base), str(run), "--baseline", str(base), "--out", str(tmp_path / "rep")]) == 2
    assert "give another --baseline" in capsys.readouterr().err
    assert _digest(tmp_path) == before and not (tmp_path / "rep").exists()


def test_report_says_when_the_baseline_never_improved_so_no_fraction_is_defined(tmp_path):
    """The baseline reaches its own final loss at 0 tokens: run / 0. Was: empty cells, not a word why."""
    base = _run(tmp_path, "base", [3.0, 3.5, 3.2, 3.1])
    run = _run(tmp_path, "fast", [5.0, 3.0, 2.0, 1.5])
    s = make_report([base, run], tmp_path / "rep", baseline=str(base))
    assert s["runs"][1]["compute_saved"]["token_fraction"] is None
    assert any("the baseline base is at its own final val/avg/loss 3.1000 from its first evaluation (0 tokens"
               in n for n in s["notes"])


def test_gap_and_report_say_which_evaluations_were_not_a_number(tmp_path, capsys):
    """Was: a diverged run's gap computed from its finite points alone, its last finite loss passed off as final."""
    run = _run(tmp_path, "div", [3.0, 3.4, 2.9, None, None])
    gaps = run_gap(run)
    line = ("div: val/a/loss is not a number at steps 3, 4 (the run diverged?); left out: its stability gap is "
            "from the other 3 evaluations")
    assert line in capsys.readouterr().err
    assert gaps["val/a/loss"]["not_finite_steps"] == [3, 4]
    assert json.loads((run / "gap.json").read_text())["metrics"]["val/a/loss"]["not_finite_steps"] == [3, 4]
    s = make_report([run], tmp_path / "rep")
    assert line in s["notes"]


# ----------------------------------------------------------------------------------------------- (e) fractions
def test_a_positive_val_fraction_validates_on_at_least_one_document(tmp_path, tokenizer_dir):
    """Was: val_fraction 0.01 of 40 documents rounded to none (while the unset default gave one)."""
    from warmstart.data import prepare

    assert val_count(40, None, 0.01) == 1 and val_count(40, None, 0.0) == 0 and val_count(1, None, 0.5) == 0
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": f"document {i} " * 4}) + "\n" for i in range(40)))
    prepare({"tokenizer": str(tokenizer_dir), "out": str(tmp_path / "o"), "domains": {"web": [{"path": str(src)}]},
             "val_fraction": 0.01}, progress=False)
    assert len(open_data_dir(tmp_path / "o")["web"].doc_offsets("val")) - 1 == 1


@pytest.mark.parametrize("kw, total, said", [
    ({"warmup_fraction": 0.01}, 40, "schedule.warmup_fraction 0.01 of this run's 40 steps is 0 warmup steps: no "
                                    "warmup"),
    ({"warmup_fraction": 0.03}, 40, "is 1 warmup step: no warmup (the first step is at schedule.max_lr either way)"),
    ({"kind": "wsd", "decay_fraction": 0.01}, 40, "schedule.decay_fraction 0.01 of this run's 40 steps rounds to 0 "
                                                  "steps: no cooldown; raise schedule.decay_fraction to 0.025"),
    ({"kind": "infinite", "cooldown_fraction": 0.01}, 40, "schedule.cooldown_fraction 0.01 of this run's 40 steps "
                                                          "rounds to 0 steps: no cooldown to the constant LR"),
])
def test_a_schedule_phase_that_rounds_away_is_said(kw, total, said):
    from warmstart.train.schedules import vanished_phases

    assert any(said in line for line in vanished_phases(ScheduleConfig(**kw), total))


def test_schedule_phases_that_exist_are_not_mentioned():
    from warmstart.train.schedules import vanished_phases

    assert vanished_phases(ScheduleConfig(warmup_fraction=0.05, kind="wsd", decay_fraction=0.1), 40) == []
    assert vanished_phases(ScheduleConfig(warmup_steps=1), 40) == []  # asked for in steps: exactly what it says
    assert vanished_phases(ScheduleConfig(kind="infinite", cooldown_fraction=0.0, decay_fraction=0.0), 40) == []


def test_a_share_worth_less_than_one_sequence_is_said_and_is_true(data_dir):
    domains = open_data_dir(data_dir)
    s = MixtureSampler(domains, {"code": 0.995, "prose": 0.005}, seq_len=32, seed=0)
    assert s.vanishing_shares(64) == ["data.weights.prose: domain 'prose' gets a share of 0.005 of the stream, 0.32 "
                                      "of the run's 64 sequences: it may read none of it; raise its weight or train "
                                      "longer"]
    assert not (s.next_indices(64)[:, 0] == s.domain_names.index("prose")).any()  # it indeed reads none
    assert MixtureSampler(domains, {"code": 0.995, "prose": 0.005}, 32, 0).vanishing_shares(400) == []


def test_train_says_a_warmup_and_a_replay_share_that_round_to_nothing(data_dir, tokenizer_dir, tmp_path, capsys):
    """8 steps of 8 sequences: 1% warmup is 0 steps, 1% replay is 0.64 of the 64 sequences. Was: not a word."""
    tree = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path, schedule={"warmup_steps": None,
                                                                         "warmup_fraction": 0.01},
                            data={"weights": {"code": 1.0}, "replay": {"fraction": 0.01, "domains": {"prose": 1.0}}})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["train", str(path)]) == 0
    err = capsys.readouterr().err
    assert ("warmstart: warning: schedule.warmup_fraction 0.01 of this run's 8 steps is 0 warmup steps: no warmup"
            in err)
    assert ("warmstart: warning: data.replay.fraction 0.01 is 0.64 of the run's 64 sequences: it may read no replay "
            "sequence at all" in err)
    assert math.isfinite(json.loads((tmp_path / "run" / "summary.json").read_text())["final_eval"]["val/avg/loss"])


# ----------------------------------------------------------------------------------------------- (d) quality ranking
def _nan_model(tokenizer_dir, out: Path, token: int) -> Path:
    """llama-tiny with the input embedding row of `token` set to NaN: a real checkpoint whose loss is not a number
    on the documents holding that token."""
    import torch

    from warmstart.config import ModelConfig
    from warmstart.models.build import build_model, save_hf

    cfg = ModelConfig(preset="llama-tiny", tokenizer=str(tokenizer_dir), sizes={"tie_word_embeddings": False})
    loaded = build_model(cfg, None, seed=0)
    with torch.no_grad():  # the input row only (untied): the output layer still scores every other document
        loaded.model.get_input_embeddings().weight[token] = float("nan")
    save_hf(loaded.model, loaded.tokenizer, out)
    return out


def test_quality_score_says_documents_whose_loss_is_not_a_number(data_dir, tokenizer_dir, tmp_path, capsys):
    """Was: NaN scores sorted last without a word, as if those documents were the worst."""
    import numpy as np

    from warmstart.recipes.quality import score_domain

    docs = [set(np.asarray(d).tolist()) for d in open_data_dir(data_dir)["prose"].documents("train")]
    token = next(t for t in sorted(set().union(*docs)) if 0 < sum(t in d for d in docs) < len(docs))
    model = _nan_model(tokenizer_dir, tmp_path / "m", token)
    meta = score_domain(str(model), data_dir, "prose", tmp_path / "r", progress=False)
    n = sum(token in d for d in docs)
    assert (f"warmstart: warning: prose: {n} of {len(docs)} documents have a loss that is not a number"
            in capsys.readouterr().err)
    assert meta["complete"]


def test_grow_compares_only_losses_that_are_numbers():
    """Was: NaN (a diverged round) was 'not yet matched' forever; null (read back) a TypeError traceback."""
    from warmstart.recipes.inheritune import target_loss

    for bad in (float("nan"), None):
        with pytest.raises(UserError, match=r"^runs/g/inheritune-L02: its val/avg/loss is (nan|None), not a number "
                                            r"\(did the run diverge\? lower schedule.max_lr\)"):
            target_loss({"val/avg/loss": bad}, None, "runs/g/inheritune-L02")
    assert target_loss({"val/a/loss": 2.0, "val/b/loss": 3.0}, ["a", "b"], "x") == 2.5


def test_a_micro_batch_above_the_per_process_batch_is_said(data_dir, tokenizer_dir, tmp_path, capsys):
    """8 sequences per step (256 tokens / 32): micro-batches of 1000 are micro-batches of 8, said once."""
    recipe = tmp_path / "m.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", "m",
                                                      train={"steps": 2, "micro_batch_size": 1000},
                                                      eval={"every": 2})))
    assert main(["train", str(recipe)]) == 0
    err = capsys.readouterr().err
    assert err.count("train.micro_batch_size: 1000 is more than the 8 sequences each process gets per step; "
                     "micro-batches of 8") == 1


def test_a_model_config_vocabulary_below_the_tokenizer_is_said(data_dir, tokenizer_dir, tmp_path, capsys):
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps({"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
                               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                               "max_position_embeddings": 64}))
    tree = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", "v", train={"steps": 2}, eval={"every": 2})
    tree["model"] = {"config": str(cfg), "tokenizer": str(tokenizer_dir)}
    recipe = tmp_path / "v.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    assert main(["train", str(recipe)]) == 0
    err = capsys.readouterr().err
    assert err.count(f"model.config: {cfg} has vocab_size 100, fewer than the tokenizer's 512 tokens; the model "
                     "gets 512 embedding rows") == 1
