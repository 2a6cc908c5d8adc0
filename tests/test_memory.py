"""Memory a user can plan on: evaluation holds no autograd graph and does not grow with its batches; the forecast's
meta-device simulation counts what the model really allocates; a forecast over the machine's memory is refused
before anything loads; a run killed without a clean stop is named by the next command that reads it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_recipe, tiny_recipe_tree

from warmstart.cli import main
from warmstart.models import memory
from warmstart.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def _llama_config(vocab=512, hidden=64, layers=2, heads=4, kv=2, ffn=128):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=ffn, max_position_embeddings=256)


# ------------------------------------------------------------------------------------------ evaluation
class _GradModeLog:
    """Records, for every forward of a whole LM (a *ForCausalLM module), whether autograd was on and whether the
    model was in eval mode: a real hook on the real model, registered for every module (torch's global hook)."""

    def __init__(self):
        self.calls: list[tuple[bool, bool]] = []  # (eval mode, grad enabled)

    def __enter__(self):
        def hook(module, args, output):
            if type(module).__name__.endswith("ForCausalLM"):
                self.calls.append((not module.training, torch.is_grad_enabled()))

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def evaluations(self) -> list[bool]:
        return [grad for is_eval, grad in self.calls if is_eval]


def test_standalone_evaluation_runs_without_autograd(data_dir):
    from transformers import LlamaForCausalLM

    from warmstart.data.shards import open_data_dir
    from warmstart.eval.perplexity import eval_windows, evaluate
    from warmstart.runtime.distributed import Dist

    model = LlamaForCausalLM(_llama_config())
    sets = {"code": eval_windows(open_data_dir(data_dir)["code"], 32, 256, "documents")}
    with _GradModeLog() as log:
        evaluate(model, sets, 4, Dist())
    assert log.evaluations() and not any(log.evaluations())


def test_in_loop_evaluation_runs_without_autograd(data_dir, tokenizer_dir, tmp_path):
    with _GradModeLog() as log:
        train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "graph", train={"steps": 4}, eval={"every": 2}))
    assert log.evaluations() and not any(log.evaluations())  # step 0, 2, 4 evaluations, all without autograd
    assert any(grad for is_eval, grad in log.calls if not is_eval)  # the training forwards do keep a graph


def test_block_search_runs_without_autograd(data_dir, tokenizer_dir, tmp_path):
    from warmstart.recipes.inheritune import inherit_by_rule

    ref = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "ref", train={"steps": 2}, eval={"every": 2}))
    with _GradModeLog() as log:
        inherit_by_rule(ref.run_dir / "final", tmp_path / "cut", 1, "auto", str(data_dir), sample_tokens=512,
                        seq_len=32, echo=lambda *_: None)
    assert log.evaluations() and not any(log.evaluations())


_EVAL_PEAK = textwrap.dedent("""
    import resource, sys, numpy as np, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from warmstart.eval.perplexity import evaluate
    from warmstart.runtime.distributed import Dist
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=65536, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    batches = int(sys.argv[1])
    windows = np.random.default_rng(0).integers(0, 65536, size=(2 * batches, 33))
    evaluate(model, {"d": windows}, 2, Dist())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
""")


