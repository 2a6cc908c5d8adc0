"""Training throughput of `warmstart train` vs a plain Hugging Face `Trainer` on the identical model, batch,
sequence length, optimizer settings and data, measured in one benchmark run, reported as a ratio.

    python bench/train_throughput.py                       # CPU: llama-small, writes bench/results/train_throughput_cpu.json
    python bench/train_throughput.py --preset llama-400m --seq-len 2048 --batch-tokens 65536 --micro 8 \
        --device cuda --steps 30 --out bench/results/train_throughput_h100.json   # GPU, with MFU

Both sides train from the same seeded initial weights on the same token sequences (the warmstart sampler's
plan, materialised for the Trainer), AdamW (0.9, 0.95), wd 0.1, clip 1.0, cosine schedule; steady-state
tokens/s excludes the first `--skip` steps (allocator and compile warm-up). Every measurement is its own fresh
process (a process that already trained once runs faster: malloc has adapted), the order of the sides rotates
from repeat to repeat, and the medians are reported. A third side, warmstart with `train.keep_heap=false`,
shows how much of the difference is the CPU allocator setting and how much the loop itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from warmstart.config import Recipe, validate
from warmstart.data.demo_corpus import prepare_demo
from warmstart.data.sampler import MixtureSampler
from warmstart.data.shards import open_data_dir
from warmstart.models.build import build_model, flops_per_token
from warmstart.runtime.metrics import read_metrics
from warmstart.train.loop import train
from warmstart.train.throughput import peak_flops

SIDES = {"warmstart": "warmstart", "warmstart_system_malloc": "warmstart, train.keep_heap=false",
         "hf_trainer": "HF Trainer"}


def recipe(args, shards: Path, tok: Path, out: Path, name: str, keep_heap: bool = True) -> Recipe:
    return validate(
        Recipe,
        {
            "name": name,
            "out_dir": str(out),
            "data": {"dir": str(shards), "seq_len": args.seq_len, "packing": args.packing},
            "model": {"preset": args.preset, "tokenizer": str(tok)},
            "optim": {"betas": [0.9, 0.95], "weight_decay": 0.1, "grad_clip": 1.0},
            "schedule": {"kind": "cosine", "max_lr": 3e-4, "warmup_steps": 2},
            "train": {
                "steps": args.steps,
                "batch_tokens": args.batch_tokens,
                "micro_batch_size": args.micro,
                "log_every": 1,
                "device": args.device,
                "compile": args.compile,
                "progress": False,
                "keep_heap": keep_heap,
            },
            "eval": {"every": 10**9, "max_tokens": args.seq_len, "batch_size": 1},
        },
    )


def run_warmstart(args, shards, tok, out, i, keep_heap: bool = True) -> float:
    r = recipe(args, shards, tok, out, f"ws{i}-{keep_heap}", keep_heap=keep_heap)
    train(r)
    rows = [m for m in read_metrics(r.run_dir) if m["event"] == "train" and m["step"] > args.skip]
    total_tokens = sum(args.batch_tokens for _ in rows)
    total_time = sum(args.batch_tokens / m["tokens_per_s"] for m in rows)
    return total_tokens / total_time


def run_hf_trainer(args, shards, tok, out, i) -> float:
    """The same model, data order, batch and optimizer through `transformers.Trainer`."""
    r = recipe(args, shards, tok, out, f"hf{i}")
    times = hf_trainer_step_times(r, args.steps, args.micro, args.device, args.compile, out / f"hf{i}")
    steady = times[args.skip :]
    return args.batch_tokens * (len(steady) - 1) / (steady[-1] - steady[0])


def hf_trainer_step_times(r: Recipe, steps: int, micro: int, device: str, compile: bool, out: Path) -> list[float]:
    """Train recipe `r`'s model (same seeded init) on the warmstart sampler's plan with `transformers.Trainer`,
    AdamW (0.9, 0.95), wd 0.1, clip 1.0, cosine; returns the wall clock at the end of each step."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = build_model(r.model, None, seed=r.seed).model
    model.config.use_cache = False
    sampler = MixtureSampler.from_config(r.data, open_data_dir(r.data.dir), seed=r.seed)
    gseqs = r.train.batch_tokens // r.data.seq_len
    rows = sampler.read(sampler.next_indices(gseqs * steps))
    # the same seq_len-token inputs as warmstart's; HF shifts `labels` itself (so one target fewer per row)
    data = [{"input_ids": torch.from_numpy(x[:-1]), "labels": torch.from_numpy(x[:-1])} for x in rows]

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    targs = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=gseqs // micro,
        max_steps=steps,
        learning_rate=3e-4,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=10**9,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        torch_compile=compile,
        disable_tqdm=True,
        seed=r.seed,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=data, callbacks=[Clock()])
    trainer.train()
    return times


