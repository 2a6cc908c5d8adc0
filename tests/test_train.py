"""The training loop: metrics, final/ checkpoints, init.from vs resume, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from train_helpers import tiny_recipe
from transformers import AutoModelForCausalLM

from warmstart.cli import main
from warmstart.config import OptimConfig
from warmstart.data.shards import open_data_dir
from warmstart.errors import UserError
from warmstart.eval.perplexity import document_windows
from warmstart.runtime.metrics import read_metrics
from warmstart.train import checkpoint as ckpt
from warmstart.train.loop import train
from warmstart.train.optim import build_optimizer
from warmstart.train.schedules import lr_at


@pytest.fixture(scope="module")
def base_run(data_dir, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    recipe = tiny_recipe(data_dir, tokenizer_dir, out, train={"checkpoint_every": 4})
    result = train(recipe)
    return recipe, result


def test_metrics_events_and_step0_eval(base_run):
    recipe, result = base_run
    rows = read_metrics(result.run_dir)
    evals = [r for r in rows if r["event"] == "eval"]
    trains = [r for r in rows if r["event"] == "train"]
    assert [r["step"] for r in evals] == [0, 4, 8]
    assert [r["step"] for r in trains] == [2, 4, 6, 8]
    for r in evals:
        for dom in ("code", "prose"):
            loss = r[f"val/{dom}/loss"]
            assert r[f"val/{dom}/ppl"] == pytest.approx(math.exp(loss))
    for r in trains:
        assert {"step", "tokens", "flops", "lr", "train/loss", "tokens_per_s", "grad_norm"} <= set(r)
        assert r["tokens"] == r["step"] * 256
        assert r["lr"] == lr_at(recipe.schedule, r["step"] - 1, 8)
    # a fresh model on a 512-token vocabulary starts near ln(512) and learns
    assert evals[0]["val/code/loss"] == pytest.approx(math.log(512), abs=0.5)
    assert evals[-1]["val/code/loss"] < evals[0]["val/code/loss"] - 0.3
    assert trains[-1]["flops"] == pytest.approx(trains[-1]["tokens"] * json.loads(
        (result.run_dir / "summary.json").read_text())["flops_per_token"])


def test_final_is_plain_hf_checkpoint_with_same_logits(base_run, data_dir):
    recipe, result = base_run
    model = AutoModelForCausalLM.from_pretrained(str(result.final_dir))
    model.eval()
    dom = open_data_dir(data_dir)["prose"]
    inputs, labels = (torch.from_numpy(a) for a in document_windows(dom, 32, 256))  # the default eval.windows
    with torch.no_grad():
        logits = model(input_ids=inputs).logits  # right padding: no causal logit before it changes
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).item()
    # the last eval in metrics.jsonl was computed by the trained model in memory
    assert loss == pytest.approx(result.last_eval["val/prose/loss"], rel=1e-6)
    # and the last checkpoint holds the same weights as final/
    fresh = AutoModelForCausalLM.from_pretrained(str(result.final_dir))
    ckpt.load_into(ckpt.newest_valid(result.run_dir / "checkpoints"), fresh, None, 0)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=inputs).logits, logits)
    assert (result.final_dir / "tokenizer.json").exists()


@pytest.mark.parametrize("preset", ["gpt2-tiny", "neox-tiny", "opt-tiny", "qwen2-tiny", "mistral-tiny"])
def test_families_train_and_reload(preset, data_dir, tokenizer_dir, tmp_path):
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, model={"preset": preset}, train={"steps": 2})
    result = train(recipe)
    model = AutoModelForCausalLM.from_pretrained(str(result.final_dir))
    assert model.config.vocab_size == 512
    assert np.isfinite(result.last_eval["val/code/loss"])


def test_init_from_rewarms_with_fresh_optimizer(base_run, data_dir, tokenizer_dir, tmp_path):
    _, src = base_run
    recipe = tiny_recipe(
        data_dir, tokenizer_dir, tmp_path, name="cont", model={"preset": None, "tokenizer": None},
        init={"from": str(src.run_dir)}, train={"steps": 4}, data={"weights": {"code": 1.0}},
    )
    result = train(recipe)
    first = read_metrics(result.run_dir)[0]
    # step 0 of the new run evaluates the source model exactly
    assert first["step"] == 0
    assert first["val/code/loss"] == pytest.approx(src.last_eval["val/code/loss"], rel=1e-6)
    assert first["lr"] == lr_at(recipe.schedule, 0, 4)  # a new warmup, not the old schedule's tail


def test_keep_optimizer_carries_adam_moments(base_run, data_dir, tokenizer_dir, tmp_path):
    _, src = base_run
    recipe = tiny_recipe(
        data_dir, tokenizer_dir, tmp_path, name="keep", model={"preset": None, "tokenizer": None},
        init={"from": str(src.run_dir), "keep_optimizer": True}, train={"steps": 2, "checkpoint_every": 0},
    )
    result = train(recipe)
    old, new = _adam_state(src.run_dir), _adam_state(result.run_dir)
    # AdamW's step counter continued from the source run's (8) instead of restarting at 0
    assert old[0] == 8 and new[0] == old[0] + 2


def _adam_state(run_dir) -> tuple[float, dict]:
    """(step count, hyperparameters) of a run's newest checkpoint loaded into an AdamW built with other settings:
    the moments come from the file, the hyperparameters stay the optimizer's own."""
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "final"))
    cfg = OptimConfig(weight_decay=0.75, betas=[0.5, 0.625])
    opt = build_optimizer(model, cfg, lr=0.125, device=torch.device("cpu"))
    ckpt.load_into(ckpt.newest_valid(run_dir / "checkpoints"), model, opt, 0)
    assert [(g["lr"], g["betas"], g["weight_decay"]) for g in opt.param_groups] == [
        (0.125, (0.5, 0.625), 0.75), (0.125, (0.5, 0.625), 0.0)]
    state = opt.state[model.get_input_embeddings().weight]
    assert float(state["exp_avg_sq"].abs().sum()) > 0
    return float(state["step"]), dict(state)