def _eval_peak(batches: int) -> int:
    out = subprocess.run([sys.executable, "-c", _EVAL_PEAK, str(batches)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_evaluation_memory_does_not_grow_with_its_batches():
    """A 65,536-token vocabulary on a 64-wide model: logits and the output layer dominate memory. A graph kept per
    batch would hold the head's gradient (65,536 x 64 float32 = 16.8 MB) for each of 38 more batches (~640 MB);
    the peak may differ only by allocator noise, well under one such gradient x 3."""
    few, many = _eval_peak(2), _eval_peak(40)
    assert many - few < 3 * 65536 * 64 * 4, (few, many)


# ------------------------------------------------------------------------------------------ the simulation
def test_meta_simulation_counts_what_the_cpu_allocates():
    """The meta-device pass adds up the same bytes as the same model's real forward and backward on the CPU
    (tracked tensor by tensor with the same dispatch mode): fused attention, grouped-query heads and the MLP
    are as the model runs them, not a rule of thumb."""
    from transformers import LlamaForCausalLM

    config = _llama_config(hidden=96, heads=6, kv=2, ffn=256)
    meta = memory.backbone_pass(memory.meta_model(config), 2, 64, train=True)
    cpu_model = LlamaForCausalLM(config)
    mode = memory._LiveBytes()
    x = torch.zeros(2, 64, dtype=torch.long)
    with mode:
        h = cpu_model.model(input_ids=x, use_cache=False)[0]
        forward = mode.peak
        h.float().sum().backward()
    assert meta.forward == forward
    assert meta.total == mode.peak
    no_grad = memory.backbone_pass(memory.meta_model(config), 2, 64, train=False)
    assert 0 < no_grad.total < meta.forward  # without autograd nothing is kept for a backward


def test_checkpointing_lowers_the_forecast_activations():
    model = memory.meta_model(_llama_config(layers=4))
    plain = memory.backbone_pass(model, 4, 128, train=True).forward
    model = memory.meta_model(_llama_config(layers=4))
    ckpt = memory.backbone_pass(model, 4, 128, train=True, checkpointing=True).forward
    assert ckpt < plain / 2


def test_forecast_terms_follow_the_settings():
    model = memory.meta_model(_llama_config(vocab=4096))
    kw = dict(seq_len=64, checkpointing=False, parallel="ddp", world=1, local_world=1, eval_batch=2, eval_seq=64,
              cuda=False, bf16=False)
    small = memory.forecast_train(model, micro=2, accum=1, **kw)
    big = memory.forecast_train(memory.meta_model(_llama_config(vocab=4096)), micro=16, accum=1, **kw)
    n = sum(p.numel() for p in model.parameters())
    assert small.parts["weights"] == 4 * n and small.parts["AdamW"] == 8 * n
    assert big.total > small.total
    fsdp = memory.forecast_train(memory.meta_model(_llama_config(vocab=4096)), micro=2, accum=1,
                                 **{**kw, "parallel": "fsdp", "world": 4, "local_world": 4})
    assert fsdp.processes == 4 and "train.micro_batch_size" in fsdp.lower


def test_fsdp_forecast_holds_a_shard_unless_the_model_is_built_whole_first():
    """Under FSDP a start from safetensors files holds 1/N of the weights (models/sharded_load.py); only a start
    that builds the whole model first (a checkpoint without them) is forecast at the whole model."""
    kw = dict(micro=1, accum=1, seq_len=16, checkpointing=False, parallel="fsdp", world=4, local_world=4,
              eval_batch=1, eval_seq=16, cuda=False, bf16=False)
    model = memory.meta_model(_llama_config(vocab=65536, hidden=256, layers=4, ffn=1024))
    n = sum(p.numel() for p in model.parameters())
    sharded = memory.forecast_train(model, **kw)
    assert sharded.parts["weights"] == 4 * n / 4 and "whole model before sharding" not in sharded.parts
    whole = memory.forecast_train(memory.meta_model(_llama_config(vocab=65536, hidden=256, layers=4, ffn=1024)),
                                  **kw, whole_first=True)
    assert whole.total - whole.parts["runtime"] >= 4 * n  # never below the whole model it builds first


def test_inherit_forecast_is_the_cut_once_unless_the_reference_loads_whole():
    config = _llama_config(vocab=512, hidden=64, layers=8)
    model = memory.meta_model(config)
    blocks = sum(p.numel() for p in model.model.layers.parameters())
    total = sum(p.numel() for p in model.parameters())
    cut = memory.check_cut(config, 8, 2, say=False)
    assert cut.parts["the cut's weights"] == pytest.approx(4 * (total - blocks * 6 / 8))
    assert "the cut, serialised" not in cut.parts
    whole = memory.check_cut(config, 8, 2, say=False, whole=True)
    assert whole.parts["the reference, loaded whole"] == 4 * total


def test_verdict_refuses_over_the_room_and_the_override_runs_anyway(monkeypatch):
    fc = memory.Forecast("train", {"weights": 3e9}, lower=["train.micro_batch_size"])
    assert memory.verdict(fc, available=4e9) is None
    step = memory.Forecast("train", {"weights": 1e9, "step (8 x 256 tokens)": 2e9}, lower=["train.micro_batch_size"])
    assert memory.verdict(step, available=2e9) == (
        "memory: train needs about 3.00 GB of host memory but 2.00 GB is available; lower "
        "train.micro_batch_size, or pass --skip-memory-check if you know better")
    whole = memory.verdict(fc, available=2e9)  # the weights alone do not fit: no batch setting can help
    assert "the model alone (weights, optimizer state, teacher or reference) takes 3.00 GB; use train.parallel: " \
           "fsdp over more processes or GPUs, a smaller model or a machine with more memory" in whole
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    assert memory.verdict(fc, available=2e9) is None


def test_train_over_the_machines_memory_is_refused_before_anything_loads(data_dir, tokenizer_dir, tmp_path, capsys):
    """A 190B-parameter model from a config: the forecast (built on the meta device, no memory) refuses it in one
    line naming the settings to lower; nothing is written."""
    import yaml

    cfg = tmp_path / "huge.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 16384, "num_hidden_layers": 60,
                               "num_attention_heads": 128, "num_key_value_heads": 8, "intermediate_size": 53248,
                               "vocab_size": 512, "max_position_embeddings": 64}))
    tree = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", "huge",
                            model={"preset": None, "config": str(cfg), "tokenizer": str(tokenizer_dir)})
    tree["model"] = {k: v for k, v in tree["model"].items() if v is not None}
    recipe = tmp_path / "huge.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warmstart: error: memory: train needs about ")
    assert "the model alone (weights, optimizer state, teacher or reference) takes " in err[0]
    assert "use train.parallel: fsdp over more processes or GPUs" in err[0]
    assert not (tmp_path / "runs").exists()