def measure_one(args) -> None:
    """Child process: one side, one repeat; prints its tokens/s as the last line."""
    work = Path(args.work)
    shards, tok, _ = prepare_demo(work, vocab_size=args.vocab, progress=False)
    runs = work / "runs"
    if args.side == "hf_trainer":
        tps = run_hf_trainer(args, shards, tok, runs, args.repeat)
    else:
        tps = run_warmstart(args, shards, tok, runs, args.repeat, keep_heap=args.side == "warmstart")
    print(json.dumps({"side": args.side, "tokens_per_s": tps}))


def child_args(args, side: str, i: int) -> list[str]:
    flags = ["--preset", args.preset, "--vocab", str(args.vocab), "--seq-len", str(args.seq_len),
             "--batch-tokens", str(args.batch_tokens), "--micro", str(args.micro), "--steps", str(args.steps),
             "--skip", str(args.skip), "--device", args.device, "--work", args.work, "--side", side,
             "--repeat", str(i), "--packing", args.packing]
    return [sys.executable, __file__, *flags, *(["--compile"] if args.compile else [])]


def add_measure_args(p: argparse.ArgumentParser, steps: int, skip: int) -> None:
    """The model, data and timing flags `child_args` passes on: shared by every throughput bench."""
    p.add_argument("--preset", default="llama-small")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq-len", dest="seq_len", type=int, default=256)
    p.add_argument("--batch-tokens", dest="batch_tokens", type=int, default=8192)
    p.add_argument("--micro", type=int, default=16)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--skip", type=int, default=skip)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_measure_args(p, steps=25, skip=5)
    p.add_argument("--packing", default="stream", choices=["stream", "documents"],
                   help="warmstart's data.packing (stream: the plain windows the Trainer reads too)")
    p.add_argument("--work", default=None, help="keep data here (default: a temp dir)")
    p.add_argument("--out", default="bench/results/train_throughput_cpu.json")
    p.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return measure_one(args)

    args.work = str(Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ws-bench-")))
    shards, tok, _ = prepare_demo(Path(args.work), vocab_size=args.vocab)
    runs = Path(args.work) / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    names = list(SIDES)
    tps: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.repeats):
        for side in names[i % len(names):] + names[: i % len(names)]:  # rotate who goes first
            out = subprocess.run(child_args(args, side, i), capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{side} repeat {i} failed:\n{out.stderr[-3000:]}")
            tps[side].append(json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"])
        print(f"repeat {i}: " + ", ".join(f"{SIDES[n]} {tps[n][-1]:,.0f}" for n in names) + " tok/s", flush=True)

    probe = build_model(recipe(args, shards, tok, runs, "probe").model, None, seed=0).model
    fpt = flops_per_token(probe, args.seq_len)
    dev = torch.device(args.device)
    peak = peak_flops(dev)
    med = {n: statistics.median(v) for n, v in tps.items()}
    result = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "model": args.preset,
        "params": sum(p.numel() for p in probe.parameters()),
        "flops_per_token": fpt,
        "seq_len": args.seq_len,
        "batch_tokens": args.batch_tokens,
        "micro_batch_size": args.micro,
        "steps": args.steps,
        "skipped_warmup_steps": args.skip,
        "repeats": args.repeats,
        "one_process_per_measurement": True,
        "warmstart_tokens_per_s": tps["warmstart"],
        "warmstart_system_malloc_tokens_per_s": tps["warmstart_system_malloc"],
        "hf_trainer_tokens_per_s": tps["hf_trainer"],
        "warmstart_median": med["warmstart"],
        "warmstart_system_malloc_median": med["warmstart_system_malloc"],
        "hf_trainer_median": med["hf_trainer"],
        "ratio_warmstart_over_hf": med["warmstart"] / med["hf_trainer"],
        "ratio_warmstart_system_malloc_over_hf": med["warmstart_system_malloc"] / med["hf_trainer"],
        "ratio_per_repeat": [a / b for a, b in zip(tps["warmstart"], tps["hf_trainer"], strict=True)],
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "compile": args.compile,
    }
    if peak:
        result["peak_bf16_flops"] = peak
        result["warmstart_mfu"] = fpt * med["warmstart"] / peak
        result["hf_trainer_mfu"] = fpt * med["hf_trainer"] / peak
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