def _final_weights(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keep_optimizer_takes_moments_but_the_recipes_betas_and_decay(base_run, data_dir, tokenizer_dir, tmp_path):
    _, src = base_run
    runs = {}
    for name, optim in (("same", {}), ("decay", {"weight_decay": 1.0}), ("betas", {"betas": [0.5, 0.5]})):
        recipe = tiny_recipe(
            data_dir, tokenizer_dir, tmp_path, name=name, model={"preset": None, "tokenizer": None},
            init={"from": str(src.run_dir), "keep_optimizer": True}, train={"steps": 2, "checkpoint_every": 0},
            optim=optim,
        )
        runs[name] = train(recipe).run_dir
    # the source's weight decay (0.1) and betas (0.9, 0.95) would give the "same" run's weights bit for bit
    same = _final_weights(runs["same"])
    assert not _same(same, _final_weights(runs["decay"]))
    assert not _same(same, _final_weights(runs["betas"]))


def test_resume_with_allowed_config_change_uses_the_new_weight_decay(data_dir, tokenizer_dir, tmp_path):
    import shutil

    kw = {"train": {"steps": 4, "checkpoint_every": 2}}
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="rs", **kw)
    train(recipe)
    uninterrupted = _final_weights(recipe.run_dir)

    def back_to_step_2() -> None:
        for p in ("summary.json", "final", "checkpoints/step-00000004"):
            path = recipe.run_dir / p
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    back_to_step_2()
    train(recipe, resume=True)
    assert _same(_final_weights(recipe.run_dir), uninterrupted)  # same recipe: bit-identical
    back_to_step_2()
    heavier = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="rs", optim={"weight_decay": 1.0}, **kw)
    train(heavier, resume=True, allow_config_change=True)
    assert not _same(_final_weights(recipe.run_dir), uninterrupted)


