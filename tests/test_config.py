"""Recipes: typed validation with dotted key paths, --set overrides, the resolved config written back."""

from __future__ import annotations

import pytest
import yaml

from warmstart.config import PrepareConfig, load, load_recipe, to_yaml
from warmstart.errors import UserError

BASE = """
name: r
data: {dir: shards, weights: {a: 1.0}, seq_len: 64}
model: {preset: llama-tiny, tokenizer: tok}
train: {steps: 10, batch_tokens: 256}
"""


@pytest.fixture
def recipe_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(BASE)
    return p


def test_overrides_are_typed(recipe_file):
    r = load_recipe(recipe_file, ["schedule.max_lr=6e-4", "train.compile=true", "optim.betas=[0.9, 0.99]"])
    assert r.schedule.max_lr == 6e-4 and isinstance(r.schedule.max_lr, float)
    assert r.train.compile is True
    assert r.optim.betas == (0.9, 0.99)
    assert r.run_dir.as_posix() == "runs/r"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.max_lrr=1", "schedule.max_lrr: unknown key"),
        ("schedule.max_lr=fast", "schedule.max_lr: Input should be a valid number"),
        ("train.batch_tokens=100", "train.batch_tokens: 100 is not a multiple of data.seq_len 64"),
        ("schedule.kind=linear", "schedule.kind: Input should be"),
        ("train.tokens=100", "give exactly one of train.tokens and train.steps"),
        ("data.weights.a=-1", "weights.a: must be >= 0"),
        ("init.from=somewhere", "model.preset: the architecture comes from init.from"),
    ],
)
def test_errors_name_the_key(recipe_file, override, message):
    with pytest.raises(UserError) as e:
        load_recipe(recipe_file, [override])
    assert message in str(e.value)
    assert str(recipe_file) in str(e.value)
    assert "\n" not in str(e.value)


def test_set_into_a_value_is_an_error(recipe_file):
    with pytest.raises(UserError, match="'seq_len' is a value, not a section"):
        load_recipe(recipe_file, ["data.seq_len.x=1"])


def test_resolved_recipe_round_trips(recipe_file, tmp_path):
    r = load_recipe(recipe_file, ["init.keep_optimizer=false"])
    text = to_yaml(r)
    assert "warmup_steps" in text  # defaults are written out: the run dir says exactly what ran
    again = tmp_path / "again.yaml"
    again.write_text(text)
    assert load_recipe(again) == r
    assert yaml.safe_load(text)["init"] == {"from": None, "keep_optimizer": False}


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_recipe(lst)


def test_prepare_config_checks(tmp_path):
    base = {"tokenizer": "t", "out": "o", "domains": {"a": [{"path": "x.jsonl"}]}}
    assert load(PrepareConfig, None, ["val_fraction=0.1"], base=base).val_fraction == 0.1
    with pytest.raises(UserError, match="val_docs or val_fraction, not both"):
        load(PrepareConfig, None, ["val_fraction=0.1", "val_docs=3"], base=base)
    with pytest.raises(UserError, match="domains.a.0.formatt: unknown key"):
        load(PrepareConfig, None, ["domains.a=[{path: x, formatt: jsonl}]"], base=base)
    with pytest.raises(UserError, match=r"domains.a: no sources listed"):
        load(PrepareConfig, None, ["domains.a=[]"], base=base)


def test_recipe_model_is_required():
    with pytest.raises(UserError, match="give model.preset, model.family or model.config"):
        load_recipe(None, base={"name": "x", "data": {"dir": "d"}, "train": {"steps": 1}})


def test_shipped_recipes_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "src" / "warmstart" / "examples"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert "pretrain.yaml" in names and "rewarm.yaml" in names
    from warmstart.config import GrowRecipe, load, read_yaml

    for path in root.glob("*.yaml"):
        # a `warmstart grow` recipe (it names a reference) is a GrowRecipe; every other one a train Recipe
        r = load(GrowRecipe, path) if "reference" in read_yaml(path) else load_recipe(path)
        assert r.name and r.data.dir == "corpus/shards"


def test_atomic_writes_follow_the_umask(tmp_path):
    import os

    from warmstart.atomic import build_dir, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "f.txt", "x")
        with build_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
