"""Exact resume: a run killed (SIGKILL) or stopped (SIGTERM) in any phase and resumed equals an uninterrupted run.

Phases are reached with the WARMSTART_TEST_PAUSE_AT hook (warmstart.signals.pause_point): the process says
"test pause at POINT" on stderr and waits there until the test signals it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_model
from train_helpers import assert_same_weights, metrics_without_timing, tiny_recipe_tree
from transformers import AutoModelForCausalLM

from warmstart.atomic import write_json
from warmstart.config import Recipe, validate
from warmstart.errors import UserError
from warmstart.runtime import rundir
from warmstart.runtime.metrics import read_metrics
from warmstart.train import checkpoint as ckpt
from warmstart.train.loop import train
from warmstart.train.optim import build_optimizer

STEPS = 30


def _write_recipe(tmp: Path, data_dir, tokenizer_dir, name: str) -> Path:
    tree = tiny_recipe_tree(
        data_dir, tokenizer_dir, tmp / "runs", name,
        train={"steps": STEPS, "checkpoint_every": 3, "keep_checkpoints": 3, "log_every": 2},
        eval={"every": 5, "dense_steps": 3},
    )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _cmd(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "warmstart", "train", str(recipe), *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference(data_dir, tokenizer_dir, tmp_path_factory):
    """The uninterrupted run, in a subprocess with the same thread settings as the interrupted ones."""
    tmp = tmp_path_factory.mktemp("ref")
    path = _write_recipe(tmp, data_dir, tokenizer_dir, "ref")
    subprocess.run(_cmd(path), check=True, env=_env(), capture_output=True)
    return tmp / "runs" / "ref"


def _start_and_wait_for_checkpoint(path: Path, run_dir: Path, min_step: int) -> subprocess.Popen:
    proc = subprocess.Popen(_cmd(path), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = ckpt.list_checkpoints(run_dir / "checkpoints")
        if done and int(done[-1].name.split("-")[1]) >= min_step:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


class _Proc:
    """`warmstart train` in a subprocess, its output read as it comes (so a test can wait for a line)."""

    def __init__(self, recipe: Path, *extra: str, pause: str | None = None):
        env = {**_env(), **({"WARMSTART_TEST_PAUSE_AT": pause} if pause else {})}
        self.proc = subprocess.Popen(_cmd(recipe, *extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
                         for pipe, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(pipe, lines: list[str]) -> None:
        for line in iter(pipe.readline, b""):
            lines.append(line.decode(errors="replace").rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for line in self.err):
                return
            if self.proc.poll() is not None:
                self.finish()
                raise AssertionError(f"ended before {text!r}: {self.err[-20:]}")
            time.sleep(0.02)
        self.proc.kill()
        raise AssertionError(f"no {text!r} within {timeout} s")

    def finish(self, timeout: float = 120) -> int:
        self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=10)
        return self.proc.returncode


def _summary(run_dir: Path) -> dict:
    """summary.json without its wall time and its own path."""
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in ("elapsed_s", "run_dir")}


def _assert_same_result(run_dir: Path, reference: Path) -> None:
    assert_same_weights(reference / "final" / "model.safetensors", run_dir / "final" / "model.safetensors")
    assert metrics_without_timing(run_dir) == metrics_without_timing(reference)
    assert _summary(run_dir) == _summary(reference)
    assert _summary(run_dir)["final_eval"]
    assert rundir.stale_temps(run_dir) == [] and not (run_dir / rundir.LOCK).exists()


def _resume(path: Path, *extra: str) -> subprocess.CompletedProcess:
    res = subprocess.run(_cmd(path, *extra), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_sigkill_then_resume_is_bit_identical(reference, data_dir, tokenizer_dir, tmp_path):
    path = _write_recipe(tmp_path, data_dir, tokenizer_dir, "killed")
    run_dir = tmp_path / "runs" / "killed"
    proc = _start_and_wait_for_checkpoint(path, run_dir, min_step=6)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "final").exists(), "the run finished before it could be killed"
    killed_at = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    assert int(killed_at.name.split("-")[1]) < STEPS
    saved = ckpt.load_state(killed_at)["elapsed_s"]
    with open(run_dir / "metrics.jsonl", "a") as f:  # a line cut short by the kill (or a full disk)
        f.write('{"event": "train", "step": 99, "train/lo')

    res = _resume(path, "--resume")
    assert "resuming" in res.stdout
    _assert_same_result(run_dir, reference)
    # the run's wall time carries over the kill: it counts on from the checkpoint's, never restarting at zero
    times = [m["elapsed_s"] for m in read_metrics(run_dir) if m["event"] == "train"]
    assert times == sorted(times) and saved > 0
    assert [t for t in times if t > saved] and all(t >= saved for t in times[-2:])
    assert json.loads((run_dir / "summary.json").read_text())["elapsed_s"] >= times[-1]


def test_sigterm_saves_checkpoint_and_exits_cleanly(reference, data_dir, tokenizer_dir, tmp_path):
    path = _write_recipe(tmp_path, data_dir, tokenizer_dir, "termed")
    run_dir = tmp_path / "runs" / "termed"
    proc = _start_and_wait_for_checkpoint(path, run_dir, min_step=3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    assert b"Traceback" not in err
    assert b"checkpoint saved" in out
    stopped = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    if not (run_dir / "final").exists():
        assert ckpt.verify(stopped) is None
        res = subprocess.run(_cmd(path, "--resume"), env=_env(), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
    assert_same_weights(reference / "final" / "model.safetensors", run_dir / "final" / "model.safetensors")
    assert metrics_without_timing(run_dir) == metrics_without_timing(reference)


def test_damaged_newest_checkpoint_falls_back(data_dir, tokenizer_dir, tmp_path, capsys):
    tree = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", "dmg",
                            train={"steps": 6, "checkpoint_every": 2, "keep_checkpoints": 3})
    recipe = validate(Recipe, tree)
    train(recipe)
    cps = ckpt.list_checkpoints(recipe.run_dir / "checkpoints")
    assert [p.name for p in cps] == ["step-00000002", "step-00000004", "step-00000006"]
    shard = cps[-1] / "__0_0.distcp"  # the tensors (model and optimizer) written by rank 0
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    capsys.readouterr()
    assert ckpt.newest_valid(recipe.run_dir / "checkpoints") == cps[-2]
    assert capsys.readouterr().err.splitlines() == [
        f"warmstart: warning: checkpoint {cps[-1]} is damaged (__0_0.distcp truncated "
        f"({shard.stat().st_size} of {shard.stat().st_size + 100} bytes)); skipped"
    ]
    meta = cps[-2] / ".metadata"
    data = bytearray(meta.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    meta.write_bytes(bytes(data))
    assert ckpt.newest_valid(recipe.run_dir / "checkpoints") == cps[0]
    messages = capsys.readouterr().err.splitlines()
    assert len(messages) == 2 and "step-00000004 is damaged (.metadata corrupt" in messages[1], messages


def test_checkpoint_of_the_older_format_is_refused_in_one_line(data_dir, tokenizer_dir, tmp_path):
    """A checkpoint as warmstart wrote it before torch.distributed.checkpoint (one safetensors file and a pickled
    optimizer state, with a valid manifest): --resume refuses it in one line and changes no file."""
    recipe = validate(Recipe, tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", "old",
                                               train={"steps": 2, "checkpoint_every": 2}))
    train(recipe)
    cp = ckpt.list_checkpoints(recipe.run_dir / "checkpoints")[-1]
    (recipe.run_dir / "final").rename(tmp_path / "final")  # the run as if killed after its checkpoint
    (recipe.run_dir / "summary.json").unlink()
    for f in [*cp.glob("*.distcp"), cp / ".metadata", cp / "manifest.json"]:
        f.unlink()
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "final"))
    save_model(model, str(cp / "model.safetensors"))
    torch.save(build_optimizer(model, recipe.optim, lr=1e-3, device=torch.device("cpu")).state_dict(),
               cp / "optimizer.pt")
    write_json(cp / "manifest.json", {p.name: {"bytes": p.stat().st_size,
                                               "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                                      for p in sorted(cp.iterdir())})
    before = {p: p.read_bytes() for p in recipe.run_dir.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as e:
        train(recipe, resume=True)
    assert "older warmstart (model.safetensors + optimizer.pt)" in str(e.value) and "\n" not in str(e.value)
    assert {p: p.read_bytes() for p in recipe.run_dir.rglob("*") if p.is_file()} == before


def test_startup_kill_second_process_refused_stale_lock_taken_over(reference, data_dir, tokenizer_dir, tmp_path):
    """Killed after config.yaml, before step 1; meanwhile a second process is refused by the lock."""
    path = _write_recipe(tmp_path, data_dir, tokenizer_dir, "startup")
    run_dir = tmp_path / "runs" / "startup"
    first = _Proc(path, pause="startup")
    first.wait_for("test pause at startup")
    assert (run_dir / "config.yaml").is_file() and not ckpt.list_checkpoints(run_dir / "checkpoints")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    second = subprocess.run(_cmd(path), env=_env(), capture_output=True, text=True)
    assert second.returncode == 2
    assert second.stderr.splitlines() == [
        f"warmstart: error: {run_dir}: in use by another warmstart process (pid {first.proc.pid} on "
        f"{os.uname().nodename} since {second.stderr.split(' since ')[1].split(')')[0]}); "
        "wait for it to end or stop it"
    ]
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    first.proc.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    assert (run_dir / rundir.LOCK).exists()  # left behind by the dead process: not a lock any more

    res = _resume(path, "--resume")
    assert "no checkpoint yet" in res.stdout
    _assert_same_result(run_dir, reference)


@pytest.mark.parametrize(
    ("point", "sig"),
    [
        ("startup", signal.SIGTERM),  # config.yaml written, before step 1; then started again without --resume
        (f"checkpoint_write:{6}", signal.SIGKILL),  # a checkpoint half-written, the previous one intact
        ("before_final", signal.SIGKILL),  # after the last checkpoint, final/ not begun
        ("final_save", signal.SIGKILL),  # final/ written to its temp folder
        ("final_save", signal.SIGINT),
    ],
    ids=["startup-term", "checkpoint-write-kill", "after-last-checkpoint-kill", "final-save-kill",
         "final-save-int"],
)
def test_stop_in_a_phase_then_resume_equals_uninterrupted(reference, data_dir, tokenizer_dir, tmp_path, point, sig):
    path = _write_recipe(tmp_path, data_dir, tokenizer_dir, "phase")
    run_dir = tmp_path / "runs" / "phase"
    proc = _Proc(path, pause=point)
    proc.wait_for(f"test pause at {point}")
    cps = [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")]
    if point == "startup":
        assert (run_dir / "config.yaml").is_file() and cps == []
    elif point.startswith("checkpoint_write"):
        assert (run_dir / "checkpoints" / ".tmp-step-00000006").is_dir() and cps == ["step-00000003"]
    elif point == "before_final":
        assert cps[-1] == f"step-{STEPS:08d}" and not (run_dir / "final").exists()
    else:
        assert list(run_dir.glob(".final.*.tmp")) and not (run_dir / "final").exists()
    proc.proc.send_signal(sig)
    code = proc.finish()
    assert not (run_dir / "summary.json").exists()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # a clean stop: one line, no temp folder, the lock released
        assert code == 128 + sig
        ours = [line for line in proc.err if "test pause" not in line and "Writing model shards" not in line]
        assert ours == [
            f"warmstart: stopped by {signal.Signals(sig).name}; {run_dir}: continue it with --resume"
        ]
        assert rundir.stale_temps(run_dir) == [] and not (run_dir / rundir.LOCK).exists()
        assert not (run_dir / "final").exists()

    res = _resume(path) if point == "startup" else _resume(path, "--resume")
    if point == "startup":
        assert "starting it again from step 0" in res.stdout
    else:
        assert "resuming" in res.stdout
    _assert_same_result(run_dir, reference)


def test_resume_of_a_finished_run_is_a_noop(reference):
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in reference.rglob("*") if p.is_file()}
    res = _resume(reference.parent.parent / "ref.yaml", "--resume")
    assert res.stdout.splitlines()[-1] == f"{reference}: already finished (step {STEPS}); nothing to do"
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in reference.rglob("*") if p.is_file()} == files