@pytest.mark.parametrize("budget", [{"steps": 4}, {"tokens": 1024}])
def test_resume_changing_batch_tokens_or_seq_len_is_refused_for_either_budget(data_dir, tokenizer_dir, tmp_path,
                                                                              budget):
    """Tokens, FLOPs, a token budget's step count and the schedule position count `step x batch_tokens`: a resume
    at another batch size would recount the steps taken (it stopped at half a token budget, or reported 4,096
    tokens where 3,072 were trained), so the change is refused, every file as it was."""
    import shutil

    kw = {"train": {"steps": None, **budget, "checkpoint_every": 2}}
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="bt", **kw)
    train(recipe)
    for p in ("summary.json", "final", "checkpoints/step-00000004"):  # back to an unfinished run at step 2
        path = recipe.run_dir / p
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = {p: p.read_bytes() for p in recipe.run_dir.rglob("*") if p.is_file()}
    bigger = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="bt", overrides=["train.batch_tokens=512"], **kw)
    with pytest.raises(UserError) as e:
        train(bigger, resume=True, allow_config_change=True)
    assert str(e.value) == (
        f"{recipe.run_dir}: --resume cannot change train.batch_tokens (256 -> 512): its steps so far are counted "
        "as 256 tokens each; keep train.batch_tokens: 256, or start a new run from this one's weights with init.from"
    )
    assert {p: p.read_bytes() for p in recipe.run_dir.rglob("*") if p.is_file()} == before
    longer = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="bt", overrides=["data.seq_len=64"], **kw)
    with pytest.raises(UserError) as e:
        train(longer, resume=True, allow_config_change=True)
    assert str(e.value) == (
        f"{recipe.run_dir}: --resume cannot change data.seq_len (32 -> 64): the data read so far is counted in "
        "sequences of 32 tokens; keep data.seq_len: 32, or start a new run from this one's weights with init.from"
    )
    assert {p: p.read_bytes() for p in recipe.run_dir.rglob("*") if p.is_file()} == before
    # the same resume at the run's own batch size finishes it with true counts: 4 steps of 256 tokens
    assert train(recipe, resume=True).step == 4
    assert json.loads((recipe.run_dir / "summary.json").read_text())["tokens"] == 1024


def test_a_listed_domain_of_weight_zero_is_said_once(data_dir, tokenizer_dir, tmp_path, capsys):
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="w0",
                         overrides=["data.weights={code: 1.0, prose: 0.0}", "train.steps=2", "eval.every=2"])
    result = train(recipe)
    out = capsys.readouterr().out
    assert out.count("note: data.weights gives prose weight 0: not trained on (still evaluated)\n") == 1
    assert json.loads((result.run_dir / "summary.json").read_text())["sequences_per_domain"]["prose"] == 0


def test_existing_run_dir_refused_and_untouched(base_run):
    recipe, result = base_run
    before = (result.run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="run directory exists; use --resume"):
        train(recipe)
    assert (result.run_dir / "metrics.jsonl").read_bytes() == before


def test_resume_of_finished_run_changes_nothing(base_run, capsys):
    recipe, result = base_run
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in result.run_dir.rglob("*") if p.is_file()}
    again = train(recipe, resume=True)
    assert again.step == 8 and again.last_eval == json.loads((result.run_dir / "summary.json").read_text())[
        "final_eval"]
    assert f"{result.run_dir}: already finished (step 8); nothing to do" in capsys.readouterr().out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in result.run_dir.rglob("*") if p.is_file()} == before


def test_resume_refuses_changed_schedule_unless_allowed(base_run, tmp_path, data_dir, tokenizer_dir):
    recipe, result = base_run
    changed = recipe.model_copy(deep=True)
    changed.schedule.max_lr = 1e-3
    with pytest.raises(UserError, match=r"changed recipe \(schedule.max_lr\)"):
        train(changed, resume=True)


