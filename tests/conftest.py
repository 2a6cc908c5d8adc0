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
    """A 512-token byte-level BPE (learned on real text) saved as an AutoTokenizer-loadable directory."""
    from warmstart.data.tokenizer_train import train_bpe

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    texts = [t for ts in _stdlib_texts().values() for t in ts]
    train_bpe(SAMPLE_TEXTS + texts, vocab_size=512, out=out)
    return out


def _stdlib_texts() -> dict[str, list[str]]:
    """Two small real domains from the running Python: library source code and reference prose."""
    import sysconfig
    from pathlib import Path
    from pydoc_data.topics import topics

    lib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(encoding="utf-8") for p in sorted(lib.glob("[a-c]*.py"))[:40]]
    prose = [topics[k] for k in sorted(topics)[:120]]
    return {"code": code, "prose": prose}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, tokenizer_dir):
    """Prepared shards of two real domains (code, prose), tokenized with `tokenizer_dir`."""
    import json

    from warmstart.data import prepare

    root = tmp_path_factory.mktemp("data")
    domains = {}
    for name, texts in _stdlib_texts().items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        domains[name] = [{"path": str(path)}]
    out = root / "shards"
    prepare({"tokenizer": str(tokenizer_dir), "out": str(out), "domains": domains, "val_docs": 10}, progress=False)
    return out


@pytest.fixture(scope="session")
def job_checkpoint(tmp_path_factory, data_dir, tokenizer_dir):
    """A 4-block llama-tiny trained 8 steps on `data_dir` (code, prose): the checkpoint the jobs start from."""
    from train_helpers import tiny_recipe

    from warmstart.train.loop import train

    out = tmp_path_factory.mktemp("job-ckpt")
    recipe = tiny_recipe(data_dir, tokenizer_dir, out, "base", model={"sizes": {"layers": 4}},
                         train={"cpu_threads": 1})
    return train(recipe).final_dir


@pytest.fixture(scope="session")
def job_texts(tmp_path_factory):
    """Text files for the jobs: `new` (library source the checkpoint has not seen) and `old` (the prose it was
    trained on), 40 documents each."""
    import json
    import sysconfig
    from pathlib import Path
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("job-text")
    lib = Path(sysconfig.get_paths()["stdlib"])
    new = [p.read_text(encoding="utf-8")[:3000] for p in sorted(lib.glob("[d-h]*.py"))[:40]]
    old = [topics[k] for k in sorted(topics)[:40]]
    paths = {}
    for name, texts in (("new", new), ("old", old)):
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return paths
