"""Host memory per process for checkpoints bigger than a process should hold: start-up and saving under
`torchrun --nproc-per-node 2` (FSDP, CPU/gloo), and `inherit` to half depth, before and after the sharded paths.

    python bench/big_models.py --work /tmp/bigmodels   # CPU; writes bench/results/big-models.{json,md}

Models: SmolLM2-135M (`warmstart checkpoint from-gguf smollm2`, float32, tied) and a synthetic LLaMA of ~1.5B
parameters (hidden 2048, 20 blocks, FFN 8192, SmolLM2's 49,152-token vocabulary, untied head) written straight to
bf16 safetensors from its config, random weights, one tensor at a time.

Each case is its own `torchrun` (or process); every process reports its own peak resident set (VmHWM from
/proc/self/status, reset with /proc/self/clear_refs between start-up and saving):
- start-up: the model on both processes, sharded (FSDP) and filled. before: `from_pretrained` whole on each
  process, then `fully_shard` (build_model's path for DDP / one process); after: built on the meta device,
  sharded, each process reading its own rows (models/sharded_load.py);
- saving final/: before: the whole state dict gathered onto rank 0, then `save_pretrained`; after: safetensors
  files of at most 1024 MB gathered one at a time (train/save_final.py). The steady state before the save is
  given beside it;
- inherit to half depth (one process, `/usr/bin/time -v`): before: the tree at --before-ref (`git archive`),
  which loads the whole reference; after: this tree, which reads only the kept tensors.
Memory is measured, never time (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GB = 1e9
BIG = {"hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 8192,
       "num_hidden_layers": 20, "vocab_size": 49152, "max_position_embeddings": 2048, "tie_word_embeddings": False,
       "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "dtype": "bfloat16"}


# ------------------------------------------------------------------------------------------ in each process
def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def worker(args) -> None:
    """One process of the torchrun: start (and save) the model as `args.way` says, print its peaks as JSON."""
    import torch

    from warmstart.config import ModelConfig
    from warmstart.models.build import build_model, save_hf
    from warmstart.runtime.distributed import barrier, setup, teardown
    from warmstart.train.parallelize import full_state_dict, parallelize
    from warmstart.train.save_final import save_final

    torch.set_num_threads(1)
    d = setup("cpu")
    out = {"rank": d.rank, "rss_before_load": _status("VmRSS")}
    loaded = build_model(ModelConfig(), args.src, seed=0, sharded=args.way == "after")
    model = parallelize(loaded.model, d, "fsdp")
    if loaded.start is not None:
        loaded.start.materialise(model, d.device)
    barrier(d)
    out["startup_peak"] = _status("VmHWM")
    out["steady"] = _status("VmRSS")
    _reset_peak()
    final = Path(args.out) if d.is_main else None
    if d.is_main:
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir(parents=True)
    if args.way == "after":
        save_final(model, loaded.tokenizer, final, d, 1024)
    else:
        whole = full_state_dict(model)
        if d.is_main:
            save_hf(model, loaded.tokenizer, final, state_dict=whole)
        del whole
    barrier(d)
    out["save_peak"] = _status("VmHWM")
    Path(f"{args.out}.rank{d.rank}.json").write_text(json.dumps(out))
    teardown(d)


# ------------------------------------------------------------------------------------------ the driver
def synthetic(path: Path, tokenizer_from: Path) -> Path:
    """The ~1.5B LLaMA as bf16 safetensors shards, written a tensor at a time from a meta model's shapes."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from warmstart.models.weight_files import tied_aliases, write_shards

    config = AutoConfig.for_model("llama", **BIG)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tied = tied_aliases(meta)
    state = {k: v for k, v in meta.state_dict().items() if k not in tied}
    gen = torch.Generator().manual_seed(0)

    def fetch(name):
        shape = state[name].shape
        if name.endswith("norm.weight"):
            return torch.ones(shape, dtype=torch.bfloat16)
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    write_shards(tmp, [(k, v.numel() * 2) for k, v in state.items()], fetch, 1 << 30)
    meta.config.architectures = ["LlamaForCausalLM"]
    meta.config.save_pretrained(str(tmp))
    for f in tokenizer_from.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, tmp / f.name)
    tmp.rename(path)
    return path


def mem_available() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0.0


def torchrun_case(src: Path, way: str, out: Path, env: dict) -> list[dict]:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", str(Path(__file__).resolve()), "worker",
           "--src", str(src), "--way", way, "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]


