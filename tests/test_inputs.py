"""Bad input at each boundary where it enters: output locations, model arguments, sequence lengths vs positions,
model sizes, damaged metrics, text that is not valid Unicode, domains without validation data, tokenizer output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from warmstart.cli import main
from warmstart.errors import UserError

READ_ONLY = "/sys/warmstart-inputs"  # not writable even for root


# ----------------------------------------------------------------------------------------------- output paths
def test_output_checks_refuse_files_and_read_only_places_and_touch_nothing(tmp_path):
    from warmstart.outputs import check_out_dir, check_out_file

    f = tmp_path / "f"
    f.write_text("keep")
    with pytest.raises(UserError, match="is a file, not a directory"):
        check_out_dir(f, "--out")
    with pytest.raises(UserError, match="is a file, so"):
        check_out_dir(f / "below", "--out")
    with pytest.raises(UserError, match="cannot write"):
        check_out_dir(READ_ONLY, "out_dir")
    with pytest.raises(UserError, match="is a directory, not a file"):
        check_out_file(tmp_path, "--out")
    with pytest.raises(UserError, match="cannot write"):
        check_out_file(f"{READ_ONLY}/m.json", "--out")
    assert check_out_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"] and f.read_text() == "keep"  # no probe left


# ----------------------------------------------------------------------------------------------- tokenizer train
def _prep_recipe(tmp_path: Path, texts: list[str] | None, name: str = "prep.yaml") -> Path:
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts or []))
    recipe = tmp_path / name
    recipe.write_text(yaml.safe_dump({"tokenizer": "-", "out": "-", "domains": {"a": [{"path": str(src)}]}}))
    return recipe


def test_tokenizer_train_never_replaces_a_file_or_a_foreign_folder(tmp_path, capsys):
    from conftest import SAMPLE_TEXTS

    from warmstart.data.tokenizer import load_tokenizer

    recipe = _prep_recipe(tmp_path, SAMPLE_TEXTS)
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine too")
    for out, extra in ((afile, []), (afile, ["--overwrite"]), (folder, []), (folder, ["--overwrite"])):
        code = main(["tokenizer", "train", str(recipe), "--vocab-size", "300", "--out", str(out), *extra])
        assert code == 2
    assert afile.read_text() == "mine" and (folder / "thesis.tex").read_text() == "mine too"
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    err = capsys.readouterr().err
    assert err.count("is a file") == 2 and err.count("not a tokenizer") == 2

    tok = tmp_path / "tok"
    assert main(["tokenizer", "train", str(recipe), "--vocab-size", "300", "--out", str(tok)]) == 0
    assert main(["tokenizer", "train", str(recipe), "--vocab-size", "320", "--out", str(tok)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert len(load_tokenizer(str(tok))) == 300
    assert main(["tokenizer", "train", str(recipe), "--vocab-size", "320", "--out", str(tok), "--overwrite"]) == 0
    assert len(load_tokenizer(str(tok))) == 320  # an existing tokenizer directory is replaced, as asked
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp directory left


def test_tokenizer_train_refuses_a_domain_without_documents(tmp_path, capsys):
    from conftest import SAMPLE_TEXTS

    good = _prep_recipe(tmp_path, SAMPLE_TEXTS)
    empty = _prep_recipe(tmp_path, [], "empty.yaml")
    both = yaml.safe_load(good.read_text())
    both["domains"]["b"] = yaml.safe_load(empty.read_text())["domains"]["a"]
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(both))
    for recipe in (empty, tmp_path / "both.yaml"):
        out = tmp_path / "tok"
        assert main(["tokenizer", "train", str(recipe), "--vocab-size", "300", "--out", str(out)]) == 2
        assert not out.exists()
    err = capsys.readouterr().err.splitlines()
    assert "domain 'a': no documents" in err[0] and "domain 'b': no documents" in err[1]


# ----------------------------------------------------------------------------------------------- model arguments
def test_model_arguments_missing_locally_or_offline_fail_at_once_naming_the_argument(tmp_path, monkeypatch):
    from warmstart.models.locate import looks_like_path, resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"^--from: runs/upstrem: not found \(no such directory\)"):
        resolve_checkpoint("runs/upstrem", "--from")  # 'runs' exists here: a path, not a hub name
    with pytest.raises(UserError, match=r"^checkpoint: someone/no-such-model: not found \(no such local directory.*"
                                        r"offline mode, HF_HUB_OFFLINE=1: nothing is downloaded\)$"):
        resolve_checkpoint("someone/no-such-model", "checkpoint")
    with pytest.raises(UserError, match=r"^--model: Qwen/Qwen2\.5-0\.5B: not found .*HF_HUB_OFFLINE"):
        resolve_checkpoint("Qwen/Qwen2.5-0.5B", "--model")  # a dotted hub name is a hub name, not a file
    with pytest.raises(UserError, match="valid hub name"):
        resolve_checkpoint("a b", "--from")
    assert time.perf_counter() - t0 < 5  # no network retries
    assert looks_like_path("./x") and looks_like_path("a/b/c") and looks_like_path("runs/x")
    assert not looks_like_path("gpt2") and not looks_like_path("someone/model")


def test_mistyped_path_whose_parent_does_not_exist_yet_is_not_found(tmp_path, monkeypatch, capsys):
    """`runs/upstrem` before `runs/` exists is also a valid hub name: the message still leads with "not found" and
    gives no advice about the hub's mode (eval on the command line, init.from in a recipe)."""
    from warmstart.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["eval", "runs/upstrem", "--data", "d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("warmstart: error: checkpoint: runs/upstrem: not found (no such local directory"), err
    assert err.count("\n") == 1 and "set HF_HUB_OFFLINE" not in err and "unset" not in err
    (tmp_path / "r.yaml").write_text("name: r\ndata: {dir: corpus/shards, seq_len: 16}\ninit: {from: runs/x}\n"
                                     "train: {steps: 2, batch_tokens: 32}\n")
    assert main(["train", "r.yaml"]) == 2
    err = capsys.readouterr().err
    assert "init.from: runs/x: not found (no such local directory" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_eval_messages_name_evals_own_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "half").mkdir(parents=True)
    (tmp_path / "runs" / "half" / "config.yaml").write_text("name: half\n")
    assert main(["eval", "runs/typo", "--data", "d"]) == 2
    assert main(["eval", "runs/half", "--data", "d"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warmstart: error: checkpoint: runs/typo: not found (no such directory)")
    assert err[1].startswith("warmstart: error: checkpoint: runs/half is a warmstart run without final/")
    assert "init.from" not in "".join(err) and "--out" not in err[0]


# ----------------------------------------------------------------------------------------------- sizes, positions
def test_sizes_that_build_no_model_are_one_line_errors():
    from warmstart.config import ModelConfig
    from warmstart.models.build import build_config

    cases = [({"heads": 5}, "heads"), ({"kv_heads": 3}, "kv_heads"), ({"layers": 0}, "layers"),
             ({"hidden": -64}, "hidden")]
    for sizes, key in cases:
        with pytest.raises(UserError, match=f"model.sizes.*{key}") as e:
            build_config(ModelConfig(preset="llama-tiny", sizes=sizes), vocab_size=300)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="heads") as e:
        build_config(ModelConfig(preset="gpt2-tiny", sizes={"heads": 7}), vocab_size=300)
    assert "\n" not in str(e.value)


def test_seq_len_above_positions_is_refused_and_extending_is_recorded(data_dir, tokenizer_dir, tmp_path):
    from train_helpers import tiny_recipe

    from warmstart.train.loop import train

    long = ["data.seq_len=1024", "train.batch_tokens=1024", "train.micro_batch_size=1", "train.steps=2",
            "eval.max_tokens=1024", "eval.every=1"]
    with pytest.raises(UserError, match=r"data.seq_len: 1024 is longer than the model's 512 positions"):
        train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="short", overrides=long))
    assert not (tmp_path / "short").exists()
    res = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="long",
                            overrides=[*long, "model.sizes.max_positions=1024"]))
    assert json.loads((res.final_dir / "config.json").read_text())["max_position_embeddings"] == 1024
    # a checkpoint's context: refused too, and extended (rotary positions) only when asked, then saved
    init = ["model.preset=null", f"init.from={res.final_dir}", "data.seq_len=2048", "train.batch_tokens=2048",
            "eval.max_tokens=2048"]
    with pytest.raises(UserError, match="data.seq_len: 2048 is longer than the model's 1024 positions"):
        train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="more", overrides=[*long, *init]))
    res2 = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, name="more",
                             overrides=[*long, *init, "model.sizes.max_positions=2048"]))
    assert json.loads((res2.final_dir / "config.json").read_text())["max_position_embeddings"] == 2048


