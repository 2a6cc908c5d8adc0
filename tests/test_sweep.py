"""`warmstart sweep`: grid expansion, naming and typing; skipping finished points; replay shares through train()."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import pytest
import yaml
from train_helpers import tiny_recipe_tree

from warmstart.errors import UserError
from warmstart.recipes.sweep import expand_grid, parse_grid, point_recipes, run_sweep


def interruptible_tree(data_dir, tokenizer_dir, tmp_path, name: str, steps: int) -> dict:
    """A tiny recipe that logs every step, so a signal lands inside its step loop."""
    return tiny_recipe_tree(
        data_dir, tokenizer_dir, tmp_path / "runs", name,
        train={"steps": steps, "batch_tokens": 128, "micro_batch_size": 4, "log_every": 1, "progress": False},
        eval={"every": 10, "max_tokens": 128, "batch_size": 8},
    )


@contextlib.contextmanager
def sigterm_once_training_logs(metrics):
    """A real SIGTERM to this process once `metrics` (a metrics.jsonl) holds its first train event; the step loop
    checkpoints and stops. The signal comes from a thread, joined on leaving the block."""

    def interrupt():
        while not (metrics.is_file() and '"train"' in metrics.read_text()):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=interrupt)
    t.start()
    try:
        yield
    finally:
        t.join()


def test_cartesian_product_names_and_types():
    grid = parse_grid(["schedule.max_lr=1.5e-4,3e-4,6e-4", "schedule.warmup_fraction=0,0.005,0.01,0.02"])
    pts = expand_grid(grid)
    assert len(pts) == 12
    assert [p.name for p in pts[:5]] == [
        "max_lr=1.5e-4,warmup_fraction=0",
        "max_lr=1.5e-4,warmup_fraction=0.005",
        "max_lr=1.5e-4,warmup_fraction=0.01",
        "max_lr=1.5e-4,warmup_fraction=0.02",
        "max_lr=3e-4,warmup_fraction=0",
    ]
    assert {(p.values["schedule.max_lr"], p.values["schedule.warmup_fraction"]) for p in pts} == {
        (lr, w) for lr in (1.5e-4, 3e-4, 6e-4) for w in (0, 0.005, 0.01, 0.02)
    }
    first = pts[0].values
    assert isinstance(first["schedule.max_lr"], float) and isinstance(first["schedule.warmup_fraction"], int)


def test_values_typed_like_set_and_names_sanitized():
    pts = expand_grid(
        parse_grid(["init.from=runs/a,runs/b c", "train.compile=true,false", "data.x=[1, 2],3"])
    )
    assert pts[0].values == {"init.from": "runs/a", "train.compile": True, "data.x": [1, 2]}
    assert pts[0].name == "from=runs_a,compile=true,x=_1__2_"
    assert pts[-1].name == "from=runs_b_c,compile=false,x=3"


def test_same_last_key_uses_full_key():
    pts = expand_grid(parse_grid(["a.lr=1", "b.lr=2"]))
    assert pts[0].name == "a.lr=1,b.lr=2"


@pytest.mark.parametrize(
    "items, needle",
    [
        ([], "at least one"),
        (["schedule.max_lr"], "KEY=V1"),
        (["schedule.max_lr=1,,2"], "empty value"),
        (["schedule.max_lr=1,1"], "repeated"),
        (["name=a,b"], "names its run"),
        (["x=1", "x=2"], "given twice"),
    ],
)
def test_bad_grids(items, needle):
    with pytest.raises(UserError, match=needle):
        parse_grid(items)


def test_colliding_names_refused():
    with pytest.raises(UserError, match="both name"):
        expand_grid(parse_grid(["init.from=a/b,a_b"]))


def test_point_recipe_validation_names_the_point(data_dir, tokenizer_dir, tmp_path):
    tree = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path, "sw")
    pts = point_recipes(tree, parse_grid(["schedule.max_lr=1e-3,3e-3"]))
    assert pts[0][1].run_dir == tmp_path / "sw" / "max_lr=1e-3"
    assert pts[1][1].schedule.max_lr == 3e-3
    with pytest.raises(UserError, match=r"\[max_lr=-1\]: schedule.max_lr"):
        point_recipes(tree, parse_grid(["schedule.max_lr=1e-3,-1"]))


def test_sweep_runs_every_point_then_skips_them(data_dir, tokenizer_dir, tmp_path):
    tree = tiny_recipe_tree(
        data_dir,
        tokenizer_dir,
        tmp_path / "runs",
        "rw",
        train={"steps": 4, "batch_tokens": 128, "micro_batch_size": 4, "log_every": 2, "progress": False},
        eval={"every": 2, "dense_steps": 2, "max_tokens": 128, "batch_size": 8},
    )
    recipe = tmp_path / "rw.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    grid = ["schedule.max_lr=1e-3,3e-3", "schedule.warmup_steps=0,1"]
    assert run_sweep(recipe, grid) == 0
    root = tmp_path / "runs" / "rw"
    runs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert runs == sorted(p.name for p in expand_grid(parse_grid(grid)))
    table = json.loads((root / "sweep.json").read_text())
    assert len(table["points"]) == 4 and all(p["complete"] for p in table["points"])
    row = table["points"][0]
    assert row["grid"] == {"schedule.max_lr": 1e-3, "schedule.warmup_steps": 0}
    summary = json.loads((root / row["point"] / "summary.json").read_text())
    assert row["final"] == {
        "code": summary["final_eval"]["val/code/loss"],
        "prose": summary["final_eval"]["val/prose/loss"],
    }
    assert set(row["gap"]) == {"val/code/loss", "val/prose/loss"}
    # points really differ: the learning rate logged is the point's
    lrs = {
        p["point"]: json.loads((root / p["point"] / "metrics.jsonl").read_text().splitlines()[1])["lr"]
        for p in table["points"]
    }
    assert lrs["max_lr=3e-3,warmup_steps=0"] == pytest.approx(3e-3)
    assert "| 0.001 | 0 |" in (root / "sweep.md").read_text()

    before = {
        p: (
            (root / p / "metrics.jsonl").read_bytes(),
            os.stat(root / p / "metrics.jsonl").st_mtime_ns,
            os.stat(root / p / "final" / "model.safetensors").st_mtime_ns,
        )
        for p in runs
    }
    assert run_sweep(recipe, grid) == 0
    after = {
        p: (
            (root / p / "metrics.jsonl").read_bytes(),
            os.stat(root / p / "metrics.jsonl").st_mtime_ns,
            os.stat(root / p / "final" / "model.safetensors").st_mtime_ns,
        )
        for p in runs
    }
    assert after == before  # nothing trained again


def test_sweep_resumes_an_interrupted_point_and_refuses_a_changed_recipe(data_dir, tokenizer_dir, tmp_path):
    from warmstart.recipes.sweep import run_point

    tree = interruptible_tree(data_dir, tokenizer_dir, tmp_path, "rs", steps=30)
    ((_, recipe),) = point_recipes(tree, parse_grid(["seed=3"]))
    metrics = recipe.run_dir / "metrics.jsonl"

    with sigterm_once_training_logs(metrics):
        status, code = run_point(recipe)
    assert (status, code) == ("interrupted", 128 + signal.SIGTERM)
    assert not (recipe.run_dir / "summary.json").exists()
    stopped_at = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert stopped_at < 30

    ((_, changed),) = point_recipes(tree, parse_grid(["seed=4"]))
    changed_dir = changed.run_dir
    changed_dir.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(recipe.run_dir, changed_dir)  # the same directory seen under a recipe with another seed
    with pytest.raises(UserError, match="different recipe"):
        run_point(changed)
    os.unlink(changed_dir)

    assert run_point(recipe) == ("resumed", 0)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"train"' in line]
    assert steps == list(range(1, 31))  # every step logged exactly once across the interruption
    assert json.loads((recipe.run_dir / "summary.json").read_text())["steps"] == 30
    assert run_point(recipe) == ("skipped", 0)


def test_replay_share_is_exact_through_the_training_loop(data_dir, tokenizer_dir, tmp_path):
    from warmstart.train.loop import train

    tree = tiny_recipe_tree(
        data_dir,
        tokenizer_dir,
        tmp_path,
        "replay",
        data={"weights": {"code": 1.0}, "replay": {"fraction": 0.25, "domains": {"prose": 1.0}}},
    )
    from warmstart.config import Recipe, validate

    recipe = validate(Recipe, tree)
    train(recipe)
    (ck,) = sorted((recipe.run_dir / "checkpoints").iterdir())
    state = json.loads((ck / "state.json").read_text())
    seqs = recipe.train.steps * recipe.train.batch_tokens // recipe.data.seq_len  # 8 steps x 8 sequences
    assert state["sampler"]["counts"] == {"code": seqs * 3 // 4, "prose": seqs // 4}


def test_continual_recipes_validate():
    from pathlib import Path

    from warmstart.config import load_recipe

    paths = sorted((Path(__file__).resolve().parents[1] / "src" / "warmstart" / "examples" / "continual").glob("*.yaml"))
    assert len(paths) >= 4
    for p in paths:
        assert load_recipe(p).name == p.stem


def test_an_interrupted_sweep_exits_128_plus_signum_then_resumes(data_dir, tokenizer_dir, tmp_path, capsys):
    """The multi-run interruption policy through the CLI: a SIGTERM in the first point's step loop stops the whole
    sweep (summary of the points so far written, one line, exit 143); the same command then finishes it."""
    from warmstart.cli import main

    tree = interruptible_tree(data_dir, tokenizer_dir, tmp_path, "ri", steps=20)
    recipe = tmp_path / "ri.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    argv = ["sweep", str(recipe), "--grid", "seed=1,2"]
    root = tmp_path / "runs" / "ri"
    metrics = root / "seed=1" / "metrics.jsonl"

    with sigterm_once_training_logs(metrics):
        code = main(argv)
    assert code == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "warmstart: stopped by SIGTERM; re-run the same command to resume"
    table = json.loads((root / "sweep.json").read_text())
    assert [p["complete"] for p in table["points"]] == [False, False]
    assert not (root / "seed=2").exists()  # the sweep stopped at the interrupted point

    assert main(argv) == 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"train"' in line]
    assert steps == list(range(1, 21))  # resumed, every step logged once
    table = json.loads((root / "sweep.json").read_text())
    assert [p["complete"] for p in table["points"]] == [True, True]
    md = (root / "sweep.md").read_text()
    assert md.count("| seed=") == 2 * 2  # two points x two domains in the gap table
