"""Data-parallel training with real torchrun processes (gloo on CPU): DDP and FSDP2 equal the single-process run,
and a checkpoint of any layout resumes on any number of processes, in either layout, to the same result."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from train_helpers import tiny_recipe_tree
from transformers import AutoModelForCausalLM

from warmstart.runtime.metrics import read_metrics
from warmstart.train import checkpoint as ckpt

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
pytestmark = pytest.mark.skipif(not os.path.exists(TORCHRUN) and shutil.which("torchrun") is None,
                                reason="torchrun not installed")
STEPS, CUT = 6, 3  # checkpoints at 3 and 6; a resume from 3 re-runs steps 4-6
SHARD_MB = 0.1  # final/ in files of at most 100 KB: the tiny model's ~0.4 MB in several


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


def _train(recipe: Path, procs: int, *extra: str) -> None:
    if procs == 1:
        _run([sys.executable, "-m", "warmstart", "train", str(recipe), *extra])
    else:
        _run([TORCHRUN, "--standalone", "--nproc-per-node", str(procs), "-m", "warmstart", "train", str(recipe),
              *extra])


def _recipe(tmp: Path, tree: dict, name: str, parallel: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**tree, "name": name, "train": {**tree["train"], "parallel": parallel}}))
    return path


def _same_numbers(a: list[dict], b: list[dict]) -> None:
    """Same events at the same steps, losses and gradient norms within float tolerance."""
    assert [(r["event"], r["step"]) for r in a] == [(r["event"], r["step"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key, va in ra.items():
            if key.startswith(("train/loss", "val/", "grad_norm")) and va is not None:
                assert rb[key] == pytest.approx(va, rel=2e-4, abs=1e-5), (ra["step"], key, va, rb[key])


def _same_checkpoint_and_final(run: Path) -> None:
    """The last checkpoint (sharded or not), loaded into one plain model, is final/ bit for bit."""
    model = AutoModelForCausalLM.from_pretrained(str(run / "final"))
    want = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.data.zero_()
    ckpt.load_into(ckpt.step_dir(run / "checkpoints", STEPS), model, None, 0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k


def _final_tensors(run: Path) -> dict[str, torch.Tensor]:
    """final/'s tensors, from every file of its sharded safetensors layout."""
    out = {}
    for f in sorted((run / "final").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _close_weights(a: Path, b: Path) -> None:
    ta, tb = _final_tensors(a), _final_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=1e-3, atol=1e-4, msg=k)


def _init_checkpoint(tmp: Path, tokenizer_dir: Path) -> Path:
    """A tied LLaMA in bf16, in safetensors shards of 50 KB (an index and several files), with its tokenizer: what
    every run of the module starts from (FSDP processes read only their own rows of it)."""
    from warmstart.config import ModelConfig
    from warmstart.models.build import build_model

    model = build_model(ModelConfig(preset="llama-tiny", tokenizer=str(tokenizer_dir)), None, seed=3).model
    src = tmp / "init"
    model.to(torch.bfloat16).save_pretrained(str(src), max_shard_size="50KB")
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, src / f.name)
    assert len(list(src.glob("model-*.safetensors"))) > 2
    return src


@pytest.fixture(scope="module")
def runs(data_dir, tokenizer_dir, tmp_path_factory):
    """Uninterrupted runs of one recipe: one process, 2 DDP processes, 2 FSDP processes, all from one bf16
    checkpoint in safetensors shards (FSDP starts on the meta device and reads its own rows of it).

    16 sequences per step: one process accumulates 4 micro-batches of 4, two processes 2 each. 5 validation
    sequences per domain in batches of 2: under two processes one rank has a batch fewer (a sharded model must
    still run it). Gradients are clipped at 0.5, below every step's norm (0.76-0.88), so clipping acts on every
    step (sharded gradients included): without it losses differ by ~3e-3, 10x the tolerance below."""
    tmp = tmp_path_factory.mktemp("dist")
    tree = tiny_recipe_tree(
        data_dir, tokenizer_dir, tmp / "runs", "x",
        train={"steps": STEPS, "batch_tokens": 512, "micro_batch_size": 4, "log_every": 2,
               "checkpoint_every": CUT, "keep_checkpoints": 2, "save_shard_mb": SHARD_MB},
        eval={"every": CUT, "max_tokens": 160, "batch_size": 2, "windows": "packed"}, optim={"grad_clip": 0.5},
        init={"from": str(_init_checkpoint(tmp, tokenizer_dir))},
    )
    tree["model"] = {"tokenizer": str(tokenizer_dir)}  # the architecture comes from init.from
    _train(_recipe(tmp, tree, "single", "ddp"), 1)
    _train(_recipe(tmp, tree, "ddp", "ddp"), 2)
    _train(_recipe(tmp, tree, "fsdp", "fsdp"), 2)
    return tmp, tree