# ----------------------------------------------------------------------------------------------- metrics readers
@pytest.mark.parametrize(("lines", "where"), [
    (['{"event": "eval", "step": 0}', '{"event": "eval", "st'], ":2: not valid JSON"),
    (['[1, 2]'], ":1: expected one JSON object per line, got a list"),
    (['{"event": "eval", "step": 0}', '', '{"event": "eval"}'], ":3: event without an integer 'step'"),
])
def test_metrics_reader_names_file_and_line(tmp_path, lines, where):
    from warmstart.runtime.metrics import read_metrics

    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        read_metrics(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'metrics.jsonl'}{where}")


# ----------------------------------------------------------------------------------------------- text sources
def test_lone_surrogate_is_a_bad_record_named_by_file_and_line(tmp_path, tokenizer_dir):
    from warmstart.data import prepare
    from warmstart.data.shards import open_data_dir

    src = tmp_path / "crawl.jsonl"
    src.write_text('{"text": "fine one"}\n{"text": "truncated emoji \\ud83d here"}\n{"text": "fine two"}\n'
                   '{"text": "a whole emoji \\ud83d\\ude42 is fine"}\n')
    cfg = {"tokenizer": str(tokenizer_dir), "out": str(tmp_path / "out"), "domains": {"a": [{"path": str(src)}]},
           "val_docs": 1}
    with pytest.raises(UserError, match=r"crawl\.jsonl:2: 'text' holds a lone UTF-16 surrogate \(\\ud83d at "
                                        r"character 16\)"):
        prepare(cfg, progress=False)
    assert not (tmp_path / "out").exists()
    result = prepare({**cfg, "skip_bad_records": True}, progress=False)
    dom = result.domains[0]
    assert dom.bad_records == 1 and dom.docs == 3
    data = open_data_dir(tmp_path / "out")["a"]
    assert data.n_docs("train") + data.n_docs("val") == 3


