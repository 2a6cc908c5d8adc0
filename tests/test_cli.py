"""The `warmstart` command itself: --help everywhere, tokenizer training, presets."""

from __future__ import annotations

import json

import pytest

from warmstart.cli import build_parser, main
from warmstart.data.tokenizer import load_tokenizer
from warmstart.errors import UserError


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_help_everywhere(capsys):
    commands = list(_subcommands(build_parser()))
    assert ("train",) in commands and ("tokenizer", "train") in commands and ("prepare",) in commands
    for cmd in [(), *commands]:
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        assert "usage: warmstart" in capsys.readouterr().out


def test_tokenizer_train_from_prepare_recipe(tmp_path, capsys):
    from conftest import SAMPLE_TEXTS

    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in SAMPLE_TEXTS))
    recipe = tmp_path / "prep.yaml"
    recipe.write_text(f"tokenizer: unused\nout: unused\ndomains:\n  a:\n    - path: {src}\n")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(recipe), "--vocab-size", "300", "--out", str(out)]) == 0
    tok = load_tokenizer(str(out))
    assert len(tok) == 300
    assert tok.eos_token == "<|endoftext|>"
    text = "def add(a, b):\n    return a + b\n"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless
    assert main(["tokenizer", "train", str(recipe), "--vocab-size", "100", "--out", str(out)]) == 2
    assert "vocab_size 100" in capsys.readouterr().err


def test_presets_listed(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "llama-tiny" in out and "gpt2-tiny" in out


def test_debug_works_after_the_subcommand_too(tmp_path, capsys):
    """`--debug` added at the end of a failing command shows the traceback (it used to be an argparse error
    there); without it the same failure is one line and exit 2."""
    missing = str(tmp_path / "no-such-recipe.yaml")
    assert main(["train", missing]) == 2
    assert capsys.readouterr().err.strip() == f"warmstart: error: {missing}: recipe file not found"
    for argv in (["--debug", "train", missing], ["train", missing, "--debug"]):
        with pytest.raises(UserError, match="recipe file not found"):
            main(argv)
