"""Peak memory and speed on a big-vocabulary model: `warmstart eval` / `warmstart train` against a plain
`transformers` forward / the HF `Trainer`, on the same model, batch and data, measured in one run.

    python bench/big_vocab.py        # CPU, about 10 minutes on 2 cores; writes bench/results/big_vocab.{json,md}

The model is Gemma-3-shaped (Gemma3ForCausalLM from a local config: vocabulary 262,144, hidden 640, 4 layers,
random weights, nothing downloaded). Its tokenizer is a word-level one with 262,144 entries, and the data are
documents of uniformly random tokens, prepared with `warmstart prepare` — what a 262k-vocabulary run sees, without
a download. Every side runs in its own process under `/usr/bin/time -v` (peak RSS = "Maximum resident set size").

(a) eval: `warmstart eval CKPT --data DIR` at its default settings (16 x 1024 tokens per batch), and at a batch a
    plain forward can hold (`--max-tokens`), against `model(input_ids).logits` + cross-entropy on the same sequences.
    A plain forward at the default batch would hold 16 x 1024 x 262,144 float32 logits (17 GB) twice over.
(b) train: `warmstart train` against `transformers.Trainer` at equal batch, optimizer and schedule; tokens/s over
    the steps after the first.
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
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

HERE = Path(__file__).resolve().parent
VOCAB = 262_144


def gemma3_config(layers: int) -> dict:
    """Gemma 3 270M's shape (hidden 640, 4 heads of 256, 1 KV head, FFN 2048, 262k vocabulary), fewer layers."""
    return {
        "model_type": "gemma3_text",
        "vocab_size": VOCAB,
        "hidden_size": 640,
        "intermediate_size": 2048,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 32768,
        "sliding_window": 512,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 1,
    }


def random_token_data(work: Path, vocab: int, docs: int, doc_tokens: int, val_docs: int) -> dict:
    """A word-level tokenizer of `vocab` entries and prepared documents of uniformly random tokens under `work`:
    what a model of that vocabulary trains on, with no download and no tokenizer training. Reused if present."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from warmstart.data import prepare

    paths = {"tok": work / "tokenizer", "data": work / "shards"}
    if all(p.exists() for p in paths.values()):
        return paths
    work.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<eos>", "<mask>"]
    table = {t: i for i, t in enumerate(specials)}
    table.update({f"t{i}": i for i in range(len(specials), vocab)})
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<eos>",
                            mask_token="<mask>").save_pretrained(str(paths["tok"]))
    rng = np.random.default_rng(0)
    with (work / "random.jsonl").open("w") as f:
        for _ in range(docs):
            ids = rng.integers(len(specials), vocab, doc_tokens)
            f.write(json.dumps({"text": " ".join(f"t{i}" for i in ids)}) + "\n")
    prepare({"tokenizer": str(paths["tok"]), "out": str(paths["data"]), "val_docs": val_docs,
             "domains": {"random": [{"path": str(work / "random.jsonl")}]}}, progress=False)
    return paths


def build_inputs(work: Path, layers: int, docs: int, doc_tokens: int, val_docs: int) -> dict:
    """Tokenizer, prepared data, model config and a random-weight checkpoint under `work` (reused if present)."""
    from warmstart.config import ModelConfig
    from warmstart.models.build import build_model, save_hf

    paths = {**random_token_data(work, VOCAB, docs, doc_tokens, val_docs),
             "config": work / "config.json", "ckpt": work / "ckpt"}
    if not paths["ckpt"].exists():
        paths["config"].write_text(json.dumps(gemma3_config(layers), indent=2))
        loaded = build_model(ModelConfig(config=str(paths["config"]), tokenizer=str(paths["tok"])), None, seed=0)
        save_hf(loaded.model, loaded.tokenizer, paths["ckpt"])
    return paths


def train_recipe(args, paths: dict, out: Path, name: str) -> dict:
    return {
        "name": name,
        "out_dir": str(out),
        "data": {"dir": str(paths["data"]), "seq_len": args.seq_len},
        "model": {"config": str(paths["config"]), "tokenizer": str(paths["tok"])},
        "optim": {"betas": [0.9, 0.95], "weight_decay": 0.1, "grad_clip": 1.0},
        "schedule": {"kind": "cosine", "max_lr": 3e-4, "warmup_steps": 2},
        "train": {"steps": args.steps, "batch_tokens": args.seq_len * args.micro, "micro_batch_size": args.micro,
                  "log_every": 1, "progress": False, "device": "cpu"},
        "eval": {"every": 10**9, "max_tokens": args.seq_len, "batch_size": 1},
    }


# ------------------------------------------------------------------------------------------ one side, one process
def side_plain_eval(args, paths: dict) -> dict:
    """A plain transformers forward, then the cross-entropy of its logits, over warmstart eval's sequences."""
    from transformers import AutoModelForCausalLM

    from warmstart.data.shards import open_data_dir
    from warmstart.eval.perplexity import val_sequences

    model = AutoModelForCausalLM.from_pretrained(str(paths["ckpt"]), dtype=torch.float32).eval()
    seqs = val_sequences(open_data_dir(paths["data"])["random"], args.eval_seq_len, args.small_eval_tokens)
    t0 = time.perf_counter()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(seqs), 16):
            x = torch.from_numpy(seqs[i : i + 16])
            logits = model(input_ids=x[:, :-1]).logits
            total += F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
            n += x[:, 1:].numel()
    dt = time.perf_counter() - t0
    return {"loss": total / n, "tokens": n, "compute_s": dt}


