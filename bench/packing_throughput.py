"""The throughput cost of `data.packing: documents` (block-causal attention, positions restarting per document)
against `stream` (plain causal windows): the same model, data, batch and steps in one benchmark run, each
measurement its own fresh process (bench/train_throughput.py's child), sides alternating, medians reported.

    python bench/packing_throughput.py                     # CPU: llama-small on the demo corpus (~2 min free cores)
    python bench/packing_throughput.py --device cuda --preset llama-400m --seq-len 2048 --batch-tokens 16384 \
        --micro 8 --steps 12 --skip 4 --repeats 2 --compile --out bench/results/packing_gpu.json   # bench/gpu.sh

On CPU both sides run eager/SDPA attention; `documents` gives SDPA an explicit block-causal mask (built by
transformers from the position ids), `stream` lets it use its causal kernel. On GPU with flash-attn installed and
`attn_implementation="flash_attention_2"`, transformers runs the documents side on the variable-length kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from train_throughput import add_measure_args, child_args

from warmstart.data.demo_corpus import prepare_demo

SIDES = ("stream", "documents")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_measure_args(p, steps=12, skip=3)
    p.add_argument("--work", default=None, help="keep data here (default: a temp dir)")
    p.add_argument("--note", default="", help="a line stored with the result (e.g. 'contended cores')")
    p.add_argument("--out", default="bench/results/packing_cpu.json")
    args = p.parse_args()
    args.work = str(Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ws-packing-")))
    prepare_demo(Path(args.work), vocab_size=args.vocab)
    tps: dict[str, list[float]] = {s: [] for s in SIDES}
    for i in range(args.repeats):
        for side in SIDES[i % 2 :] + SIDES[: i % 2]:  # alternate who goes first
            args.packing = side
            cmd = child_args(args, "warmstart", i * 2 + SIDES.index(side))
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{side} repeat {i} failed:\n{out.stderr[-3000:]}")
            tps[side].append(json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"])
        print(f"repeat {i}: " + ", ".join(f"{s} {tps[s][-1]:,.0f}" for s in SIDES) + " tok/s", flush=True)
    med = {s: statistics.median(v) for s, v in tps.items()}
    result = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "note": args.note,
        "model": args.preset,
        "seq_len": args.seq_len,
        "batch_tokens": args.batch_tokens,
        "micro_batch_size": args.micro,
        "steps": args.steps,
        "skipped_warmup_steps": args.skip,
        "repeats": args.repeats,
        "tokens_per_s": tps,
        "median": med,
        "documents_over_stream": med["documents"] / med["stream"],
        "ratio_per_repeat": [d / s for d, s in zip(tps["documents"], tps["stream"], strict=True)],
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "compile": args.compile,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
