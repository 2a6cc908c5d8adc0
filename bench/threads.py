"""Training tokens/s on CPU with torch's default thread count vs `train.cpu_threads: auto` (warmstart.runtime.threads),
on free cores and with competing CPU-bound processes, for the quickstart's models and SmolLM2-135M.

    python bench/threads.py                    # writes bench/results/threads.{json,md} (not yet timed on free cores)
    python bench/threads.py --tiny --out /tmp/threads-check.json   # a check that the script works (small batches)

Models: `llama-small` as the quickstart trains it (seq 128, 2048-token batches of 16) and `llama-tiny` as its
AutoScale proxies do (seq 128, 512-token batches of 4), on the demo corpus and its BPE; SmolLM2-135M-Instruct
(`--smollm2`, a checkpoint directory, e.g. from `warmstart checkpoint from-gguf smollm2`; seq 128, 1024-token
batches of 8) on the demo corpus's prose prepared with its own tokenizer. Load: 0 or more competing processes
(`--competitors`, default 0 and 2), each a busy Python loop, started `--settle` seconds before the measurement
(the situation `auto` is for: a machine that stays busy; it samples the cores' idle time when a run starts).
Every measurement is its own process (`train.cpu_threads` = null, torch's default, or auto), the two settings
alternate in order from repeat to repeat, and the median tokens/s over the steps after `--skip` is reported.
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

SETTINGS = {"torch": None, "auto": "auto"}
MODELS = {  # name: (seq_len, batch_tokens, micro_batch_size)
    "llama-small": (128, 2048, 16),
    "llama-tiny": (128, 512, 4),
    "smollm2": (128, 1024, 8),
}
TINY = {"llama-small": (64, 512, 8), "llama-tiny": (64, 256, 4), "smollm2": (64, 128, 2)}  # --tiny: a check only
BUSY = "while True: pass"


def _recipe(model: str, work: Path, smollm2: Path | None, steps: int, setting: str, i: int, tiny: bool = False):
    from warmstart.config import Recipe, validate

    seq, batch, micro = (TINY if tiny else MODELS)[model]
    corpus = work / "corpus"
    tree = {
        "name": f"{model}-{setting}-{i}",
        "out_dir": str(work / "runs"),
        "seed": 0,
        "data": {"dir": str(corpus / ("shards-smollm2" if model == "smollm2" else "shards")), "seq_len": seq,
                 "weights": {"prose": 1.0}},
        "schedule": {"kind": "cosine", "max_lr": 3e-4, "warmup_steps": 1},
        "train": {"steps": steps, "batch_tokens": batch, "micro_batch_size": micro, "log_every": 1,
                  "progress": False, "device": "cpu", "cpu_threads": SETTINGS[setting]},
        "eval": {"every": 10**9, "max_tokens": seq, "batch_size": 1, "domains": ["prose"]},
    }
    if model == "smollm2":
        tree["init"] = {"from": str(smollm2)}
    else:
        tree["model"] = {"preset": model, "tokenizer": str(corpus / "tokenizer")}
    return validate(Recipe, tree, "bench/threads")


def measure_one(args) -> None:
    """Child process: one training run; prints {tokens_per_s, threads} as its last line."""
    import torch

    from warmstart.runtime.metrics import read_metrics
    from warmstart.train.loop import train

    r = _recipe(args.model, Path(args.work), Path(args.smollm2) if args.smollm2 else None, args.steps,
                args.setting, args.repeat, args.tiny)
    train(r)
    rows = [m for m in read_metrics(r.run_dir) if m["event"] == "train" and m["step"] > args.skip]
    tps = statistics.median(m["tokens_per_s"] for m in rows)
    print(json.dumps({"tokens_per_s": tps, "threads": torch.get_num_threads()}))


def prepare_data(work: Path, smollm2: Path | None) -> None:
    """The demo corpus with its BPE (the quickstart's), and its prose prepared with SmolLM2's tokenizer."""
    import yaml

    from warmstart.config import PrepareConfig, validate
    from warmstart.data.demo_corpus import prepare_demo
    from warmstart.data.preparation import prepare

    prepare_demo(work, vocab_size=2048, progress=False)
    if smollm2 is not None:
        corpus = work / "corpus"
        tree = yaml.safe_load((corpus / "prepare.yaml").read_text())
        tree.update({"tokenizer": str(smollm2), "out": str(corpus / "shards-smollm2"),
                     "domains": {"prose": tree["domains"]["prose"]}})
        prepare(validate(PrepareConfig, tree, "bench/threads"), progress=False)


def _die_with_parent() -> None:
    """In a competitor (Linux): SIGKILL when the benchmark dies, however it dies."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def competing(n: int, settle: float) -> list[subprocess.Popen]:
    """`n` busy processes, started `settle` seconds ago (or once the load average shows them, if sooner)."""
    linux = sys.platform.startswith("linux")
    procs = [subprocess.Popen([sys.executable, "-c", BUSY], preexec_fn=_die_with_parent if linux else None)
             for _ in range(n)]
    t0 = time.monotonic()
    while n and time.monotonic() - t0 < settle:
        time.sleep(2)
        if os.getloadavg()[0] >= n:
            break
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="llama-small,llama-tiny,smollm2")
    p.add_argument("--smollm2", default="/work/cache/smollm2", help="SmolLM2 checkpoint directory ('' to skip it)")
    p.add_argument("--competitors", default="0,2", help="numbers of competing busy processes")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--skip", type=int, default=2, help="steps left out of the median (warm-up)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--settle", type=float, default=10.0, help="seconds the competitors run before measuring")
    p.add_argument("--tiny", action="store_true", help="a quick check: 3 steps, 1 repeat, 5 s settle")
    p.add_argument("--work", default=None, help="keep the prepared data here (default: a temp dir)")
    p.add_argument("--out", default="bench/results/threads.json")
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--setting", choices=list(SETTINGS), help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tiny:
        args.steps, args.skip, args.repeats, args.settle = 3, 1, 1, 5.0
    if args.setting:
        return measure_one(args)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the competitors are stopped on the way out

    from warmstart.runtime.threads import choose_threads, usable_cores

    models = [m for m in args.models.split(",") if m and (m != "smollm2" or args.smollm2)]
    smollm2 = Path(args.smollm2) if "smollm2" in models else None
    if smollm2 is not None and not (smollm2 / "config.json").is_file():
        sys.exit(f"--smollm2: {smollm2} is not a checkpoint directory (warmstart checkpoint from-gguf smollm2 DIR)")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ws-threads-"))
    prepare_data(work, smollm2)
    shutil.rmtree(work / "runs", ignore_errors=True)  # each measurement trains from step 0
    import torch

    rows = []
    for n in [int(c) for c in args.competitors.split(",")]:
        procs = competing(n, args.settle)
        try:
            for model in models:
                tps: dict[str, list[float]] = {s: [] for s in SETTINGS}
                used: dict[str, int] = {}
                for i in range(args.repeats):
                    order = list(SETTINGS) if i % 2 == 0 else list(reversed(SETTINGS))
                    for setting in order:
                        cmd = [sys.executable, __file__, "--model", model, "--setting", setting, "--repeat",
                               f"{n}{i}", "--work", str(work), "--smollm2", str(smollm2 or ""), "--steps",
                               str(args.steps), "--skip", str(args.skip), *(["--tiny"] if args.tiny else [])]
                        out = subprocess.run(cmd, capture_output=True, text=True)
                        if out.returncode:
                            sys.exit(f"{model} {setting} failed:\n{out.stderr[-3000:]}")
                        res = json.loads(out.stdout.strip().splitlines()[-1])
                        tps[setting].append(res["tokens_per_s"])
                        used[setting] = res["threads"]
                row = {"model": model, "competitors": n, "load_1min": round(os.getloadavg()[0], 2),
                       **{f"{s}_threads": used[s] for s in SETTINGS},
                       **{f"{s}_tokens_per_s": statistics.median(v) for s, v in tps.items()},
                       "samples": tps}
                row["auto_over_torch"] = row["auto_tokens_per_s"] / row["torch_tokens_per_s"]
                rows.append(row)
                print(f"{n} competitors, {model}: torch's {used['torch']} threads {row['torch_tokens_per_s']:,.0f} "
                      f"tok/s, auto {used['auto']} threads {row['auto_tokens_per_s']:,.0f} tok/s "
                      f"({row['auto_over_torch']:.2f}x)", flush=True)
        finally:
            stop(procs)

    result = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "machine": {"cores_usable": usable_cores(), "cpu_count": os.cpu_count(), "processor": platform.processor(),
                    "torch": torch.__version__, "torch_default_threads": torch.get_num_threads()},
        "settings": {"steps": args.steps, "skip": args.skip, "repeats": args.repeats, "settle_s": args.settle},
        "rule": {"example_free_cores_135M": choose_threads(135_000_000, usable_cores(), 0.0)},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# CPU threads: torch's default vs `train.cpu_threads: auto`",
        "",
        f"`{result['command']}` on {usable_cores()} usable cores (torch {torch.__version__}); tokens/s = median "
        f"over steps {args.skip + 1}-{args.steps}, median of {args.repeats} runs.",
        "",
        "| model | competing processes | load (1 min) | torch's threads | tokens/s | auto threads | tokens/s | auto / torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['competitors']} | {r['load_1min']} | {r['torch_threads']} | "
                     f"{r['torch_tokens_per_s']:,.0f} | {r['auto_threads']} | {r['auto_tokens_per_s']:,.0f} | "
                     f"{r['auto_over_torch']:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