def inherit_case(src: Path, layers: int, out: Path, pythonpath: Path, env: dict) -> float:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "warmstart", "inherit", "--from", str(src), "--layers",
           str(layers), "--out", str(out), "--overwrite", "--skip-memory-check"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PYTHONPATH": str(pythonpath)})
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1)) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--src", required=True)
    w.add_argument("--way", choices=["before", "after"], required=True)
    w.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/bigmodels")
    ap.add_argument("--smollm2", default="/work/scratch/smollm2")
    ap.add_argument("--before-ref", default=None, help="the git revision whose inherit is 'before' (default: where "
                    "this branch leaves main)")
    ap.add_argument("--min-free-gb", type=float, default=16.0, help="skip a case when less memory is available")
    ap.add_argument("--cases", default="smol,big,inherit")
    args = ap.parse_args()
    if args.cmd == "worker":
        return worker(args)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    smol = Path(args.smollm2).resolve()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src")}
    out_json = HERE / "results" / "big-models.json"
    results = json.loads(out_json.read_text()).get("cases", {}) if out_json.exists() else {}
    big = synthetic(work / "llama-1.5b", smol)
    models = {"smol": ("SmolLM2-135M (fp32, tied)", smol), "big": ("synthetic LLaMA 1.5B (bf16, untied)", big)}
    for key in [c for c in args.cases.split(",") if c in models]:
        label, src = models[key]
        for way in ("before", "after"):
            free = mem_available()
            print(f"{key} {way} (MemAvailable {free / GB:.1f} GB)", flush=True)
            if free < args.min_free_gb * GB:
                sys.exit(f"only {free / GB:.1f} GB available; not starting {key} {way} (--min-free-gb)")
            rows = torchrun_case(src, way, work / f"final-{key}-{way}", env)
            shutil.rmtree(work / f"final-{key}-{way}", ignore_errors=True)
            results[f"{key}/{way}"] = {"model": label, "src": str(src), "ranks": rows}
            out_json.write_text(json.dumps({"cases": results}, indent=2) + "\n")
    if "inherit" in args.cases.split(","):
        old = work / "before-tree"
        if not old.exists():
            old.mkdir()
            ref = args.before_ref or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                                    capture_output=True, text=True).stdout.strip()
            tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True,
                                 capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=tar, check=True)
        for way, tree in (("before", old / "src"), ("after", ROOT / "src")):
            free = mem_available()
            print(f"inherit {way} (MemAvailable {free / GB:.1f} GB)", flush=True)
            if free < args.min_free_gb * GB:
                sys.exit(f"only {free / GB:.1f} GB available; not starting inherit {way} (--min-free-gb)")
            peak = inherit_case(big, BIG["num_hidden_layers"] // 2, work / f"cut-{way}", tree, env)
            results[f"inherit/{way}"] = {"model": models["big"][0], "peak": peak,
                                         "cut_bytes": sum(f.stat().st_size for f in (work / f"cut-{way}").glob(
                                             "*.safetensors"))}
            out_json.write_text(json.dumps({"cases": results}, indent=2) + "\n")
    info = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "command": f"python bench/big_models.py --work {args.work}", "cases": results}
    out_json.write_text(json.dumps(info, indent=2) + "\n")
    (HERE / "results" / "big-models.md").write_text(markdown(info))


def _gb(x: float) -> str:
    return f"{x / GB:.2f}"


def markdown(info: dict) -> str:
    cases = info["cases"]
    rows = []
    for key in ("smol", "big"):
        for way in ("before", "after"):
            if f"{key}/{way}" not in cases:
                continue
            save = cases[f"{key}/{way}"]["ranks"]
            rows.append(f"| {cases[f'{key}/{way}']['model']} | {way} | "
                        + " / ".join(_gb(r["startup_peak"]) for r in save) + " | "
                        + " / ".join(_gb(r["steady"]) for r in save) + " | "
                        + " / ".join(_gb(r["save_peak"]) for r in save) + " |")
    notes = ""
    if "big/after" in cases and "big/before" in cases:
        b, a = cases["big/before"]["ranks"], cases["big/after"]["ranks"]
        n = 1.543e9
        notes = (f"\nThe 1.5B model ({n / 1e9:.3f}B parameters) is {4 * n / GB:.2f} GB in float32, the training copy; "
                 f"each process holds half of it once sharded ({2 * n / GB:.2f} GB) beside a runtime of about "
                 f"{_gb(a[0]['steady'] - 2 * n)} GB (Python, torch, transformers, the process group). Start-up: "
                 f"before, every process built the whole model first ({_gb(b[0]['startup_peak'])} GB each, the "
                 "pages of the bf16 files it read included; they are shared between the processes); after, "
                 f"{_gb(a[0]['startup_peak'])} GB, {_gb(a[0]['startup_peak'] - a[0]['steady'])} GB above the "
                 f"steady state (the rows of one tensor being read). Saving: before, rank 0 gathered the whole "
                 f"model ({_gb(b[0]['save_peak'] - b[0]['steady'])} GB above its steady state); after, "
                 f"{_gb(a[0]['save_peak'] - a[0]['steady'])} GB above it: one 1 GB file (`train.save_shard_mb`, "
                 "default 1024) plus the whole tensor being gathered (the 0.4 GB embedding at most). SmolLM2's "
                 "0.54 GB fits one file, so its save gathers it whole either way; its start-up peak is its half.\n")
    inherit = ""
    if "inherit/before" in cases and "inherit/after" in cases:
        b, a = cases["inherit/before"], cases["inherit/after"]
        inherit = (f"\n## inherit to half depth, one process\n\n| | peak RSS | the cut's files |\n|---|---|---|\n"
                   f"| before (whole reference loaded) | {_gb(b['peak'])} GB | {_gb(b['cut_bytes'])} GB |\n"
                   f"| after (only the kept tensors read) | {_gb(a['peak'])} GB | {_gb(a['cut_bytes'])} GB |\n\n"
                   f"`warmstart inherit --from llama-1.5b --layers {BIG['num_hidden_layers'] // 2}` (bf16, kept "
                   "at its dtype). Before: the whole reference was loaded, then cut. After: the kept blocks, the "
                   "embeddings, the final norm and the head are read from the safetensors files, and the written "
                   "cut is reloaded to verify it once the in-memory copy is dropped: the peak is the cut plus "
                   "the runtime.\n")
    return f"""# Host memory per process for big checkpoints

`{info['command']}` on {info['machine']}. Per-process peak resident set (VmHWM, GB = 1e9 bytes), rank 0 / rank 1,
under `torchrun --standalone --nproc-per-node 2` with FSDP on CPU (gloo); each case in its own torchrun. Memory
only: timings on this shared machine mean nothing.

## Start-up and saving final/ (FSDP, 2 processes)

| model | | start-up peak | steady state before saving | peak while saving final/ |
|---|---|---|---|---|
{chr(10).join(rows)}
{notes}{inherit}"""


if __name__ == "__main__":
    main()
