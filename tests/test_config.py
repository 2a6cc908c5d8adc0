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
    # a key the override wrote is blamed on the override; a rule across keys on the recipe
    assert str(e.value).startswith((f"{recipe_file}: ", f"--set {override.split('=')[0]}: "))
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
    assert yaml.safe_load(text)["init"] == {"from": None, "keep_optimizer": False, "charged_flops": 0.0}


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


# ----------------------------------------------------------------------------------------------- duplicate keys
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (  # a domain written twice: the second (code) would silently build `prose`
            "tokenizer: tok\nout: p\ndomains:\n  prose: [prose.jsonl]\n  code: [code.jsonl]\n  prose: [code.jsonl]\n",
            "key 'domains.prose' written twice (lines 4 and 6); keep one",
        ),
        (
            "tokenizer: tok\nout: p\ndomains: {a: [a.jsonl]}\nout: q\n",
            "key 'out' written twice (lines 2 and 4); keep one",
        ),
    ],
)
def test_prepare_recipe_with_a_key_twice_is_refused(tmp_path, text, message):
    p = tmp_path / "prep.yaml"
    p.write_text(text)
    before = p.read_bytes()
    with pytest.raises(UserError) as e:
        load(PrepareConfig, p)
    assert str(e.value) == f"{p}: {message}"
    assert p.read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("", "key 'data.weights.a' written twice (line 3); keep one"),  # flow style: the path to the key
        ("train: {steps: 20, batch_tokens: 256}\n", "key 'train' written twice (lines 5 and 6); keep one"),
    ],
)
def test_train_recipe_with_a_key_twice_is_refused(tmp_path, extra, message):
    p = tmp_path / "r.yaml"
    text = (
        BASE.replace("weights: {a: 1.0}", "weights: {a: 0.9, b: 0.1, a: 0.0}") if not extra else BASE + extra
    )
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_recipe(p)
    assert str(e.value) == f"{p}: {message}"


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    from warmstart.config import load_yaml

    assert load_yaml("b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")["c"] == {"x": 3, "y": 2}
    # a key twice inside a list item, and inside an aliased mapping, is still found, with its path
    with pytest.raises(yaml.YAMLError, match=r"key 'domains\.a\.0\.path' written twice \(line 1\)"):
        load_yaml("domains: {a: [{path: x, path: y}]}")
    with pytest.raises(yaml.YAMLError, match=r"key 'b\.x' written twice \(lines 2 and 3\)"):
        load_yaml("b: &b\n  x: 1\n  x: 2\nc: *b\n")


def test_an_override_given_twice_or_repeating_a_key_is_refused(recipe_file):
    with pytest.raises(UserError) as e:
        load_recipe(recipe_file, ["train.steps=2", "train.steps=4"])
    assert str(e.value) == "--set train.steps: given twice ('2' and '4'); keep one"
    with pytest.raises(UserError) as e:
        load_recipe(recipe_file, ["data.weights={a: 1, a: 0}"])
    assert str(e.value) == "--set data.weights={a: 1, a: 0}: key 'a' written twice (line 1); keep one"


def test_a_mixture_file_naming_a_domain_twice_is_refused(tmp_path):
    from warmstart.recipes.autoscale import read_mixture
    from warmstart.train.setup_run import resolve_weights

    p = tmp_path / "mixture.json"
    p.write_text(
        '{"budget": 10, "tokens": {"a": 5, "b": 5, "a": 0}, "weights": {"a": 0.5, "b": 0.5, "a": 0}}'
    )
    with pytest.raises(UserError) as e:
        read_mixture(p)
    assert str(e.value) == f"{p}: key 'a' written twice in one object; keep one"
    from warmstart.config import DataConfig

    with pytest.raises(UserError) as e:
        resolve_weights(DataConfig(dir="d", weights_from=str(p), seq_len=64))
    assert str(e.value) == f"data.weights_from: {p}: key 'a' written twice in one object; keep one"


def test_json_files_never_hold_a_bare_nan(tmp_path):
    """NaN/Infinity are not JSON (a strict reader refuses the file): an undefined number is written as null."""
    import json
    import math

    from warmstart import atomic, jsonfile

    p = tmp_path / "s.json"
    atomic.write_json(p, {"loss": math.nan, "ok": 1.5, "nested": [{"x": math.inf}, -math.inf]})
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "loss": None,
        "ok": 1.5,
        "nested": [{"x": None}, None],
    }
    assert jsonfile.dumps({"a": (1.0, math.nan)}) == '{"a": [1.0, null]}'


def test_a_bad_override_is_blamed_on_the_override_not_the_file(recipe_file):
    """A mistyped `--set` key or value names the `--set`, since the recipe file is fine; an error in the file
    still names the file."""
    for sets, message in (
        (["train.stepz=3"], "--set train.stepz: unknown key"),
        (["trian.steps=3"], "--set trian.steps: trian: unknown key"),
        (["train.steps=-3", "train.foo=2"],
         "--set train.steps: Input should be greater than 0 (got -3); --set train.foo: unknown key"),
    ):
        with pytest.raises(UserError) as e:
            load_recipe(recipe_file, sets)
        assert str(e.value) == message
    recipe_file.write_text(recipe_file.read_text() + "frob: 1\n")
    with pytest.raises(UserError) as e:
        load_recipe(recipe_file, ["train.steps=3"])
    assert str(e.value) == f"{recipe_file}: frob: unknown key"