def test_optimizer_betas_out_of_range_are_one_line(data_dir, tokenizer_dir, tmp_path, capsys):
    import yaml

    recipe = tmp_path / "b.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", "b")))
    assert main(["train", str(recipe), "--set", "optim.betas=[0.9,1.5]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.betas" in err[0] and "each beta must be >= 0 and < 1" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_train_states_its_forecast(data_dir, tokenizer_dir, tmp_path, capsys):
    train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "said", train={"steps": 2}, eval={"every": 2}))
    out = capsys.readouterr().out
    assert "memory: train expects a peak of " in out and "host memory (runtime " in out and "AdamW" in out


# ------------------------------------------------------------------------------------------ killed runs
def test_a_killed_run_is_named_by_the_next_command(data_dir, tokenizer_dir, tmp_path, capsys):
    import yaml

    tree = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", "killed",
                            train={"steps": 100000, "checkpoint_every": 2}, eval={"every": 2})
    recipe = tmp_path / "killed.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    run_dir = tmp_path / "runs" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "warmstart", "train", str(recipe)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list((run_dir / "checkpoints").glob("step-*")):
            time.sleep(0.5)
        assert list((run_dir / "checkpoints").glob("step-*")), "the run wrote no checkpoint in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    capsys.readouterr()
    assert main(["gap", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert f"{run_dir}: the run did not stop cleanly (pid {proc.pid} on " in err
    assert "was killed after step " in err and "by SIGKILL or the out-of-memory killer); its last checkpoint is step-" in err
    assert main(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    assert "did not stop cleanly" in capsys.readouterr().err
    assert main(["train", str(recipe)]) == 2  # refused (the run exists): it must not erase the record
    capsys.readouterr()
    assert main(["gap", str(run_dir)]) == 0
    assert "did not stop cleanly" in capsys.readouterr().err
    assert main(["train", str(recipe), "--resume", "--set", "train.steps=6"]) in (0, 2)
    assert "did not stop cleanly" in capsys.readouterr().err


def test_a_cleanly_stopped_run_is_not_called_killed(data_dir, tokenizer_dir, tmp_path, capsys):
    res = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "clean", train={"steps": 2}, eval={"every": 2}))
    capsys.readouterr()
    assert main(["gap", str(res.run_dir)]) == 0
    assert "did not stop cleanly" not in capsys.readouterr().err


@pytest.mark.parametrize("argv_tail", [["--skip-memory-check"], []])
def test_skip_memory_check_is_accepted_anywhere(argv_tail, monkeypatch, capsys):
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    assert main(["presets", *argv_tail]) == 0
    assert (os.environ.get(memory.SKIP_ENV) == "1") == bool(argv_tail)
    os.environ.pop(memory.SKIP_ENV, None)
