"""`warmstart eval` and lm-eval tasks: per-domain perplexity equals a direct computation; the local MC task's
accuracy equals a log-likelihood comparison done here; in-training tasks land at the right steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_helpers import metrics_without_timing, tiny_recipe

from warmstart.cli import main
from warmstart.errors import UserError
from warmstart.eval.run_eval import eval_checkpoint
from warmstart.runtime.metrics import read_metrics
from warmstart.train.loop import train

TASK = "warmstart_tiny_mc"
TASK_DIR = Path(__file__).resolve().parents[1] / "src/warmstart/eval/task_data" / TASK


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir, tokenizer_dir):
    out = tmp_path_factory.mktemp("evalruns")
    return train(tiny_recipe(data_dir, tokenizer_dir, out, "base")).run_dir


def _load(run_dir):
    from transformers import AutoModelForCausalLM

    from warmstart.data.tokenizer import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(str(run_dir / "final")).eval(), load_tokenizer(
        str(run_dir / "final")
    )


def test_eval_perplexity_equals_direct_computation(run_dir, data_dir, tmp_path):
    from warmstart.data.shards import open_data_dir

    res = eval_checkpoint(
        str(run_dir),
        data_dir,
        seq_len=16,
        max_tokens=160,
        batch_size=3,
        out=tmp_path,
        windows="packed",
        packing="stream",
    )
    model, _ = _load(run_dir)
    for name, dom in open_data_dir(data_dir).items():
        toks = torch.tensor(np.asarray(dom.tokens("val")[: 10 * 16 + 1], dtype=np.int64))
        x = torch.stack([toks[i * 16 : i * 16 + 17] for i in range(10)])
        with torch.no_grad():
            logits = model(input_ids=x[:, :-1]).logits
        want = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).item()
        assert res["val"][name]["loss"] == pytest.approx(want, rel=1e-5)
        assert res["val"][name]["ppl"] == pytest.approx(math.exp(want), rel=1e-5)
        assert res["val"][name]["tokens"] == 160
    saved = json.loads((tmp_path / f"eval-step{res['step']:06d}.json").read_text())
    assert saved["val"] == res["val"] and saved["step"] == 8


def _direct_mc_accuracy(model, tok, limit=None) -> float:
    """Sum of log p(' ' + choice | question) per choice; the item is right when the answer scores highest."""
    rows = [json.loads(line) for line in (TASK_DIR / "test.jsonl").read_text().splitlines()][:limit]
    right = []
    for row in rows:
        scores = []
        for choice in row["choices"]:
            ctx = tok(row["question"])["input_ids"]
            whole = tok(row["question"] + " " + choice)["input_ids"]
            x = torch.tensor([whole])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
            scores.append(sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole))))
        right.append(int(np.argmax(scores)) == row["answer"])
    return float(np.mean(right))


def test_local_mc_task_equals_direct_loglikelihood(run_dir, monkeypatch):
    pytest.importorskip("lm_eval")
    from warmstart.eval.tasks import run_tasks

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tok = _load(run_dir)
    model.train()
    state = torch.get_rng_state()
    scores = run_tasks(model, tok, [TASK], num_fewshot=0, limit=None, device="cpu")
    assert 0.0 <= scores[f"{TASK}/acc"] <= 1.0
    assert scores[f"{TASK}/acc"] == pytest.approx(_direct_mc_accuracy(model.eval(), tok))
    assert torch.equal(torch.get_rng_state(), state)  # lm-eval's global seeding is undone
    assert tok.pad_token is None or tok.pad_token_id is not None  # the caller's tokenizer is left alone


def test_eval_cli_appends_task_event_to_the_run(run_dir, monkeypatch, capsys):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    before = len(read_metrics(run_dir))
    assert main(["eval", str(run_dir), "--tasks", TASK, "--num-fewshot", "1", "--limit", "5"]) == 0
    events = read_metrics(run_dir)
    assert len(events) == before + 1
    ev = events[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert ev["event"] == "task" and ev["step"] == summary["steps"] and ev["tokens"] == summary["tokens"]
    saved = json.loads((run_dir / f"eval-step{summary['steps']:06d}.json").read_text())
    assert ev[f"task/{TASK}/acc"] == saved["tasks"][f"{TASK}/acc"]
    assert saved["num_fewshot"] == 1 and saved["limit"] == 5
    # 5 items: the accuracy is a multiple of 1/5
    assert round(ev[f"task/{TASK}/acc"] * 5, 9) == int(round(ev[f"task/{TASK}/acc"] * 5))
    assert f"task/{TASK}/acc" in capsys.readouterr().out


def test_eval_errors(run_dir, data_dir, tmp_path, capsys):
    import shutil

    plain = shutil.copytree(run_dir / "final", tmp_path / "plain-hf")  # a HF checkpoint, not a run
    with pytest.raises(UserError, match="give --out"):
        eval_checkpoint(str(plain), None, tasks=[TASK])
    with pytest.raises(UserError, match="nothing to do"):
        eval_checkpoint(str(run_dir))
    assert main(["eval", str(tmp_path / "missing"), "--tasks", TASK]) == 2
    assert "not found" in capsys.readouterr().err
    # --packing would change nothing under document windows: refused, not ignored
    out = tmp_path / "packing-out"
    assert main(["eval", str(run_dir), "--data", str(data_dir), "--windows", "documents", "--packing", "stream",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--packing stream: applies to --windows packed only" in err
    assert not out.exists()


def test_unknown_task_is_one_clear_error(run_dir):
    pytest.importorskip("lm_eval")
    from warmstart.eval.tasks import run_tasks

    model, tok = _load(run_dir)
    with pytest.raises(UserError, match="no_such_task_xyz not known"):
        run_tasks(model, tok, ["no_such_task_xyz"], include_paths=None)


def test_in_training_tasks_at_their_steps(data_dir, tokenizer_dir, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from warmstart.eval.tasks import run_tasks

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ev = {"every": 2, "tasks": [TASK], "tasks_every": 4, "tasks_num_fewshot": 0, "tasks_limit": 6}
    with_tasks = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "tasks", eval=ev)).run_dir
    plain = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "plain", eval={"every": 2})).run_dir
    evals = [m for m in read_metrics(with_tasks) if m["event"] == "eval"]
    assert [m["step"] for m in evals] == [0, 2, 4, 6, 8]
    assert [m["step"] for m in evals if f"task/{TASK}/acc" in m] == [0, 4, 8]
    # the run itself is unchanged by evaluating tasks (weights, RNG streams, losses)
    strip = [
        {k: v for k, v in m.items() if not k.startswith("task/")} for m in metrics_without_timing(with_tasks)
    ]
    assert strip == metrics_without_timing(plain)
    model, tok = _load(with_tasks)
    again = run_tasks(model, tok, [TASK], num_fewshot=0, limit=6)
    assert evals[-1][f"task/{TASK}/acc"] == again[f"{TASK}/acc"]


def test_tasks_config_checks(data_dir, tokenizer_dir, tmp_path):
    with pytest.raises(UserError, match="tasks_every: 3 is not a multiple of every"):
        tiny_recipe(data_dir, tokenizer_dir, tmp_path, eval={"every": 2, "tasks": [TASK], "tasks_every": 3})


def test_unknown_task_in_a_recipe_fails_before_training(data_dir, tokenizer_dir, tmp_path):
    pytest.importorskip("lm_eval")
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, "typo", eval={"tasks": ["no_such_task_xyz"]})
    with pytest.raises(UserError, match="no_such_task_xyz not known"):
        train(recipe)
    assert not (recipe.run_dir / "metrics.jsonl").exists()  # refused before the step-0 evaluation


def test_eval_of_a_run_repeats_its_last_in_loop_evaluation(run_dir, data_dir, tmp_path):
    """A run directory's defaults (seq_len, eval.windows, eval.max_tokens) are the run's own."""
    res = eval_checkpoint(str(run_dir), data_dir, out=tmp_path)
    final = json.loads((run_dir / "summary.json").read_text())["final_eval"]
    assert res["windows"] == "documents" and res["max_tokens"] == 256  # a causal run's default windows
    for name, v in res["val"].items():
        assert v["loss"] == pytest.approx(final[f"val/{name}/loss"], abs=1e-5)
