"""Training with a teacher (`distill:`): the loop's wiring, the teacher's FLOPs in `flops`, config.yaml naming the
teacher, exact resume, and 2-process DDP / FSDP equal to one process (real torchrun, gloo)."""

from __future__ import annotations

import json
import signal

import pytest
import torch
import yaml
from test_distributed import _close_weights, _recipe, _same_numbers, _train
from test_resume import _assert_same_result, _Proc, _resume
from train_helpers import tiny_recipe, tiny_recipe_tree

from warmstart.config import ModelConfig
from warmstart.models.build import build_model, matmul_params, save_hf
from warmstart.models.surgery import inherit
from warmstart.runtime.metrics import read_metrics
from warmstart.train.loop import train


@pytest.fixture(scope="module")
def pair(tokenizer_dir, tmp_path_factory):
    """(teacher, student): a tiny 4-block LLaMA (weights perturbed) and its first 2 blocks."""
    root = tmp_path_factory.mktemp("kd")
    loaded = build_model(
        ModelConfig(preset="llama-tiny", tokenizer=str(tokenizer_dir), sizes={"num_hidden_layers": 4}),
        None,
        seed=3,
    )
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    teacher = root / "teacher"
    save_hf(loaded.model, loaded.tokenizer, teacher)
    student = inherit(teacher, root / "student", layers=2).out
    return teacher, student


def _kd(teacher, **kw) -> dict:
    return {"teacher": str(teacher), **kw}


def test_teacher_flops_are_charged_and_named_in_config(pair, data_dir, tokenizer_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher, student = pair
    common = {
        "init": {"from": str(student)},
        "model": {"preset": None, "tokenizer": None},
        "train": {"steps": 4, "log_every": 1},
        "eval": {"every": 2},
    }
    plain = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "plain", **common))
    kd = train(
        tiny_recipe(
            data_dir,
            tokenizer_dir,
            tmp_path,
            "kd",
            distill=_kd(teacher, temperature=2.0, alpha=0.5),
            **common,
        )
    )
    sp, sk = (json.loads((r.run_dir / "summary.json").read_text()) for r in (plain, kd))
    t = AutoModelForCausalLM.from_pretrained(str(teacher))
    seq = 32
    want_teacher = 2.0 * matmul_params(t) + 4.0 * t.config.num_hidden_layers * t.config.hidden_size * seq
    assert sk["teacher_flops_per_token"] == pytest.approx(want_teacher)
    assert sp["teacher_flops_per_token"] == 0.0
    assert sk["flops_per_token"] == pytest.approx(sp["flops_per_token"] + want_teacher)
    assert sk["flops"] == pytest.approx(sk["flops_per_token"] * sk["tokens"]) and sk["tokens"] == sp["tokens"]
    rows = read_metrics(kd.run_dir)
    assert all(r["flops"] == pytest.approx(sk["flops_per_token"] * r["tokens"]) for r in rows)
    cfg = yaml.safe_load((kd.run_dir / "config.yaml").read_text())
    assert cfg["distill"] == {"teacher": str(teacher), "temperature": 2.0, "alpha": 0.5}
    # step 0's validation loss is the same model's next-token loss either way; training then differs
    ev = [[r for r in read_metrics(x.run_dir) if r["event"] == "eval"] for x in (plain, kd)]
    assert ev[0][0]["val/avg/loss"] == ev[1][0]["val/avg/loss"]
    assert ev[0][-1]["val/avg/loss"] != pytest.approx(ev[1][-1]["val/avg/loss"], rel=1e-4)


def test_alpha_zero_is_the_next_token_run(pair, data_dir, tokenizer_dir, tmp_path):
    """alpha = 0: the distillation path computes exactly the next-token objective (through its own code)."""
    teacher, student = pair
    common = {
        "init": {"from": str(student)},
        "model": {"preset": None, "tokenizer": None},
        "train": {"steps": 3, "log_every": 1},
        "eval": {"every": 3},
    }
    a = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "a", **common))
    b = train(
        tiny_recipe(
            data_dir, tokenizer_dir, tmp_path, "b", distill=_kd(teacher, alpha=0.0, temperature=3.0), **common
        )
    )
    la, lb = ([r for r in read_metrics(x.run_dir) if r["event"] in ("train", "eval")] for x in (a, b))
    for ra, rb in zip(la, lb, strict=True):
        for k, v in ra.items():
            if k.startswith(("train/loss", "val/")):
                assert rb[k] == pytest.approx(v, rel=1e-5), k


