"""The output layer + cross-entropy alone, forward and backward, at a big vocabulary (CPU): the full-logits path,
`torch.nn.functional.linear_cross_entropy` (reference and chunked options) and warmstart's blockwise loss
(models/loss.py) at several block sizes. Each variant runs in its own process: peak RSS above the inputs
(getrusage), seconds per forward + backward (best of `--repeats`, since the machine may be shared).

    python bench/blockwise_loss.py      # writes bench/results/blockwise_loss.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "full_logits": "F.cross_entropy(F.linear(h, W).float(), y): the path before (and HF's)",
    "torch_lce_reference": "F.linear_cross_entropy(options=None)",
    "torch_lce_accurate": "F.linear_cross_entropy(options=LinearCrossEntropyOptions(acc_policy='accurate', "
                          "chunking_method='aspect_ratio'))",
    "torch_lce_default": "F.linear_cross_entropy(options=LinearCrossEntropyOptions())",
    "warmstart_64": "warmstart linear_cross_entropy, 64 MiB blocks",
    "warmstart_256": "warmstart linear_cross_entropy, 256 MiB blocks (the default)",
    "warmstart_1024": "warmstart linear_cross_entropy, 1 GiB blocks",
}


def run_variant(name: str, tokens: int, hidden: int, vocab: int, repeats: int) -> dict:
    from warmstart.models.loss import linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * 0.02).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def loss() -> torch.Tensor:
        if name == "full_logits":
            return F.cross_entropy(F.linear(h, w).float(), y, reduction="sum")
        if name.startswith("torch_lce"):
            opts = {"torch_lce_reference": None,
                    "torch_lce_accurate": torch.nn.LinearCrossEntropyOptions(acc_policy="accurate",
                                                                            chunking_method="aspect_ratio"),
                    "torch_lce_default": torch.nn.LinearCrossEntropyOptions()}[name]
            return F.linear_cross_entropy(h, w, y, reduction="sum", options=opts)
        mib = int(name.split("_")[1])
        return linear_cross_entropy(h, w, y, rows=max(1, mib * 2**20 // (4 * vocab)))

    times, value = [], 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        out = loss()
        out.backward()
        times.append(time.perf_counter() - t)
        value = out.item()
        h.grad = w.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": name, "seconds": min(times), "all_seconds": times, "loss": value,
            "peak_above_inputs_gb": (peak - base) / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--hidden", type=int, default=640)
    p.add_argument("--vocab", type=int, default=262_144)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=str(HERE / "results" / "blockwise_loss"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.tokens, args.hidden, args.vocab, args.repeats)))
        return
    rows = []
    for name in args.variants.split(","):
        repeats = 1 if name in ("torch_lce_default", "torch_lce_accurate") else args.repeats  # minutes each
        cmd = [sys.executable, __file__, "--tokens", str(args.tokens), "--hidden", str(args.hidden),
               "--vocab", str(args.vocab), "--repeats", str(repeats), "--child", name]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"{name} failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    full = next(r for r in rows if r["variant"] == "full_logits")
    for r in rows:
        r["time_over_full_logits"] = r["seconds"] / full["seconds"]
        r["memory_over_full_logits"] = r["peak_above_inputs_gb"] / full["peak_above_inputs_gb"]
    result = {"command": "python bench/blockwise_loss.py " + " ".join(sys.argv[1:]), "tokens": args.tokens,
              "hidden": args.hidden, "vocab": args.vocab, "torch": torch.__version__, "cpu_count": os.cpu_count(),
              "load_average_at_end": os.getloadavg(), "variants": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Output layer + cross-entropy, forward and backward (CPU)", "",
        f"`{result['command']}` — {args.tokens} tokens, hidden {args.hidden}, vocabulary {args.vocab:,}, float32; "
        f"{os.cpu_count()} cores (shared; load average {result['load_average_at_end'][0]:.1f} at the end), "
        f"torch {torch.__version__}. Each variant in its own process; best of its repeats.", "",
        "| variant | s / fwd+bwd | x full | peak above inputs | x full | loss |", "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {VARIANTS[r['variant']]} | {r['seconds']:.2f} | {r['time_over_full_logits']:.2f} | "
                     f"{r['peak_above_inputs_gb']:.2f} GB | {r['memory_over_full_logits']:.2f} | {r['loss']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
