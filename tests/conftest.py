"""Shared fixtures: a small real BPE tokenizer and small text corpora, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n",
    "Language models predict the next token given the previous ones.",
    "import os\nimport sys\n\nprint(sys.argv)\n",
    "Ünïcödé text — with dashes, emoji 🙂 and CJK 漢字 survives byte-level BPE.",
    "Continual pre-training re-warms the learning rate; replay mixes in old data.",
] * 20


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A 512-token byte-level BPE saved as an AutoTokenizer-loadable directory."""
    from warmstart.data.tokenizer_train import train_bpe

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_bpe(SAMPLE_TEXTS, vocab_size=512, out=out)
    return out