def test_data_from_other_tokenizer_refused(data_dir, tmp_path):
    from warmstart.data.tokenizer_train import train_bpe

    other = train_bpe(["completely different text " * 50, "zzz yyy xxx"] * 20, 300, tmp_path / "tok2")
    recipe = tiny_recipe(data_dir, other, tmp_path)
    with pytest.raises(UserError, match="prepared with tokenizer"):
        train(recipe)
    assert not (tmp_path / "run").exists()


def test_bad_batch_shape_and_unknown_domain(data_dir, tokenizer_dir, tmp_path):
    with pytest.raises(UserError, match="micro_batch_size"):
        train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, train={"micro_batch_size": 3}))
    with pytest.raises(UserError, match="weights.nope"):
        train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, data={"weights": {"nope": 1.0}}))


def test_cli_bad_recipe_is_one_line(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ndata: {dir: d}\ntrain: {steps: 2, bogus: 1}\nmodel: {preset: llama-tiny}\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "train.bogus: unknown key" in err and str(path) in err
    assert main(["train", str(path), "--set", "train.bogus"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_gradient_accumulation_matches_one_big_micro_batch(data_dir, tokenizer_dir, tmp_path):
    a = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "a", train={"steps": 4, "micro_batch_size": 8}))
    b = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "b", train={"steps": 4, "micro_batch_size": 2}))
    la = [r["train/loss"] for r in read_metrics(a.run_dir) if r["event"] == "train"]
    lb = [r["train/loss"] for r in read_metrics(b.run_dir) if r["event"] == "train"]
    assert lb == pytest.approx(la, rel=1e-5)
    assert b.last_eval["val/code/loss"] == pytest.approx(a.last_eval["val/code/loss"], rel=1e-5)


def test_model_from_config_json_and_sizes(data_dir, tokenizer_dir, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 32, "num_attention_heads": 2,
                               "intermediate_size": 64, "num_hidden_layers": 3}))
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, model={"preset": None, "config": str(cfg),
                                                                   "sizes": {"layers": 1}}, train={"steps": 2})
    result = train(recipe)
    model = AutoModelForCausalLM.from_pretrained(str(result.final_dir))
    assert (model.config.model_type, model.config.num_hidden_layers, model.config.hidden_size) == ("gpt_neox", 1, 32)


def test_token_ids_beyond_vocab_refused(data_dir, tokenizer_dir, tmp_path):
    from warmstart.data.tokenizer import load_tokenizer, tokenizer_identity
    from warmstart.models.build import check_data_compatible

    tok = load_tokenizer(str(tokenizer_dir))
    ident = tokenizer_identity(tok)
    check_data_compatible(tok, ident, max_token_id=511, vocab_size=512, data_dir="d")
    with pytest.raises(UserError, match="token id 512 is beyond the model's vocabulary"):
        check_data_compatible(tok, ident, max_token_id=512, vocab_size=512, data_dir="d")


def test_weights_from_mixture_file(data_dir, tokenizer_dir, tmp_path):
    mix = tmp_path / "mixture.json"
    mix.write_text(json.dumps({"weights": {"code": 0.25, "prose": 0.75}}))
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, data={"weights": {}, "weights_from": str(mix)},
                         train={"steps": 2, "checkpoint_every": 1})
    result = train(recipe)
    state = json.loads((ckpt.newest_valid(result.run_dir / "checkpoints") / "state.json").read_text())
    counts = state["sampler"]["counts"]
    assert counts["code"] + counts["prose"] == 16 and counts["prose"] == 12
    mix.write_text("{}")
    with pytest.raises(UserError, match="not a mixture file"):
        train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "m2", data={"weights": {}, "weights_from": str(mix)}))