def test_bad_teacher_is_one_line(pair, data_dir, tokenizer_dir, tmp_path):
    from warmstart.errors import UserError

    _, student = pair
    recipe = tiny_recipe(
        data_dir,
        tokenizer_dir,
        tmp_path,
        "bad",
        init={"from": str(student)},
        model={"preset": None, "tokenizer": None},
        distill={"teacher": str(tmp_path / "nope")},
    )
    with pytest.raises(UserError, match="distill.teacher: .*nope"):
        train(recipe)
    assert not (tmp_path / "bad").exists()


def _tree(tmp, data_dir, tokenizer_dir, pair, name, **train_kw):
    teacher, student = pair
    return tiny_recipe_tree(
        data_dir,
        tokenizer_dir,
        tmp / "runs",
        name,
        init={"from": str(student)},
        model={"preset": None, "tokenizer": None},
        distill=_kd(teacher, temperature=2.0, alpha=0.7),
        optim={"grad_clip": 0.5},
        **train_kw,
    )


def test_kill_then_resume_is_bit_identical(pair, data_dir, tokenizer_dir, tmp_path):
    tree = _tree(
        tmp_path,
        data_dir,
        tokenizer_dir,
        pair,
        "x",
        train={"steps": 8, "checkpoint_every": 3, "keep_checkpoints": 3, "log_every": 2},
    )
    ref = _recipe(tmp_path, tree, "ref", "ddp")
    _train(ref, 1)
    path = _recipe(tmp_path, tree, "cut", "ddp")
    proc = _Proc(path, pause="checkpoint_write:6")
    proc.wait_for("test pause at checkpoint_write:6")
    proc.proc.send_signal(signal.SIGKILL)
    assert proc.finish() == -signal.SIGKILL
    assert "resuming" in _resume(path, "--resume").stdout
    _assert_same_result(tmp_path / "runs" / "cut", tmp_path / "runs" / "ref")


def test_two_process_ddp_and_fsdp_distillation_match_one_process(pair, data_dir, tokenizer_dir, tmp_path):
    tree = _tree(
        tmp_path,
        data_dir,
        tokenizer_dir,
        pair,
        "x",
        train={"steps": 3, "batch_tokens": 512, "micro_batch_size": 4, "log_every": 1},
        eval={"every": 3, "max_tokens": 160, "batch_size": 2},
    )
    _train(_recipe(tmp_path, tree, "single", "ddp"), 1)
    _train(_recipe(tmp_path, tree, "ddp", "ddp"), 2)
    _train(_recipe(tmp_path, tree, "fsdp", "fsdp"), 2)
    runs = tmp_path / "runs"
    single = read_metrics(runs / "single")
    assert len([r for r in single if r["event"] == "train"]) == 3
    for other in ("ddp", "fsdp"):
        _same_numbers(single, read_metrics(runs / other))
        _close_weights(runs / "single", runs / other)


def test_report_charges_the_teacher(pair, data_dir, tokenizer_dir, tmp_path):
    """Compute saved: a distilled run's FLOPs to the target include its teacher's forward passes, its tokens do
    not; the row says so."""
    from warmstart.report.data import load_run
    from warmstart.report.saved import compute_saved

    teacher, student = pair
    common = {
        "init": {"from": str(student)},
        "model": {"preset": None, "tokenizer": None},
        "train": {"steps": 4, "log_every": 2},
        "eval": {"every": 1},
    }
    base = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "base", **common))
    kd = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "kd", distill=_kd(teacher), **common))
    runs = [load_run(base.run_dir, "base"), load_run(kd.run_dir, "kd")]
    row = compute_saved(runs, runs[0], "val/avg/loss")["kd"]
    s = json.loads((kd.run_dir / "summary.json").read_text())
    assert "distilled from teacher (its forward FLOPs counted)" in row["compared_as"]
    own = compute_saved(runs, runs[1], "val/avg/loss")["kd"]  # the distilled run reaches its own final loss
    assert own["reached"]
    assert own["flops_to_target"] == pytest.approx(own["tokens_to_target"] * s["flops_per_token"])
    from warmstart.runtime.metrics import read_metrics

    trained = [r for r in read_metrics(kd.run_dir) if r["event"] == "train"]
    assert trained and all(r["tokens"] > 0 for r in trained)
    for r in trained:  # the FLOPs the report reads are the student's and the teacher's, token for token
        assert r["flops"] == pytest.approx(r["tokens"] * s["flops_per_token"])
    assert s["flops_per_token"] > json.loads((base.run_dir / "summary.json").read_text())["flops_per_token"]
