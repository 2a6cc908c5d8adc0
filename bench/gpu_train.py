"""GPU training throughput, MFU and peak memory: `warmstart train` (train.compile, bf16) against the HF `Trainer`
(bf16, torch_compile) on the same LLaMA-style models, batch, optimizer and data, seq 2048, one GPU.

    bash bench/gpu.sh                            # the prepared run (~8 minutes cold on one H100/H200)
    python bench/gpu_train.py --smoke            # a tiny model on CPU: checks the script end to end

Each (model, side) is its own process (fresh CUDA allocator, so `torch.cuda.max_memory_allocated` is that side's
peak) with its own time limit; results are written after every side, so a run cut short keeps what finished.
Data: documents of random tokens (vocabulary 32,000) prepared with `warmstart prepare`; nothing is downloaded.
MFU = 6N + attention FLOPs per token (models/build.py `flops_per_token`) x tokens/s / the device's peak bf16 FLOP/s.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# LLaMA-style sizes (warmstart's generic size names); ~400M and ~1B parameters with a 32k vocabulary
MODELS = {
    "400m": {"layers": 24, "hidden": 1024, "heads": 16, "kv_heads": 16, "ffn": 3584, "max_positions": 4096},
    "1b": {"layers": 16, "hidden": 2048, "heads": 32, "kv_heads": 8, "ffn": 8192, "max_positions": 4096},
    "smoke": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 172, "max_positions": 512},
}
SIDES = ["warmstart", "hf_trainer"]


def recipe_tree(args, paths: dict, model: str, out: Path, name: str) -> dict:
    return {
        "name": name,
        "out_dir": str(out),
        "data": {"dir": str(paths["data"]), "seq_len": args.seq_len, "packing": "stream"},  # as the Trainer reads it
        "model": {"family": "llama", "sizes": MODELS[model], "tokenizer": str(paths["tok"])},
        "optim": {"betas": [0.9, 0.95], "weight_decay": 0.1, "grad_clip": 1.0},
        "schedule": {"kind": "cosine", "max_lr": 3e-4, "warmup_steps": 2},
        "train": {"steps": args.steps, "batch_tokens": args.seq_len * args.micro, "micro_batch_size": args.micro,
                  "log_every": 1, "device": args.device, "compile": args.compile, "progress": False},
        "eval": {"every": 10**9, "max_tokens": args.seq_len, "batch_size": 1},
    }


def measure(args, paths: dict, model: str, side: str) -> dict:
    """Child process: one side on one model; tokens/s over the steps after `--skip`, peak memory, MFU."""
    from train_throughput import hf_trainer_step_times

    from warmstart.config import Recipe, validate
    from warmstart.models.build import build_model, count_params, flops_per_token
    from warmstart.runtime.metrics import read_metrics
    from warmstart.train.loop import train
    from warmstart.train.throughput import peak_flops

    work = Path(args.work)
    r = validate(Recipe, recipe_tree(args, paths, model, work / "runs", f"{model}-{side}"))
    if side == "warmstart":
        train(r)
        rows = [m for m in read_metrics(r.run_dir) if m["event"] == "train" and m["step"] > args.skip]
        tps = len(rows) / sum(1 / m["tokens_per_s"] for m in rows)
    else:
        times = hf_trainer_step_times(r, args.steps, args.micro, args.device, args.compile, work / "runs" / side)
        steady = times[args.skip :]
        tps = r.train.batch_tokens * (len(steady) - 1) / (steady[-1] - steady[0])
    probe = build_model(r.model, None, seed=0).model
    fpt = flops_per_token(probe, args.seq_len)
    peak = peak_flops(torch.device(args.device))
    out = {"model": model, "side": side, "params": count_params(probe), "flops_per_token": fpt,
           "tokens_per_s": tps, "mfu": fpt * tps / peak if peak else None}
    if args.device == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="400m,1b")
    p.add_argument("--seq-len", dest="seq_len", type=int, default=2048)
    p.add_argument("--micro", type=int, default=8, help="sequences per step (one micro-batch)")
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--skip", type=int, default=4, help="warm-up steps left out of tokens/s (compile, allocator)")
    p.add_argument("--side-timeout", dest="side_timeout", type=int, default=110, help="seconds per side")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--smoke", action="store_true", help="tiny model, seq 64, 4 steps, CPU, no compile")
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=str(HERE / "results" / "gpu.json"), help="also writes the .md beside it")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "SIDE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.models, args.seq_len, args.micro, args.steps, args.skip = "smoke", 64, 4, 4, 1
        args.device, args.compile = "cpu", False
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_train: no CUDA device (use --smoke to check the script on CPU)")
    args.work = args.work or tempfile.mkdtemp(prefix="ws-gpu-")
    from big_vocab import random_token_data

    paths = random_token_data(Path(args.work), 32000, docs=64, doc_tokens=8 * args.seq_len, val_docs=2)
    if args.child:
        print(json.dumps(measure(args, paths, *args.child)))
        return

    t0 = time.perf_counter()
    result: dict = {
        "command": "python bench/gpu_train.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "seq_len": args.seq_len, "micro_batch_size": args.micro,
        "batch_tokens": args.seq_len * args.micro, "steps": args.steps, "skipped_warmup_steps": args.skip,
        "compile": args.compile, "precision": "bf16 autocast" if args.device == "cuda" else "fp32", "runs": [],
    }
    flags = ["--seq-len", str(args.seq_len), "--micro", str(args.micro), "--steps", str(args.steps),
             "--skip", str(args.skip), "--device", args.device, "--work", args.work,
             *([] if args.compile else ["--no-compile"])]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    for model in args.models.split(","):
        for side in SIDES:
            cmd = [sys.executable, str(Path(__file__).resolve()), *flags, "--child", model, side]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.side_timeout)
                if res.returncode:
                    row = {"model": model, "side": side, "error": res.stderr.strip().splitlines()[-1:]}
                else:
                    row = json.loads(res.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {"model": model, "side": side, "error": f"over {args.side_timeout} s"}
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
            result["wall_s"] = time.perf_counter() - t0
            ratios = {}
            for m in args.models.split(","):
                got = {r["side"]: r for r in result["runs"] if r["model"] == m and "tokens_per_s" in r}
                if len(got) == 2:
                    ratios[m] = got["warmstart"]["tokens_per_s"] / got["hf_trainer"]["tokens_per_s"]
            result["ratio_tokens_per_s_warmstart_over_trainer"] = ratios
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            for path, text in ((Path(args.out), json.dumps(result, indent=2) + "\n"),
                               (Path(args.out).with_suffix(".md"), markdown(result))):
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(text)
                tmp.replace(path)
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        "# GPU training: warmstart vs HF Trainer", "",
        f"`{r['command']}` on {r['device']}, torch {r['torch']}; seq {r['seq_len']}, {r['batch_tokens']} tokens per "
        f"step, {r['steps']} steps ({r['skipped_warmup_steps']} warm-up steps not counted), compile {r['compile']}, "
        f"{r['precision']}; {r.get('wall_s', 0):.0f} s in all.", "",
        "| model | side | params | tokens/s | MFU | peak memory |", "|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        if "error" in x:
            lines.append(f"| {x['model']} | {x['side']} | | failed: {' '.join(x['error'])} | | |")
            continue
        mfu = f"{x['mfu']:.1%}" if x.get("mfu") else "n/a"
        mem = f"{x['peak_memory_gb']:.1f} GB" if "peak_memory_gb" in x else "n/a"
        lines.append(f"| {x['model']} | {x['side']} | {x['params'] / 1e6:.0f}M | {x['tokens_per_s']:,.0f} | {mfu} "
                     f"| {mem} |")
    ratios = ", ".join(f"{m} {v:.2f}x" for m, v in r.get("ratio_tokens_per_s_warmstart_over_trainer", {}).items())
    return "\n".join([*lines, "", f"tokens/s, warmstart / Trainer: {ratios or 'n/a'}", ""])


if __name__ == "__main__":
    main()
