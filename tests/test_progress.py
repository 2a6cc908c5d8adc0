"""Progress in a log: no `\r` redraws when stderr is a file, plain lines at the set interval instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from train_helpers import tiny_recipe_tree

SRC = Path(__file__).resolve().parents[1] / "src"


def _train_logged(tmp_path: Path, data_dir, tokenizer_dir, name: str, interval: str | None) -> tuple[str, str]:
    tree = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", name, train={"progress": True})
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("WARMSTART_PROGRESS_S", None)
    if interval is not None:
        env["WARMSTART_PROGRESS_S"] = interval
    err, out = tmp_path / f"{name}.err", tmp_path / f"{name}.out"
    with err.open("w") as e, out.open("w") as o:
        proc = subprocess.run([sys.executable, "-m", "warmstart", "train", str(recipe)], stdout=o, stderr=e,
                              env=env, timeout=300)
    assert proc.returncode == 0, err.read_text()
    return err.read_text(), out.read_text()


def test_training_progress_in_a_log_is_lines_not_carriage_returns(tmp_path, data_dir, tokenizer_dir):
    err, out = _train_logged(tmp_path, data_dir, tokenizer_dir, "lines", "0")  # a line at every update
    assert "\r" not in err and "\r" not in out
    lines = [ln for ln in err.splitlines() if ln.startswith("lines: ")]
    steps = [int(ln.split()[1].split("/")[0]) for ln in lines]
    assert steps[-1] == 8 and steps == sorted(steps) and len(lines) >= 8, err
    assert all(ln.split()[1].endswith("/8") and "elapsed" in ln and len(ln) < 200 for ln in lines)
    assert any("loss=" in ln for ln in lines)

    err, out = _train_logged(tmp_path, data_dir, tokenizer_dir, "quiet", None)  # default: a line every 30 s
    assert "\r" not in err and "quiet: " not in err
    assert "finished" in out


def test_bar_on_a_log_writes_nothing_when_disabled_or_short(capsys, monkeypatch):
    from warmstart.progress import bar

    monkeypatch.setenv("WARMSTART_PROGRESS_S", "0")
    with bar(3, enabled=False, desc="off") as b:
        b.update(3)
    monkeypatch.setenv("WARMSTART_PROGRESS_S", "30")
    with bar(3, desc="short") as b:
        b.update(3)
    assert capsys.readouterr().err == ""
