"""The memory forecast every command prints at its start, against the peak it then reaches (`/usr/bin/time -v`).

    python bench/memory_forecast.py --work /tmp/memfc     # CPU, ~15 min on 2 cores; writes bench/results/memory-forecast.{json,md}

Cases (each its own process; the forecast is the `memory: ... expects a peak of X GB` line, the measure the
process's "Maximum resident set size"):
- SmolLM2-135M (`bench/smollm2.py`'s checkpoint): `train` continued on the demo corpus's `code` at micro-batch 8 x 256,
  `eval` at its defaults, `inherit --layers 10`, `format probe`;
- a 262,144-token vocabulary (Gemma-3-shaped, 2 layers, random weights from a config; bench/big_vocab.py's inputs):
  `train` at 4 x 256 and `eval` at its defaults (16 x 1024);
- distillation: SmolLM2's first 10 blocks trained with SmolLM2 as the teacher, 4 x 256.
Goal: every forecast within 25% of the measured peak.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from big_vocab import build_inputs  # noqa: E402

WS = [sys.executable, "-m", "warmstart"]


def measured(cmd: list[str], cwd: Path) -> dict:
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=cwd)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    fc = re.findall(r"memory: .* expects a peak of ([\d.]+) GB [^\n]*", res.stdout)
    line = re.findall(r"(memory: .* expects a peak of [^\n]*)", res.stdout)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    peak = rss_kb * 1024 / 1e9
    forecast = max(float(x) for x in fc)
    return {"command": " ".join(["warmstart", *cmd[len(WS):]]), "forecast_gb": forecast, "peak_rss_gb": peak,
            "ratio": forecast / peak, "forecast_line": line[fc.index(max(fc, key=float))]}


def recipe(path: Path, tree: dict) -> str:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/memfc")
    ap.add_argument("--smollm2", help="SmolLM2 checkpoint dir (default: WORK/smollm2 via checkpoint from-gguf)")
    ap.add_argument("--cases", default="smol-train,smol-eval,smol-inherit,smol-probe,big-train,big-eval,distill")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    smol = Path(args.smollm2).resolve() if args.smollm2 else work / "smollm2"
    if not smol.exists():
        subprocess.run([*WS, "checkpoint", "from-gguf", "smollm2", str(smol)], check=True)
    if not (work / "corpus").exists():
        subprocess.run([*WS, "corpus", "demo", str(work / "corpus")], check=True, capture_output=True)
    prep = yaml.safe_load((work / "corpus" / "prepare.yaml").read_text())
    prep.update({"tokenizer": str(smol), "out": str(work / "shards-smol"), "val_docs": 40})
    for sources in prep["domains"].values():
        for s in sources:
            s["path"] = str((work / s["path"]).resolve()) if not Path(s["path"]).is_absolute() else s["path"]
    if not (work / "shards-smol").exists():
        subprocess.run([*WS, "prepare", recipe(work / "prep-smol.yaml", prep), "--workers", "2"], check=True,
                       capture_output=True, cwd=work)
    big = build_inputs(work / "big", layers=2, docs=400, doc_tokens=1100, val_docs=20)
    data = str(work / "shards-smol")

    def train_tree(name, init, steps=2, micro=8, seq=256, **extra):
        tree = {"name": name, "out_dir": str(work / "runs"), "data": {"dir": data, "weights": {"code": 1.0},
                                                                    "seq_len": seq},
                "init": {"from": str(init)}, "schedule": {"kind": "cosine", "max_lr": 3e-4, "warmup_steps": 1},
                "train": {"steps": steps, "batch_tokens": micro * seq, "micro_batch_size": micro,
                          "progress": False},
                "eval": {"every": steps, "max_tokens": 4096, "batch_size": 16}}
        tree.update(extra)
        return tree

    cut = work / "smol-cut10"
    cases = {
        "smol-train": lambda: [*WS, "train", recipe(work / "smol-train.yaml", train_tree("smol-train", smol)),
                               "--set", "train.cpu_threads=2"],
        "smol-eval": lambda: [*WS, "eval", str(smol), "--data", data, "--out", str(work / "eval-smol")],
        "smol-inherit": lambda: [*WS, "inherit", "--from", str(smol), "--layers", "10", "--out", str(cut),
                                 "--overwrite"],
        "smol-probe": lambda: [*WS, "format", "probe", str(smol), "--data", data, "--domain", "code"],
        "big-train": lambda: [*WS, "train", recipe(work / "big-train.yaml", {
            "name": "big-train", "out_dir": str(work / "runs"),
            "data": {"dir": str(big["data"]), "seq_len": 256},
            "model": {"config": str(big["config"]), "tokenizer": str(big["tok"])},
            "schedule": {"kind": "cosine", "max_lr": 3e-4, "warmup_steps": 1},
            "train": {"steps": 2, "batch_tokens": 1024, "micro_batch_size": 4, "progress": False},
            "eval": {"every": 2, "max_tokens": 2048, "batch_size": 8}})],
        "big-eval": lambda: [*WS, "eval", str(big["ckpt"]), "--data", str(big["data"]), "--out",
                             str(work / "eval-big")],
        "distill": lambda: [*WS, "train", recipe(work / "distill.yaml", train_tree(
            "distill", cut, micro=4, distill={"teacher": str(smol), "temperature": 1.0, "alpha": 0.5}))],
    }
    results = {}
    out_json = HERE / "results" / "memory-forecast.json"
    if out_json.exists():
        results = json.loads(out_json.read_text()).get("cases", {})
    for name in args.cases.split(","):
        if name == "distill" and not cut.exists():
            measured(cases["smol-inherit"](), work)
        for run in (work / "runs").glob(f"{name}*"):
            import shutil

            shutil.rmtree(run)
        results[name] = measured(cases[name](), work)
        print(f"{name}: forecast {results[name]['forecast_gb']:.2f} GB, peak {results[name]['peak_rss_gb']:.2f} GB "
              f"({results[name]['ratio']:.2f}x)", flush=True)
    info = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs",
            "command": "python bench/memory_forecast.py --work " + str(args.work), "cases": results}
    out_json.write_text(json.dumps(info, indent=2) + "\n")
    (HERE / "results" / "memory-forecast.md").write_text(markdown(info))


def markdown(info: dict) -> str:
    rows = "\n".join(f"| {k} | `{v['command'].replace(str(Path.home()), '~')}` | {v['forecast_gb']:.2f} GB | "
                     f"{v['peak_rss_gb']:.2f} GB | {v['ratio']:.2f} |" for k, v in info["cases"].items())
    worst = max(abs(v["ratio"] - 1) for v in info["cases"].values())
    lines = "\n".join(f"- {k}: `{v['forecast_line']}`" for k, v in info["cases"].items())
    return f"""# Memory forecast against the measured peak

`{info['command']}` on {info['machine']}: each command in its own process under `/usr/bin/time -v`; the forecast is
the `memory:` line the command prints before its model loads (models/memory.py), the peak its maximum resident
set size (1 GB = 1e9 bytes). Goal: within 25%. Models: SmolLM2-135M-Instruct (30 blocks, 49,152-token vocabulary,
float32 copy of the GGUF); `big`: Gemma-3-shaped, 262,144-token vocabulary, hidden 640, 2 layers, random weights
from a config (180M parameters, 0.72 GB); `distill`: SmolLM2's first 10 blocks taught by SmolLM2. Data: the demo
corpus tokenized with SmolLM2's tokenizer; `big`: documents of random tokens (bench/big_vocab.py).

| case | command | forecast | measured peak | forecast / peak |
|---|---|---|---|---|
{rows}

Largest miss: {worst:.0%}.

The forecast lines, term by term:
{lines}
"""


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown-only"]:
        info = json.loads((HERE / "results" / "memory-forecast.json").read_text())
        (HERE / "results" / "memory-forecast.md").write_text(markdown(info))
    else:
        main()