def side_plain_train(args, paths: dict) -> dict:
    sys.path.insert(0, str(HERE))
    from train_throughput import hf_trainer_step_times

    from warmstart.config import Recipe, validate

    r = validate(Recipe, train_recipe(args, paths, Path(args.work) / "runs", "hf"))
    times = hf_trainer_step_times(r, args.steps, args.micro, "cpu", False, Path(args.work) / "runs" / "hf")
    steady = times[1:]
    return {"tokens_per_s": r.train.batch_tokens * (len(steady) - 1) / (steady[-1] - steady[0])}


# ------------------------------------------------------------------------------------------ the driver
def timed(cmd: list[str], env: dict | None = None) -> tuple[dict, str]:
    """Run `cmd` under /usr/bin/time -v; (peak RSS in GB and wall seconds, stdout)."""
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", res.stderr).group(1)
    secs = sum(float(p) * 60**i for i, p in enumerate(reversed(wall.split(":"))))
    return {"peak_rss_gb": rss_kb / 2**20, "wall_s": secs}, res.stdout


def child(args, side: str) -> list[str]:
    flags = ["--work", args.work, "--layers", str(args.layers), "--seq-len", str(args.seq_len),
             "--micro", str(args.micro), "--steps", str(args.steps), "--eval-seq-len", str(args.eval_seq_len),
             "--small-eval-tokens", str(args.small_eval_tokens), "--side", side]
    return [sys.executable, str(Path(__file__).resolve()), *flags]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", dest="seq_len", type=int, default=256, help="training sequence length")
    p.add_argument("--micro", type=int, default=8, help="training sequences per step (one micro-batch)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--eval-seq-len", dest="eval_seq_len", type=int, default=1024, help="warmstart eval's default")
    p.add_argument("--small-eval-tokens", dest="small_eval_tokens", type=int, default=2048,
                   help="validation tokens of the equal-batch eval comparison")
    p.add_argument("--work", default=None, help="keep data and checkpoint here (default: a temp dir)")
    p.add_argument("--out", default=str(HERE / "results" / "big_vocab"))
    p.add_argument("--parts", default="eval,train", help="measure only these; the others are kept from --out's json")
    p.add_argument("--side", choices=["plain_eval", "plain_train"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        paths = {"tok": Path(args.work) / "tokenizer", "data": Path(args.work) / "shards",
                 "config": Path(args.work) / "config.json", "ckpt": Path(args.work) / "ckpt"}
        fn = side_plain_eval if args.side == "plain_eval" else side_plain_train
        print(json.dumps(fn(args, paths)))
        return

    t_all = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ws-bigvocab-"))
    args.work = str(work)
    # val: enough documents for the default eval (16 x 1024 tokens); train: enough for the steps
    paths = build_inputs(work, args.layers, docs=48, doc_tokens=1100, val_docs=16)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(paths["ckpt"]))
    n_params = sum(t.numel() for t in _safetensors(paths["ckpt"]).values())
    weights_gb = n_params * 4 / 2**30
    ws = [sys.executable, "-m", "warmstart"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    res: dict = {}
    parts = args.parts.split(",")
    out = Path(args.out)
    earlier = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    commands = {p: earlier.get("commands", {}).get(p, earlier.get("command")) for p in ("eval", "train")}
    this = "python bench/big_vocab.py " + " ".join(sys.argv[1:])
    for p_ in parts:
        commands[p_] = this
    keys = {"eval": ["eval_warmstart_default", "eval_warmstart_small", "eval_plain_small"],
            "train": ["train_warmstart", "train_warmstart_keep_heap", "train_hf_trainer"]}
    for p_ in ("eval", "train"):
        if p_ not in parts:
            if not all(k in earlier for k in keys[p_]):
                sys.exit(f"--parts: no earlier {p_} results in {out.with_suffix('.json')}")
            res.update({k: earlier[k] for k in keys[p_]})
    if "eval" in parts:
        eval_part(args, paths, work, ws, env, res)
    if "train" in parts:
        train_part(args, paths, work, ws, env, res)
    finish(args, res, commands, n_params, weights_gb, cfg, t_all)


def eval_part(args, paths, work, ws, env, res) -> None:
    """(a) `warmstart eval` at its defaults and at an equal batch, and a plain forward at that batch."""
    res["eval_warmstart_default"], _ = timed(
        [*ws, "eval", str(paths["ckpt"]), "--data", str(paths["data"]), "--out", str(work / "ev-default")], env)
    res["eval_warmstart_default"]["loss"] = _eval_loss(work / "ev-default")
    res["eval_warmstart_small"], _ = timed(
        [*ws, "eval", str(paths["ckpt"]), "--data", str(paths["data"]), "--out", str(work / "ev-small"),
         "--max-tokens", str(args.small_eval_tokens)], env)
    res["eval_warmstart_small"]["loss"] = _eval_loss(work / "ev-small")
    m, out = timed(child(args, "plain_eval"), env)
    res["eval_plain_small"] = {**m, **json.loads(out.strip().splitlines()[-1])}
    print(json.dumps({k: v for k, v in res.items()}, indent=1), flush=True)


def train_part(args, paths, work, ws, env, res) -> None:
    """(b) `warmstart train` and the HF Trainer at equal batch, each its own process."""
    from warmstart.runtime.metrics import read_metrics

    shutil.rmtree(work / "runs", ignore_errors=True)  # a reused --work: start the runs afresh
    recipe_path = work / "train.yaml"
    recipe_path.write_text(yaml.safe_dump(train_recipe(args, paths, work / "runs", "ws")))
    res["train_warmstart"], _ = timed([*ws, "train", str(recipe_path)], env)
    rows = [r for r in read_metrics(work / "runs" / "ws") if r["event"] == "train" and r["step"] > 1]
    res["train_warmstart"]["tokens_per_s"] = len(rows) / sum(1 / r["tokens_per_s"] for r in rows)
    # the same with train.keep_heap forced on (its default, auto, is off at this model size)
    kept = train_recipe(args, paths, work / "runs", "ws-keep-heap")
    kept["train"]["keep_heap"] = True
    (work / "train-keep-heap.yaml").write_text(yaml.safe_dump(kept))
    res["train_warmstart_keep_heap"], _ = timed([*ws, "train", str(work / "train-keep-heap.yaml")], env)
    rows = [r for r in read_metrics(work / "runs" / "ws-keep-heap") if r["event"] == "train" and r["step"] > 1]
    res["train_warmstart_keep_heap"]["tokens_per_s"] = len(rows) / sum(1 / r["tokens_per_s"] for r in rows)
    m, out = timed(child(args, "plain_train"), env)
    res["train_hf_trainer"] = {**m, **json.loads(out.strip().splitlines()[-1])}


def finish(args, res, commands, n_params, weights_gb, cfg, t_all) -> None:
    result = {
        "command": commands["train"] if commands["train"] == commands["eval"] else None,
        "commands": commands,
        "model": f"Gemma3ForCausalLM, vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} "
                 f"layers, random weights (tied head)",
        "params": n_params,
        "weights_fp32_gb": weights_gb,
        "eval_default": {"seq_len": args.eval_seq_len, "max_tokens": 16384, "batch_size": 16},
        "eval_small_tokens": args.small_eval_tokens,
        "train": {"seq_len": args.seq_len, "micro_batch_size": args.micro, "batch_tokens": args.seq_len * args.micro,
                  "steps": args.steps, "tokens_per_s_over_steps_after": 1},
        **res,
        "eval_default_peak_over_weights_gb": res["eval_warmstart_default"]["peak_rss_gb"] - weights_gb,
        "ratio_eval_peak_warmstart_over_plain": res["eval_warmstart_small"]["peak_rss_gb"]
        / res["eval_plain_small"]["peak_rss_gb"],
        "ratio_train_peak_warmstart_over_trainer": res["train_warmstart"]["peak_rss_gb"]
        / res["train_hf_trainer"]["peak_rss_gb"],
        "ratio_train_tokens_per_s_warmstart_over_trainer": res["train_warmstart"]["tokens_per_s"]
        / res["train_hf_trainer"]["tokens_per_s"],
        "device": platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__,
        "bench_wall_s": time.perf_counter() - t_all,
    }
    result = {k: v for k, v in result.items() if v is not None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def _safetensors(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


def _eval_loss(out_dir: Path) -> float:
    return json.loads((out_dir / "eval.json").read_text())["val/avg/loss"]


def markdown(r: dict) -> str:
    g = "{:.2f} GB".format
    ed, es, ep = r["eval_warmstart_default"], r["eval_warmstart_small"], r["eval_plain_small"]
    tw, th = r["train_warmstart"], r["train_hf_trainer"]
    tk = r.get("train_warmstart_keep_heap")
    cmds = r["commands"]
    how = f"`{cmds['eval']}`" if cmds["eval"] == cmds["train"] else f"eval: `{cmds['eval']}`; train: `{cmds['train']}`"
    return f"""# Big vocabulary: memory and speed (CPU)

{how} — {r["model"]}, {r["params"] / 1e6:.0f}M parameters ({g(r["weights_fp32_gb"])} in float32);
{r["cpu_count"]} CPU cores ({r["device"]}), torch {r["torch"]}, load average at the end {r["load_average_at_end"][0]:.1f};
each side its own process under `/usr/bin/time -v`; the last invocation took {r["bench_wall_s"] / 60:.1f} min.

## Eval

| side | tokens | peak RSS | wall | loss |
|---|---|---|---|---|
| `warmstart eval` default (16 x {r["eval_default"]["seq_len"]} per batch) | 16384 | {g(ed["peak_rss_gb"])} | {ed["wall_s"]:.0f} s | {ed["loss"]:.4f} |
| `warmstart eval --max-tokens {r["eval_small_tokens"]}` | {r["eval_small_tokens"]} | {g(es["peak_rss_gb"])} | {es["wall_s"]:.0f} s | {es["loss"]:.4f} |
| plain `model(input_ids).logits` + cross-entropy, same sequences | {ep["tokens"]} | {g(ep["peak_rss_gb"])} | {ep["wall_s"]:.0f} s | {ep["loss"]:.4f} |

Default eval peak = weights + {g(r["eval_default_peak_over_weights_gb"])} (goal: weights + 2 GB). At equal batch,
warmstart / plain peak = **{r["ratio_eval_peak_warmstart_over_plain"]:.2f}x**. A plain forward at the default batch
would hold 16 x 1024 x 262,144 float32 logits (17.2 GB) plus the loss's log-softmax of the same size.

## Train (equal batch: {r["train"]["micro_batch_size"]} x {r["train"]["seq_len"]} tokens per step, {r["train"]["steps"]} steps, AdamW, clip 1.0)

| side | peak RSS | tokens/s (steps after the first) |
|---|---|---|
| `warmstart train` (defaults: `keep_heap: auto`, off at this size) | {g(tw["peak_rss_gb"])} | {tw["tokens_per_s"]:.1f} |
{f'| `warmstart train`, `keep_heap: true` | {g(tk["peak_rss_gb"])} | {tk["tokens_per_s"]:.1f} |' if tk else ''}
| HF `Trainer` | {g(th["peak_rss_gb"])} | {th["tokens_per_s"]:.1f} |

warmstart / Trainer: peak **{r["ratio_train_peak_warmstart_over_trainer"]:.2f}x** (goal <= 0.5x), tokens/s
**{r["ratio_train_tokens_per_s_warmstart_over_trainer"]:.2f}x** (goal >= 1x).
"""


if __name__ == "__main__":
    main()