# ----------------------------------------------------------------------------------------------- empty validation
@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory, tokenizer_dir):
    """Two domains: 'many' (with a validation split) and 'one' (one document: no validation split)."""
    from conftest import SAMPLE_TEXTS

    from warmstart.data import prepare

    root = tmp_path_factory.mktemp("mixed")
    (root / "many.jsonl").write_text("".join(json.dumps({"text": t * 4}) + "\n" for t in SAMPLE_TEXTS))
    (root / "one.jsonl").write_text(json.dumps({"text": " ".join(SAMPLE_TEXTS)}) + "\n")
    domains = {n: [{"path": str(root / f"{n}.jsonl")}] for n in ("many", "one")}
    prepare({"tokenizer": str(tokenizer_dir), "out": str(root / "data"), "domains": domains}, progress=False)
    return root / "data"


def test_domain_without_validation_is_trained_on_but_not_evaluated(mixed_data, tokenizer_dir, tmp_path, capsys):
    from train_helpers import tiny_recipe

    from warmstart.eval.run_eval import eval_checkpoint
    from warmstart.runtime.metrics import read_metrics
    from warmstart.train.loop import train

    recipe = tiny_recipe(mixed_data, tokenizer_dir, tmp_path, overrides=[
        "data.weights={many: 0.5, one: 0.5}", "train.steps=2", "eval.every=1"])
    res = train(recipe)
    out = capsys.readouterr().out
    assert out.count("no validation documents in one") == 1
    evals = [m for m in read_metrics(res.run_dir) if m["event"] == "eval"]
    assert [m["step"] for m in evals] == [0, 1, 2]
    assert all("val/many/loss" in m and "val/one/loss" not in m for m in evals)
    assert evals[-1]["val/avg/loss"] == evals[-1]["val/many/loss"]
    assert json.loads((res.run_dir / "summary.json").read_text())["sequences_per_domain"]["one"] > 0

    result = eval_checkpoint(str(res.run_dir), mixed_data, out=tmp_path / "e", device="cpu", seq_len=32)
    assert list(result["val"]) == ["many"]
    assert result["val"]["many"]["loss"] == pytest.approx(evals[-1]["val/many/loss"], rel=1e-5)
    with pytest.raises(UserError, match="--domains: domain 'one' has no validation documents"):
        eval_checkpoint(str(res.run_dir), mixed_data, domains=["one"], out=tmp_path / "e", device="cpu")
    with pytest.raises(UserError, match="eval.domains: domain 'one' has no validation documents"):
        train(tiny_recipe(mixed_data, tokenizer_dir, tmp_path, name="r2", overrides=[
            "data.weights={many: 1.0}", "eval.domains=[one]"]))