def test_two_process_ddp_and_fsdp_match_single_process(runs):
    tmp, _ = runs
    single, ddp, fsdp = (tmp / "runs" / n for n in ("single", "ddp", "fsdp"))
    a = read_metrics(single)
    assert len([r for r in a if r["event"] == "train"]) == STEPS // 2
    for other in (ddp, fsdp):
        _same_numbers(a, read_metrics(other))
        _close_weights(single, other)
        # rank 0 alone wrote the run's final/: one plain HF checkpoint, the same files as one process writes,
        # in Hugging Face's sharded layout (files of at most train.save_shard_mb)
        assert sorted(p.name for p in (other / "final").iterdir()) == sorted(p.name for p in (single / "final").iterdir())
        assert (other / "final" / "model.safetensors.index.json").is_file()
        assert len(list((other / "final").glob("model-*.safetensors"))) > 2
    _same_checkpoint_and_final(fsdp)
    model = AutoModelForCausalLM.from_pretrained(str(fsdp / "final"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    # FSDP's checkpoint holds each process's half of a block's weight; DDP's holds it whole
    key = "model.model.layers.0.mlp.up_proj.weight"
    for run, rows in ((fsdp, [(0, 86), (86, 86)]), (ddp, [(0, 172)])):
        meta = FileSystemReader(str(ckpt.step_dir(run / "checkpoints", CUT))).read_metadata()
        assert [(c.offsets[0], c.sizes[0]) for c in meta.state_dict_metadata[key].chunks] == rows


def _resume(tmp: Path, tree: dict, source: str, name: str, procs: int, parallel: str) -> Path:
    """A copy of run `source` as it was at step CUT (its checkpoint and metrics), resumed under a new layout."""
    src, dst = tmp / "runs" / source, tmp / "runs" / name
    cut = ckpt.step_dir(src / "checkpoints", CUT)
    shutil.copytree(cut, ckpt.step_dir(dst / "checkpoints", CUT))
    shutil.copy(src / "metrics.jsonl", dst / "metrics.jsonl")
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    (dst / "config.yaml").write_text(yaml.safe_dump({**cfg, "name": name}))
    _train(_recipe(tmp, tree, name, parallel), procs, "--resume")
    return dst


def test_resume_on_other_process_counts_and_layouts(runs):
    """2 FSDP -> 1, 1 -> 2 DDP, 2 DDP -> 2 FSDP: each continues to the uninterrupted result, including the first
    train/loss logged after the resume (step 4: its window holds step 3, from before the checkpoint)."""
    tmp, tree = runs
    single = tmp / "runs" / "single"
    reference = read_metrics(single)
    for source, name, procs, parallel in [("fsdp", "fsdp-to-1", 1, "ddp"), ("single", "1-to-ddp", 2, "ddp"),
                                          ("ddp", "ddp-to-fsdp", 2, "fsdp")]:
        dst = _resume(tmp, tree, source, name, procs, parallel)
        got = read_metrics(dst)
        # the events before the checkpoint are the source run's own lines, kept byte for byte
        assert [r for r in got if r["step"] <= CUT] == [r for r in read_metrics(tmp / "runs" / source)
                                                        if r["step"] <= CUT], name
        _same_numbers(reference, got)
        first = next(r for r in got if r["event"] == "train" and r["step"] > CUT)
        want = next(r for r in reference if r["event"] == "train" and r["step"] > CUT)
        assert first["step"] == CUT + 1 and first["train/loss"] == pytest.approx(want["train/loss"], rel=2e-4)
        _close_weights(single, dst)
        _same_checkpoint_and_final(dst)
        assert ckpt.load_state(ckpt.step_dir(dst / "checkpoints", STEPS))["world"] == procs


def test_fsdp_run_resumes_bit_identically(runs):
    """A 2-process FSDP run started on the meta device from the bf16 checkpoint, resumed from its step-3
    checkpoint on the same layout, ends with the uninterrupted run's weights bit for bit."""
    tmp, tree = runs
    dst = _resume(tmp, tree, "fsdp", "fsdp-to-fsdp", 2, "fsdp")
    got, want = _final_tensors(dst), _final_tensors(tmp / "runs" / "fsdp")
    assert got.keys() == want.keys()
    for k in got:
        assert torch.equal(got[k], want[k]), k


def test_meta_start_under_fsdp_equals_from_pretrained_and_reads_only_its_shards(runs):
    """Each of two FSDP processes holds exactly the plain load's weights, buffers (rotary inv_freq), tie and
    logits (tests/dist_meta_start.py checks them), having read about half of the checkpoint's bytes."""
    tmp, tree = runs
    script = Path(__file__).with_name("dist_meta_start.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", str(script), tree["init"]["from"]],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    # two processes share one stdout pipe: under load their lines can run together, so each rank's report is found
    # wherever it is
    said = {int(r): (int(a), int(b)) for r, a, b in
            re.findall(r"meta-start rank (\d+): read (\d+) of (\d+) bytes", res.stdout)}
    assert sorted(said) == [0, 1], res.stdout[-2000:]
    for read, total in said.values():
        assert 0.4 * total < read < 0.6 * total  # its own half of every tensor, not the whole checkpoint


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(recipe: Path, *extra: str) -> list[subprocess.Popen]:
    """Two torchrun agents of one process each, as two nodes would start them: c10d rendezvous on localhost."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
           f"127.0.0.1:{_free_port()}", "--rdzv-id", recipe.stem, "-m", "warmstart", "train", str(recipe), *extra]
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True) for _ in range(2)]


def _wait(nodes: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    for p in nodes:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in nodes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(q.pid, signal.SIGKILL)
            raise
        out.append((p.returncode, stdout + stderr))
    return out


def _kill_node(agent: int) -> None:
    """SIGKILL a torchrun agent and every process under it (its worker runs in a session of its own), as a node
    that dies takes them all."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [agent], []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_two_nodes_equal_one_process_and_resume_on_another_layout(runs):
    """The multi-node command of docs/train.md, as two nodes on one machine: the same losses and weights as one
    process, and its checkpoint resumes on one process to the same result."""
    tmp, tree = runs
    results = _wait(_two_nodes(_recipe(tmp, tree, "nodes", "fsdp")))
    assert all(rc == 0 for rc, _ in results), results[0][1][-3000:] + results[1][1][-3000:]
    single, nodes = tmp / "runs" / "single", tmp / "runs" / "nodes"
    _same_numbers(read_metrics(single), read_metrics(nodes))
    _close_weights(single, nodes)
    _same_checkpoint_and_final(nodes)
    assert ckpt.load_state(ckpt.step_dir(nodes / "checkpoints", STEPS))["world"] == 2
    dst = _resume(tmp, tree, "nodes", "nodes-to-1", 1, "ddp")
    _same_numbers(read_metrics(single), read_metrics(dst))
    _close_weights(single, dst)


def test_a_node_killed_mid_run_stops_the_job_and_leaves_it_resumable(runs):
    """One of two nodes killed (SIGKILL to its agent and worker) after the run's first checkpoint: the other
    node's process stops with one line naming what happened, and the run resumes on one process to its end."""
    tmp, tree = runs
    steps = 100
    long = {**tree, "train": {**tree["train"], "steps": steps, "checkpoint_every": 10, "log_every": 10},
            "eval": {**tree["eval"], "every": steps}}
    recipe = _recipe(tmp, long, "killed", "ddp")
    run = tmp / "runs" / "killed"
    nodes = _two_nodes(recipe)
    deadline = time.monotonic() + 240
    while not ckpt.step_dir(run / "checkpoints", 10).is_dir():
        assert time.monotonic() < deadline and all(p.poll() is None for p in nodes), "no checkpoint came"
        time.sleep(0.01)
    _kill_node(nodes[1].pid)
    rc, out = _wait(nodes[:1], timeout=120)[0]
    nodes[1].wait()
    assert rc != 0
    line = next((ln for ln in out.splitlines() if "another process" in ln), out[-3000:])
    assert line.startswith("warmstart: error: another process of this distributed run stopped (rank "), line
    assert "GLHF" not in line  # gloo's advice to its own developers is left out
    assert "--resume" in out
    assert not (run / "final").exists()
    _train(recipe, 1, "--resume")
    assert ckpt.load_state(ckpt.step_dir(run / "checkpoints", steps))["step"] == steps
    assert (run / "final" / "config.json").is_file()


def test_two_process_masked_lm_matches_single_process(data_dir, tokenizer_dir, tmp_path):
    """Masked LM: each process predicts a different number of tokens; the step is still the single-process one
    (the loss is divided by the predicted tokens of the whole global batch)."""
    tree = tiny_recipe_tree(
        data_dir, tokenizer_dir, tmp_path / "runs", "x", model={"preset": "bert-tiny", "objective": "masked"},
        train={"steps": 3, "batch_tokens": 512, "micro_batch_size": 4, "log_every": 1}, eval={"every": 3},
    )
    _train(_recipe(tmp_path, tree, "single", "ddp"), 1)
    _train(_recipe(tmp_path, tree, "ddp", "ddp"), 2)
    a, b = read_metrics(tmp_path / "runs" / "single"), read_metrics(tmp_path / "runs" / "ddp")
    la, lb = ([r["train/loss"] for r in m if r["event"] == "train"] for m in (a, b))
    assert len(la) == 3 and lb == pytest.approx(la, rel=1e-5)
    wa = load_file(str(tmp_path / "runs" / "single" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "runs" / "ddp" / "final" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=2e-6), k


def test_bad_input_under_torchrun_is_one_line_and_torchruns_root_cause(tmp_path):
    """Every worker meets the same bad recipe: rank 0 prints the one line, and torchrun's own failure report names
    it as the root cause (its error file) instead of pointing to its docs."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "out_dir": str(tmp_path / "runs"),
                                      "data": {"dir": str(tmp_path / "nodata"), "seq_len": 16},
                                      "model": {"preset": "llama-tiny", "tokenizer": "t"},
                                      "train": {"steps": 2, "batch_tokens": 64}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "warmstart", "train", str(recipe)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("warmstart: error:")]
    assert len(lines) == 1 and "nodata" in lines[0], res.stderr[-3000:]
    assert f"traceback : {lines[0]}" in res.stderr  # torchrun's Root Cause section
    assert "To enable traceback see" not in res.stderr


def test_sharded_final_is_read_by_eval_and_inherit(runs, data_dir, tmp_path):
    """An FSDP run's final/ in several safetensors files (an index) is what `eval` and `inherit --from RUN` read:
    eval gives the run's own final validation losses, inherit the final's own embedding and first block."""
    from warmstart.cli import main
    from warmstart.models.surgery import inherit

    tmp, _ = runs
    fsdp = tmp / "runs" / "fsdp"
    assert (fsdp / "final" / "model.safetensors.index.json").is_file()
    cut = inherit(fsdp, tmp_path / "cut", layers=1).out
    final, small = _final_tensors(fsdp), load_file(str(cut / "model.safetensors"))
    for k in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.norm.weight"):
        assert torch.equal(small[k], final[k]), k
    assert main(["eval", str(fsdp), "--data", str(data_dir), "--out", str(tmp_path / "ev")]) == 0
    got = json.loads(next((tmp_path / "ev").glob("*.json")).read_text())
    logged = [r for r in read_metrics(fsdp) if r["event"] == "eval"][-1]
    for domain in ("code", "prose"):  # eval repeats the run's own settings: the same number
        assert got["val"][domain]["loss"] == pytest.approx(logged[f"val/{domain}/loss"], rel=1e-4), domain
