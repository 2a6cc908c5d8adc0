"""The run directory's life: the lock, finished and unfinished runs, damaged checkpoints, metrics.jsonl repairs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_helpers import assert_same_weights, tiny_recipe, tiny_recipe_tree

from warmstart.cli import main
from warmstart.errors import UserError
from warmstart.runtime import rundir
from warmstart.runtime.metrics import MetricsLog, read_metrics
from warmstart.train.loop import train
from warmstart.train.runs import run_once


def _event(step: int, loss: float = 2.0) -> dict:
    return {"event": "eval", "step": step, "tokens": step * 10, "val/code/loss": loss}


# ----------------------------------------------------------------------------------------------- metrics.jsonl
def test_truncate_to_a_checkpoint_offset_beyond_a_cut_line_keeps_whole_lines(tmp_path, capsys):
    log = MetricsLog(tmp_path / "metrics.jsonl", trackers=[])
    for s in range(3):
        log.write(_event(s))
    offset = log.offset()
    lines = (tmp_path / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "metrics.jsonl").write_bytes(lines[0] + lines[1][:9])  # lost writes: cut in line 2
    MetricsLog(tmp_path / "metrics.jsonl", trackers=[]).truncate(offset)
    assert capsys.readouterr().err.startswith(
        f"warmstart: warning: {tmp_path / 'metrics.jsonl'} is shorter than at the checkpoint "
        f"({len(lines[0]) + 9} of {offset} bytes"
    )
    assert (tmp_path / "metrics.jsonl").read_bytes() == lines[0]


def test_append_after_a_cut_last_line_drops_the_fragment(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(_event(0)) + "\n" + '{"event": "eval", "st')
    MetricsLog(path, trackers=[]).write(_event(1))
    assert capsys.readouterr().err == f"warmstart: warning: {path}: its last line was cut short (21 bytes, no newline); removed it\n"
    assert [m["step"] for m in read_metrics(tmp_path)] == [0, 1]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ('{"event": "eval", "step": 4, "val/code/lo', "not valid JSON ("),
        ("[1, 2, 3]\n", "expected one JSON object per line, got a list"),
        ('{"event": "eval"}\n', "event without an integer 'step'"),
    ],
    ids=["cut", "list", "no-step"],
)
def test_gap_and_report_name_a_corrupt_metrics_line(tmp_path, capsys, bad, says):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(_event(0, 3.0)) + "\n" + json.dumps(_event(2, 2.5)) + "\n" + bad)
    before = (run / "metrics.jsonl").read_bytes()
    for argv in (["gap", str(run)], ["report", str(run), "--out", str(tmp_path / "rep")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"warmstart: error: {run / 'metrics.jsonl'}:3: "), err
        assert says in err[0]
    assert (run / "metrics.jsonl").read_bytes() == before
    assert not (tmp_path / "rep").exists() and not (run / "gap.json").exists()


# ----------------------------------------------------------------------------------------------- the lock
def test_lock_is_exclusive_and_a_file_as_run_dir_is_one_line(tmp_path):
    first = rundir.RunLock(tmp_path / "out" / "run")
    first.acquire()
    assert (tmp_path / "out" / "run" / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(UserError, match=r"run: in use by another warmstart process \(pid \d+ on .* since "):
        rundir.RunLock(tmp_path / "out" / "run").acquire()
    first.release()
    assert not (tmp_path / "out").exists()  # created by the lock, nothing written: removed again
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file: exists and is not a directory"):
        rundir.RunLock(tmp_path / "file").acquire()
    assert (tmp_path / "file").read_text() == "x"


# ----------------------------------------------------------------------------------------------- finishing
def test_run_once_finishes_a_run_whose_summary_lacks_its_final_eval(data_dir, tokenizer_dir, tmp_path, capsys):
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="fin")
    done = run_once(recipe)
    assert done.status == "trained" and done.final_eval
    shutil.copytree(recipe.run_dir / "final", tmp_path / "final-first")
    broken = {**done.summary, "final_eval": {}}  # what a crash-interrupted finish used to leave
    (recipe.run_dir / "summary.json").write_text(json.dumps(broken))
    shutil.rmtree(recipe.run_dir / "final")
    capsys.readouterr()
    again = run_once(recipe)
    assert "not complete (summary.json has no final evaluation); finishing it" in capsys.readouterr().out
    assert again.status == "resumed"
    assert again.final_eval == done.final_eval
    assert {k: v for k, v in again.summary.items() if k != "elapsed_s"} == {
        k: v for k, v in done.summary.items() if k != "elapsed_s"
    }
    assert_same_weights(tmp_path / "final-first" / "model.safetensors", recipe.run_dir / "final" / "model.safetensors")
    evals = [m["step"] for m in read_metrics(recipe.run_dir) if m["event"] == "eval"]
    assert evals == [0, 4, 8]  # the final eval came from metrics.jsonl, not a second eval event
    assert run_once(recipe).status == "skipped"


# ----------------------------------------------------------------------------------------------- damage
def test_damaged_checkpoints_are_named_with_their_reasons(data_dir, tokenizer_dir, tmp_path, capsys):
    tree = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", "dmg",
                            train={"steps": 6, "checkpoint_every": 2, "keep_checkpoints": 3})
    (tmp_path / "dmg.yaml").write_text(yaml.safe_dump(tree))
    assert main(["train", str(tmp_path / "dmg.yaml")]) == 0
    run_dir = tmp_path / "runs" / "dmg"
    cps = run_dir / "checkpoints"

    # the newest checkpoint without its manifest: skipped with a one-line warning, resumed from the one before
    (run_dir / "summary.json").unlink()
    (cps / "step-00000006" / "manifest.json").unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-m", "warmstart", "train", str(tmp_path / "dmg.yaml"), "--resume"],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run_dir} from step-00000004" in res.stdout
    assert [line for line in res.stderr.splitlines() if line.strip() and "Writing model shards" not in line] == [
        f"warmstart: warning: checkpoint {cps / 'step-00000006'} is damaged "
        "(no manifest.json: incomplete or damaged); skipped"
    ]

    # every checkpoint damaged: each named with why it was rejected; nothing touched
    (run_dir / "summary.json").unlink()
    (cps / "step-00000006" / "manifest.json").unlink()
    weights = cps / "step-00000004" / "__0_0.distcp"
    weights.write_bytes(weights.read_bytes()[:-100])
    opt = cps / "step-00000002" / ".metadata"
    data = bytearray(opt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    opt.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path / "runs", name="dmg",
                         train={"steps": 6, "checkpoint_every": 2, "keep_checkpoints": 3})
    capsys.readouterr()
    with pytest.raises(UserError) as e:
        train(recipe, resume=True)
    assert capsys.readouterr().err.count("warmstart: warning: checkpoint ") == 3
    msg = str(e.value)
    assert "no intact checkpoint to resume from; found 3, all rejected: " in msg
    assert "step-00000006 (no manifest.json: incomplete or damaged)" in msg
    assert "step-00000004 (__0_0.distcp truncated" in msg
    assert "step-00000002 (.metadata corrupt (checksum mismatch))" in msg
    assert "before its first checkpoint" not in msg and "\n" not in msg
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    # the checkpoints folder deleted: said so, with the evidence
    shutil.rmtree(cps)
    with pytest.raises(UserError, match=r"checkpoints/ is missing, yet metrics.jsonl reaches step 6, past the "
                                        r"first checkpoint \(step 2\)"):
        train(recipe, resume=True)


def test_resume_with_nothing_yet_starts_from_step_0_and_a_typo_is_refused(data_dir, tokenizer_dir, tmp_path):
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="typo", train={"steps": 2})
    with pytest.raises(UserError, match="nothing to resume"):
        train(recipe, resume=True)
    assert not recipe.run_dir.exists()
    recipe.run_dir.mkdir()
    (recipe.run_dir / ".lock").write_text("pid 1 on elsewhere\n")  # left by a process killed before config.yaml
    assert train(recipe, resume=True).step == 2
    assert rundir.unfinished(recipe.run_dir, recipe) is None


def test_finished_summary_requires_the_last_step_and_final(data_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="r")
    assert rundir.unfinished(run, recipe) == "no summary.json"
    (run / "summary.json").write_text("{")
    assert rundir.unfinished(run, recipe) == "summary.json is unreadable"
    (run / "summary.json").write_text(json.dumps({"steps": 7, "final_eval": {"val/avg/loss": 1.0}}))
    assert rundir.unfinished(run, recipe) == "summary.json is at step 7, not 8"
    (run / "summary.json").write_text(json.dumps({"steps": 8, "final_eval": {"val/avg/loss": 1.0}}))
    assert rundir.unfinished(run, recipe) == "final/ is missing"
    (run / "final").mkdir()
    assert rundir.finished_summary(run, recipe) == {"steps": 8, "final_eval": {"val/avg/loss": 1.0}}
    quiet = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="r", eval={"domains": []})
    (run / "summary.json").write_text(json.dumps({"steps": 8, "final_eval": {}}))
    assert rundir.unfinished(run, recipe) == "summary.json has no final evaluation"
    assert rundir.unfinished(run, quiet) is None  # a recipe that evaluates nothing has an empty final eval


def test_stale_temps_of_a_killed_process_are_removed_on_start(data_dir, tokenizer_dir, tmp_path):
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="tmp", train={"steps": 2})
    run = recipe.run_dir
    (run / ".final.abc123.tmp").mkdir(parents=True)
    (run / ".final.abc123.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".summary.json.xyz.tmp").write_text("{")
    assert Path(run / ".final.abc123.tmp").is_dir()
    train(recipe, resume=True)
    assert rundir.stale_temps(run) == [] and (run / "final").is_dir()