def test_activation_checkpointing_recomputes_blocks_and_changes_nothing(data_dir, tokenizer_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from warmstart.models.build import enable_activation_checkpointing
    from warmstart.models.loss import LossModel

    # model level: every block runs twice per step (forward, then again in backward), gradients unchanged
    cfg = AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).train()
    x = torch.randint(0, 64, (2, 9))
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_activation_checkpointing(model)
        lm, calls = LossModel(model), []
        hooks = [blk.self_attn.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
                 for blk in model.model.layers]
        loss, _ = lm(x[:, :-1], x[:, 1:])
        n_forward = len(calls)
        loss.backward()
        for h in hooks:
            h.remove()
        assert n_forward == 2 and len(calls) == (4 if checkpointing else 2)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-7), k

    # loop level: a few steps give the same losses and weights
    runs = [train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, f"ac{on}",
                              train={"steps": 4, "activation_checkpointing": on})) for on in (False, True)]
    la, lb = ([r["train/loss"] for r in read_metrics(r.run_dir) if r["event"] == "train"] for r in runs)
    assert lb == pytest.approx(la, rel=1e-6)
    wa, wb = (load_file(str(r.final_dir / "model.safetensors")) for r in runs)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6), k


def test_resume_with_auto_threads_keeps_the_thread_count_the_run_started_with(data_dir, tokenizer_dir, tmp_path,
                                                                              monkeypatch, capsys):
    """`train.cpu_threads: auto` follows the load at the start; a resume under another load computes with the
    count the run started with (recorded in the checkpoint), so its numbers stay those of the uninterrupted run."""
    import shutil

    from warmstart.runtime import threads

    if threads.usable_cores() < 2:
        pytest.skip("needs 2 cores: auto must pick a count other than the 1 a busy machine gets")
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "busy_cores", lambda sample_s=0.0: 0.0)  # every core free at the start
        recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="th", train={"steps": 4, "checkpoint_every": 2})
        train(recipe)
        started = torch.get_num_threads()
        state = ckpt.load_state(ckpt.step_dir(recipe.run_dir / "checkpoints", 2))
        assert state["cpu_threads"] == started == threads.choose_threads(1, threads.usable_cores(), 0.0)
        for p in ("summary.json", "final", "checkpoints/step-00000004"):
            path = recipe.run_dir / p
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        monkeypatch.setattr(threads, "busy_cores", lambda sample_s=0.0: 64.0)  # now every core is busy: auto -> 1
        torch.set_num_threads(1)
        capsys.readouterr()
        train(recipe, resume=True)
        assert torch.get_num_threads() == started
        assert f"threads: {started} (auto, kept from the run's start" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_the_run_says_what_each_evaluation_scores(data_dir, tokenizer_dir, tmp_path, capsys):
    """The start of a run names the targets each in-loop evaluation scores per domain, and the domains whose
    validation split gives fewer than eval.max_tokens (so val/avg/loss averages unequal counts): the same counts
    the eval events record as val/<domain>/tokens."""
    from warmstart.runtime.metrics import read_metrics

    r = tiny_recipe(data_dir, tokenizer_dir, tmp_path, overrides=["train.steps=2", "eval.max_tokens=100000"])
    train(r)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("eval: "))
    ev = next(m for m in read_metrics(r.run_dir) if m["event"] == "eval")
    counts = {k.split("/")[1]: int(v) for k, v in ev.items() if k.startswith("val/") and k.endswith("/tokens")}
    assert counts and all(0 < n < 100000 for n in counts.values())
    assert line == (f"eval: {', '.join(f'{n} {k:,}' for n, k in counts.items())} targets per evaluation (document "
                    f"windows, seq_len {r.data.seq_len}, eval.max_tokens 100,000); {', '.join(counts)}: fewer than "
                    f"eval.max_tokens, all that {'its' if len(counts) == 1 else 'their'} validation split gives")