def test_hub_name_without_network_is_one_line_without_retries(tmp_path):
    """Online mode, but the hub cannot be reached (a local port that refuses): one request, one line, no retries."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "warmstart", "eval", "someone/no-such-model", "--data", "d",
                           "--out", str(tmp_path / "e")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "hub cannot be reached" in proc.stderr
    assert time.perf_counter() - t0 < 30  # transformers' own download retries take about a minute
    assert not (tmp_path / "e").exists()


def test_argument_errors_come_back_before_torch_is_imported(tmp_path):
    """The cheap checks run before the heavy imports: a typo costs a fraction of a second, not a torch import."""
    import subprocess
    import sys

    (tmp_path / "runs").mkdir()
    (tmp_path / "afile").write_text("x")
    script = (
        "import sys\n"
        "from warmstart.cli import main\n"
        "calls = [['--help'], ['gap', 'runs', '--window', '0'], ['train', 'nope.yaml'], ['eval', 'runs/typo', '--data', 'd'],\n"
        "         ['inherit', '--from', 'runs/upstrem', '--layers', '1', '--out', 'o'], ['report', 'runs', '--out', 'afile'],\n"
        "         ['quality', 'score', '--data', 'd', '--domain', 'x', '--out', 'afile', '--ngram-reference', 'a']]\n"
        "codes = []\n"
        "for argv in calls:\n"
        "    try:\n"
        "        codes.append(main(argv))\n"
        "    except SystemExit as e:\n"
        "        codes.append(e.code)\n"
        "print(codes, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[0, 2, 2, 2, 2, 2, 2] False False", proc.stderr


def test_domain_of_empty_documents_is_left_out_of_the_average_never_nan(mixed_data, tokenizer_dir, tmp_path,
                                                                        capsys):
    """With eval.windows: documents, a domain whose validation documents are all empty has no token to score: it
    made val/avg/loss NaN in metrics.jsonl and a bare NaN in summary.json (not JSON), which gap and report refuse."""
    from conftest import SAMPLE_TEXTS
    from train_helpers import tiny_recipe

    from warmstart.data import prepare
    from warmstart.data.shards import open_data_dir
    from warmstart.eval.run_eval import eval_checkpoint
    from warmstart.runtime.metrics import read_metrics
    from warmstart.train.loop import train

    data = tmp_path / "data"
    (tmp_path / "blank.jsonl").write_text("".join(json.dumps({"text": ""}) + "\n" for _ in SAMPLE_TEXTS * 4))
    sources = {n: [{"path": str(mixed_data.parent / f"{n}.jsonl")}] for n in ("many", "one")}
    prepare({"tokenizer": str(tokenizer_dir), "out": str(data),
             "domains": {**sources, "blank": [{"path": str(tmp_path / "blank.jsonl")}]}}, progress=False)
    blank = open_data_dir(data)["blank"]
    assert blank.n_docs("val") >= 1 and blank.n_tokens("val") >= 2  # packed windows would score it
    capsys.readouterr()
    recipe = tiny_recipe(data, tokenizer_dir, tmp_path, overrides=[
        "data.weights={many: 0.5, blank: 0.5}", "train.steps=2", "eval.every=2", "eval.windows=documents"])
    res = train(recipe)
    out = capsys.readouterr().out
    assert out.count(
        "note: no validation documents in one; no validation document of 2 or more tokens in blank (windows: "
        "documents); training without validation for it (and without it in val/avg/loss)\n") == 1
    evals = [m for m in read_metrics(res.run_dir) if m["event"] == "eval"]
    assert all("val/blank/loss" not in m and m["val/avg/loss"] == m["val/many/loss"] for m in evals)
    summary_text = (res.run_dir / "summary.json").read_text()
    assert "NaN" not in summary_text
    assert json.loads(summary_text)["final_eval"]["val/avg/loss"] == evals[-1]["val/many/loss"]
    with pytest.raises(UserError) as e:
        train(tiny_recipe(data, tokenizer_dir, tmp_path, name="r2", overrides=[
            "data.weights={many: 1.0}", "eval.domains=[blank]", "eval.windows=documents"]))
    assert str(e.value) == ("eval.domains: domain 'blank' has no validation document of 2 or more tokens to score "
                            "with windows: documents (all are empty); leave it out, or use windows: packed")
    result = eval_checkpoint(str(res.run_dir), data, out=tmp_path / "e", device="cpu", seq_len=32)
    assert list(result["val"]) == ["many"] and result["windows"] == "documents"
    assert "NaN" not in (tmp_path / "e" / "eval-step000002.json").read_text()


def test_tokenizer_training_pieces_train_the_tokenizer_of_the_whole_text():
    """One huge document is fed to the BPE trainer in pieces (bounded memory); cut only where the byte-level
    pre-tokenizer splits anyway, the pieces train exactly the tokenizer the whole text trains."""
    import json

    from conftest import _stdlib_texts

    from warmstart.data.tokenizer_train import _learn_bpe, training_pieces

    texts = _stdlib_texts()
    text = "\n".join(texts["prose"] + texts["code"])[:300_000] + "\n  indented\n\n\ntail  \nend"
    pieces = list(training_pieces(text, 2000))
    assert "".join(pieces) == text and len(pieces) > 100
    assert all(len(p) >= 2000 for p in pieces[:-1])
    for p in pieces[1:]:  # each cut is after a newline between two non-space characters
        assert not p[0].isspace()
    whole = json.loads(_learn_bpe([text], 600).backend_tokenizer.to_str())["model"]
    cut = json.loads(_learn_bpe(pieces, 600).backend_tokenizer.to_str())["model"]
    assert cut["vocab"] == whole["vocab"] and cut["merges"] == whole["merges"]
    assert list(training_pieces("short", 2000)) == ["short"]
    assert list(training_pieces("x" * 5000, 2000)) == ["x" * 5000]  # no newline to cut at: whole
