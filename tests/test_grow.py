"""Inheritune v2 (`grow`): real tiny training rounds, the stop rule, skip-on-rerun and resume of a round."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from train_helpers import assert_same_weights, tiny_recipe, tiny_recipe_tree

from warmstart.config import GrowRecipe, validate
from warmstart.errors import UserError
from warmstart.recipes.inheritune import grow, reference_loss
from warmstart.train.checkpoint import step_dir
from warmstart.train.loop import train

K = 4
STEPS = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, tokenizer_dir):
    """A 4-block llama-tiny trained 8 steps: the reference run directory."""
    out = tmp_path_factory.mktemp("ref")
    recipe = tiny_recipe(
        data_dir, tokenizer_dir, out, "reference", model={"sizes": {"layers": K}}, eval={"max_tokens": 128}
    )
    train(recipe)
    return recipe.run_dir


def grow_recipe(data_dir, tokenizer_dir, out, ref_dir, ref=None, distill=None, **grow_keys) -> GrowRecipe:
    tree = tiny_recipe_tree(data_dir, tokenizer_dir, out, "grow")
    tree = {k: v for k, v in tree.items() if k != "model"}
    tree["train"].update({"steps": STEPS, "checkpoint_every": STEPS // 2})
    tree["eval"].update({"every": STEPS, "max_tokens": 128})
    tree["reference"] = {"from": str(ref_dir), **(ref or {})}
    tree["grow"] = grow_keys
    if distill is not None:
        tree["distill"] = distill
    return validate(GrowRecipe, tree)


def test_grow_rounds_stop_rule_rerun_and_resume(tmp_path, data_dir, tokenizer_dir, reference):
    # 1) an unreachable reference loss: rounds 1, 2, 3 (= k-1), each re-inherited from the reference, then stop
    cfg = grow_recipe(data_dir, tokenizer_dir, tmp_path, reference, start_layers=1, step=1, ref={"loss": 0.0})
    res = grow(cfg)
    s = json.loads((tmp_path / "grow" / "grow_summary.json").read_text())
    assert s == json.loads(json.dumps(res.summary))
    assert [r["layers"] for r in s["rounds"]] == [1, 2, 3] and not s["matched"] and s["status"] == "complete"
    assert s["reference"] == {**s["reference"], "layers": K, "val_loss": 0.0, "loss_source": "given"}
    for r in s["rounds"]:
        run = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert r["val_loss"] == run["final_eval"]["val/avg/loss"] and r["tokens"] == STEPS * 256
        assert r["flops"] == run["flops"] and r["params"] == run["params"]
        # re-inherited from the reference every round: the run started from the reference's blocks
        assert run["init"].endswith(f"inherited/L{r['layers']:02d}")
    assert s["total_tokens"] == 3 * STEPS * 256 and s["total_flops"] == sum(r["flops"] for r in s["rounds"])
    params = [r["params"] for r in s["rounds"]]
    assert params[0] < params[1] < params[2] < s["reference"]["params"]
    base = s["baseline"]
    assert base["kind"] == "random-init" and base["layers"] == 3 and base["params"] == params[2]
    assert json.loads((Path(base["run_dir"]) / "summary.json").read_text())["init"].startswith("scratch:")

    # 2) interrupt the last round after its mid-run checkpoint: a re-run resumes it to the same weights
    last = Path(s["rounds"][-1]["run_dir"])
    shutil.copytree(last / "final", tmp_path / "final-uninterrupted")
    for p in (last / "summary.json", last / "final", step_dir(last / "checkpoints", STEPS)):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    done = {r["layers"]: (Path(r["run_dir"]) / "summary.json").stat().st_mtime_ns for r in s["rounds"][:2]}
    grow(cfg)
    assert_same_weights(
        tmp_path / "final-uninterrupted" / "model.safetensors", last / "final" / "model.safetensors"
    )
    for layers, mtime in done.items():  # finished rounds were skipped, not retrained
        assert (tmp_path / "grow" / f"inheritune-L{layers:02d}" / "summary.json").stat().st_mtime_ns == mtime

    # 3) a reachable reference: the first round at or below round 2's loss stops the growth
    losses = {r["layers"]: r["val_loss"] for r in s["rounds"]}
    cfg2 = grow_recipe(
        data_dir, tokenizer_dir, tmp_path, reference, start_layers=1, step=1, ref={"loss": losses[2]}
    )
    s2 = grow(cfg2).summary
    first = next(n for n in (1, 2, 3) if losses[n] <= losses[2])
    assert [r["layers"] for r in s2["rounds"]] == list(range(1, first + 1))
    assert s2["matched"] and s2["rounds"][-1]["matched"] and s2["final_layers"] == first
    assert s2["baseline"]["layers"] == first


def test_reference_loss_from_summary_equals_evaluating_the_checkpoint(
    tmp_path, data_dir, tokenizer_dir, reference
):
    cfg = grow_recipe(data_dir, tokenizer_dir, tmp_path, reference)
    src = reference / "final"
    loss, source = reference_loss(cfg, src)
    summary = json.loads((reference / "summary.json").read_text())
    assert source == "summary" and loss == summary["final_eval"]["val/avg/loss"]
    evaluated, source = reference_loss(
        cfg.model_copy(update={"reference": cfg.reference.model_copy(update={"evaluate": True})}), src
    )
    assert source == "evaluated" and evaluated == pytest.approx(loss, abs=1e-6)
    prose = grow_recipe(data_dir, tokenizer_dir, tmp_path, reference, target=["prose"])
    assert reference_loss(prose, src)[0] == summary["final_eval"]["val/prose/loss"]


def test_grow_errors(tmp_path, data_dir, tokenizer_dir, reference):
    cfg = grow_recipe(data_dir, tokenizer_dir, tmp_path, reference)
    other = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"max_tokens": 64})})
    with pytest.raises(UserError, match="different eval.max_tokens .* reference.evaluate: true"):
        reference_loss(other, reference / "final")
    with pytest.raises(UserError, match="grow.start_layers: 4 is outside 1..3"):
        grow(grow_recipe(data_dir, tokenizer_dir, tmp_path, reference, start_layers=4))
    with pytest.raises(UserError, match="grow.target: domain 'math' is not evaluated"):
        grow(grow_recipe(data_dir, tokenizer_dir, tmp_path, reference, target=["math"]))
    with pytest.raises(UserError, match="reference.from: .*not found"):
        grow(grow_recipe(data_dir, tokenizer_dir, tmp_path, tmp_path / "nope"))
    assert not (tmp_path / "grow").exists()


def test_shipped_grow_recipe_validates():
    from warmstart.config import load

    root = Path(__file__).resolve().parent.parent / "src" / "warmstart" / "examples"
    cfg = load(GrowRecipe, root / "grow.yaml")
    assert cfg.data.dir == "corpus/shards" and cfg.grow.step == 2


def test_grow_with_a_block_rule_and_distillation(tmp_path, data_dir, tokenizer_dir, reference):
    """Each round inherits the blocks the rule chooses (measured on data.dir) and learns from the teacher."""
    teacher = str(reference / "final")
    cfg = grow_recipe(data_dir, tokenizer_dir, tmp_path, reference, start_layers=2, step=1, ref={"loss": 0.0},
                      distill={"teacher": teacher, "alpha": 0.5}, rule="angular", sample_tokens=512, baseline=False)
    s = grow(cfg).summary
    assert s["rule"] == "angular" and s["distill"]["teacher"] == teacher
    assert [r["layers"] for r in s["rounds"]] == [2, 3]
    for r in s["rounds"]:
        n = r["layers"]
        inherited = tmp_path / "grow" / "inherited" / f"L{n:02d}-angular"
        record = json.loads((inherited / "inherited.json").read_text())
        assert record["blocks"] == r["blocks"] and record["choice"]["rule"] == "angular"
        dist = record["choice"]["angular"]["distance_by_start"]
        best = int(min(dist, key=lambda k: (dist[k], int(k))))
        assert r["blocks"] == [i for i in range(K) if not best <= i < best + K - n] and r["blocks"][-1] == K - 1
        run = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert run["init"] == str(inherited) and run["teacher_flops_per_token"] > 0
        # each round is charged the search that chose its blocks (the angular pass), once, from step 0
        assert run["init_flops"] == record["choice"]["search_flops"] > 0
        assert r["flops"] == run["flops"] == pytest.approx(run["init_flops"] + run["tokens"] * run["flops_per_token"])


def test_a_run_from_an_auto_cut_is_charged_its_search(tmp_path, data_dir, tokenizer_dir, reference):
    """The block search's forward FLOPs (inherited.json) are part of the run's FLOPs from step 0 — every metrics
    event, summary.json and the report's FLOPs to a target — while its tokens stay the training tokens."""
    from warmstart.recipes.inheritune import inherit_by_rule
    from warmstart.report.data import load_run
    from warmstart.report.saved import compute_saved
    from warmstart.runtime.metrics import read_metrics

    cut = inherit_by_rule(reference / "final", tmp_path / "ckpt-auto", 2, "auto", str(data_dir), sample_tokens=512,
                          seq_len=32, echo=lambda _: None).out
    search = json.loads((cut / "inherited.json").read_text())["choice"]["search_flops"]
    assert search > 0
    run = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "cut", init={"from": str(cut)},
                            model={"preset": None, "tokenizer": None}, train={"steps": 4}, eval={"every": 1}))
    s = json.loads((run.run_dir / "summary.json").read_text())
    assert s["init_flops"] == search and s["tokens"] == 4 * 256
    assert s["flops"] == pytest.approx(search + s["tokens"] * s["flops_per_token"])
    events = [r for r in read_metrics(run.run_dir) if r["event"] in ("train", "eval")]
    assert events[0]["step"] == 0 and events[0]["tokens"] == 0 and events[0]["flops"] == search
    for r in events:
        assert r["flops"] == pytest.approx(search + r["tokens"] * s["flops_per_token"])
    runs = [load_run(run.run_dir, "cut")]
    own = compute_saved(runs, runs[0], "val/avg/loss")["cut"]  # the run reaches its own final loss
    assert own["reached"]
    assert own["flops_to_target"] == pytest.approx(search + own["tokens_to_target"] * s["flops_per_token"])
    # a checkpoint cut by `first` measured nothing and is charged nothing
    first = inherit_by_rule(reference / "final", tmp_path / "ckpt-first", 2, "first").out
    plain = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, "first", init={"from": str(first)},
                              model={"preset": None, "tokenizer": None}, train={"steps": 2}))
    p = json.loads((plain.run_dir / "summary.json").read_text())
    assert p["init_flops"] == 0.0 and p["flops"] == pytest.approx(p["tokens"] * p["flops_per_token"])
    # a cut of the searched cut carries its search (by any rule, or a block list): it was spent to make it too
    from warmstart.models.inherit_record import search_flops
    from warmstart.models.surgery import inherit

    again = inherit_by_rule(cut, tmp_path / "ckpt-cut-of-cut", 1, "first").out
    listed = inherit(cut, tmp_path / "ckpt-listed", blocks=[1]).out
    for c in (again, listed):
        choice = json.loads((c / "inherited.json").read_text())["choice"]
        assert choice["parent_search_flops"] == search and search_flops(c) == search
    twice = inherit_by_rule(cut, tmp_path / "ckpt-auto-of-auto", 1, "auto", str(data_dir), sample_tokens=512,
                            seq_len=32, echo=lambda _: None).out
    choice = json.loads((twice / "inherited.json").read_text())["choice"]
    own = choice["angular"]["flops"] + sum(choice["candidate_flops"].values())
    assert search_flops(twice) == pytest.approx(search + own) and own > 0


