"""The example recipes ship with the package: usable by the paths docs/ uses from any directory, listed and
copied out by `warmstart recipe`; a local file of the same path wins."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from warmstart import examples
from warmstart.cli import main
from warmstart.config import load_recipe
from warmstart.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_readme_paths_work_outside_the_clone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    r = load_recipe("recipes/pretrain.yaml", ["train.steps=3"])
    assert r.name == "upstream" and r.train.steps == 3 and r.data.dir == "corpus/shards"
    err = capsys.readouterr().err
    assert err == ("warmstart: warning: recipes/pretrain.yaml: not here; using the copy shipped with warmstart "
                   "(`warmstart recipe copy pretrain.yaml` to edit it)\n")
    assert load_recipe("continual/rewarm-sweep").name == "rewarm-sweep"  # a bare name, without .yaml
    # an error in a value of the packaged copy names it as the user did, not by its path inside the package
    with pytest.raises(UserError, match=r"^recipes/pretrain\.yaml \(the copy shipped with warmstart\): "
                                        r"train\.batch_tokens: 100 is not a multiple of data\.seq_len"):
        load_recipe("recipes/pretrain.yaml", ["train.batch_tokens=100"])
    with pytest.raises(UserError, match=r"^recipes/nope\.yaml: recipe file not found$"):
        load_recipe("recipes/nope.yaml")
    # a local file of that path is the user's and wins, silently
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "pretrain.yaml").write_text(
        (examples.ROOT / "pretrain.yaml").read_text().replace("name: upstream", "name: mine"))
    capsys.readouterr()
    assert load_recipe("recipes/pretrain.yaml").name == "mine" and capsys.readouterr().err == ""


def test_recipe_list_and_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["recipe", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]]
    assert listed == examples.names() and "continual/rewarm-sweep.yaml" in listed and len(listed) >= 15
    assert main(["recipe", "copy", "pretrain.yaml", "recipes/continual/rewarm-sweep.yaml"]) == 0
    for name in ("pretrain.yaml", "continual/rewarm-sweep.yaml"):
        assert (tmp_path / "recipes" / name).read_bytes() == (examples.ROOT / name).read_bytes()
    capsys.readouterr()
    assert main(["recipe", "copy", "pretrain.yaml", "wsd.yaml"]) == 2  # one exists: nothing copied
    assert "recipes/pretrain.yaml already exist(s); nothing copied" in capsys.readouterr().err
    assert not (tmp_path / "recipes" / "wsd.yaml").exists()
    assert main(["recipe", "copy", "nope.yaml", "--to", "x"]) == 2
    assert "no packaged recipe 'nope.yaml'" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["recipe", "copy", "--to", "all"]) == 0
    assert sorted(p.relative_to(tmp_path / "all").as_posix() for p in (tmp_path / "all").rglob("*.yaml")) == \
        examples.names()


def test_every_example_is_package_data():
    """pyproject's package-data globs cover every example recipe, so a wheel install has them all."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["warmstart"]
    for name in examples.names():
        rel = f"examples/{name}"
        assert any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs), rel


def test_walkthrough_outputs_are_ignored_by_git():
    ignored = set((REPO / ".gitignore").read_text().split())
    assert {"/corpus/", "/runs/", "/mixtures/", "/report/", "/eval/", "/models/", "/quickstart/"} <= ignored


def test_documented_prepare_example_is_a_valid_recipe():
    """The prepare recipe for a user's own text in docs/prepare.md validates (keys and types as `prepare` reads
    them)."""
    import re

    from warmstart.config import PrepareConfig, load_yaml, validate

    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "docs" / "prepare.md").read_text(), re.S)
    prep = [b for b in blocks if b.startswith("tokenizer:")]
    assert prep
    for b in prep:
        cfg = validate(PrepareConfig, load_yaml(b), "docs/prepare.md")
        assert {s.format for srcs in cfg.domains.values() for s in srcs} >= {"text"}