def test_resume_keeps_the_search_charge_the_run_started_with(tmp_path, data_dir, tokenizer_dir, reference):
    """A cut re-made into the same directory mid-run (another search_flops) changes nothing for the resumed run."""
    import shutil

    from warmstart.recipes.inheritune import inherit_by_rule
    from warmstart.runtime.metrics import read_metrics
    from warmstart.train import checkpoint as ckpt

    cut = inherit_by_rule(reference / "final", tmp_path / "ckpt", 2, "auto", str(data_dir), sample_tokens=512,
                          seq_len=32, echo=lambda _: None).out
    search = json.loads((cut / "inherited.json").read_text())["choice"]["search_flops"]
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, "r", init={"from": str(cut)},
                         model={"preset": None, "tokenizer": None},
                         train={"steps": 4, "checkpoint_every": 2, "keep_checkpoints": 2}, eval={"every": 1})
    train(recipe)
    kept = ckpt.list_checkpoints(recipe.run_dir / "checkpoints")
    assert [int(c.name.split("-")[1]) for c in kept][:1] == [2]
    for c in kept[1:]:  # the run as if killed right after its step-2 checkpoint
        shutil.rmtree(c)
    shutil.rmtree(recipe.run_dir / "final")
    (recipe.run_dir / "summary.json").unlink()
    record = json.loads((cut / "inherited.json").read_text())
    record["choice"]["search_flops"] = 1000.0
    (cut / "inherited.json").write_text(json.dumps(record))
    train(recipe, resume=True)
    s = json.loads((recipe.run_dir / "summary.json").read_text())
    assert s["init_flops"] == search
    for r in read_metrics(recipe.run_dir):
        if r["event"] in ("train", "eval"):
            assert r["flops"] == pytest.approx(search + r["tokens"] * s["flops_per_token"])


@pytest.mark.parametrize("value", ['"1e10"', "-1", "1e999", "NaN", "true", "null"])
def test_a_bad_search_flops_is_refused_in_one_line(tmp_path, value):
    from warmstart.models.inherit_record import search_flops

    (tmp_path / "inherited.json").write_text('{"from": "x", "choice": {"search_flops": ' + value + "}}")
    with pytest.raises(UserError, match="choice.search_flops .* is not a finite number >= 0") as e:
        search_flops(tmp_path)
    assert "\n" not in str(e.value)
    for bad in ("[1, 2]", '{"choice": [1]}', "not json"):
        (tmp_path / "inherited.json").write_text(bad)
        with pytest.raises(UserError, match="inherited.json is not"):
            search_flops(tmp_path)
    (tmp_path / "inherited.json").write_text('{"from": "x", "choice": {"rule": "first"}}')
    assert search_flops(tmp_path) == 0.0  # a `first` cut measured nothing
