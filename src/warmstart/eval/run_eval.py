"""`warmstart eval CKPT_OR_RUN`: per-domain validation perplexity and lm-eval tasks for any HF causal checkpoint.

A warmstart run directory means its `final/`; its results JSON goes into the run directory and the task scores
are appended to its metrics.jsonl as a `task` event at the checkpoint's step, next to the run's loss curves.
Any other checkpoint (a HF directory or a hub name) needs `--out` for the JSON.

Windows (`--windows`, see eval/perplexity.py): `documents` (one window per document from its start, the number a
by-hand `transformers` computation gives) is the default for a plain checkpoint; a run directory defaults to its
own `eval.windows`, so `eval` of a run's final/ repeats its last in-loop evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from warmstart import atomic
from warmstart.data.validation import evaluable_domains, skipped_note
from warmstart.errors import UserError
from warmstart.runtime import rundir

if TYPE_CHECKING:  # torch is imported where a model is evaluated, so argument errors come back at once
    import torch


def _locate(spec: str) -> tuple[Path | str, Path | None]:
    """(the checkpoint to load, the warmstart run directory it belongs to, if any)."""
    from warmstart.models.locate import resolve_checkpoint

    ckpt = resolve_checkpoint(spec, "checkpoint")
    if isinstance(ckpt, Path) and ckpt.name == rundir.FINAL:
        return ckpt, rundir.run_of_checkpoint(ckpt)
    return ckpt, None


def _run_info(run: Path | None) -> dict:
    """Step, tokens, FLOPs and seq_len of a finished run (summary.json, config.yaml); empty for other checkpoints."""
    if run is None:
        return {}
    summary, cfg = rundir.load_summary(run), rundir.read_config(run) or {}
    return {
        "step": summary.get("steps"),
        "tokens": summary.get("tokens"),
        "flops": summary.get("flops"),
        "seq_len": (cfg.get("data") or {}).get("seq_len"),
        "windows": (cfg.get("eval") or {}).get("windows") or "packed",
        "packing": (cfg.get("data") or {}).get("packing", "stream"),  # runs before data.packing read the stream
        "max_tokens": (cfg.get("eval") or {}).get("max_tokens"),
    }


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: cuda requested but no CUDA device is available")
    return torch.device(name)


def domain_losses(
    model: torch.nn.Module,
    tokenizer,
    data_dir: str | Path,
    domains: list[str] | None,
    seq_len: int,
    max_tokens: int,
    batch_size: int,
    device: torch.device,
    windows: str = "documents",
    allow_format_mismatch: bool = False,
    packing: str = "documents",
) -> dict[str, dict]:
    """{domain: {loss, ppl, tokens}} on the first `max_tokens` validation targets of each prepared domain, in
    `windows` (documents | packed, read with `packing`: documents | stream); refuses data not in the
    checkpoint's document format unless allowed."""
    from warmstart.eval.perplexity import eval_windows, evaluate, perplexity, scored_targets
    from warmstart.models.build import check_data_compatible, check_data_format
    from warmstart.runtime.distributed import Dist

    data, names = eval_domains(data_dir, domains, windows=windows)
    vocab = model.get_input_embeddings().weight.shape[0]
    for n in names:
        max_id = data[n].index["splits"]["val"].get("max_token_id")
        check_data_compatible(tokenizer, data[n].tokenizer, max_id, vocab, str(data_dir), "--data")
    check_data_format(tokenizer, {n: data[n] for n in names}, str(data_dir), allow_format_mismatch,
                      "--allow-format-mismatch")
    sets = {n: eval_windows(data[n], seq_len, max_tokens, windows, packing) for n in names}
    losses = evaluate(model, sets, batch_size, Dist(device=device))
    return {n: {"loss": losses[n], "ppl": perplexity(losses[n]), "tokens": scored_targets(sets[n])} for n in names}


def eval_domains(
    data_dir: str | Path, domains: list[str] | None, say: bool = True, windows: str = "documents"
) -> tuple[dict, list[str]]:
    """(the prepared domains, the names to evaluate): `domains` or every domain with a validation token to score
    in `windows`.

    A named domain that is missing or has nothing to score is a UserError; unnamed ones with nothing to score are
    left out with a note (never scored as NaN into val/avg/loss).
    """
    from warmstart.data.shards import open_data_dir

    data = open_data_dir(data_dir)
    names = domains or list(data)
    missing = [n for n in names if n not in data]
    if missing:
        raise UserError(f"--domains: {', '.join(missing)} not in {data_dir} (have: {', '.join(data)})")
    kept = evaluable_domains(data, names, domains is not None, "--domains" if domains else "--data", windows)
    if say and len(kept) < len(names):
        print(f"note: {skipped_note(data, [n for n in names if n not in kept], windows, 'not evaluated')}")
    return data, kept


def _check_memory(ckpt, seq_len: int | None, batch_size: int, dev, data_dir=None, domains=None, windows="documents",
                  max_tokens: int | None = None) -> None:
    """The eval's memory forecast (models/memory.py) for its largest batch: batch_size windows (no more than the
    data has) of seq_len tokens (document windows: no longer than the longest validation document); refused when
    it does not fit."""
    from transformers import AutoConfig

    from warmstart.models import memory
    from warmstart.models.build import context_length

    try:
        config = AutoConfig.from_pretrained(str(ckpt))
    except Exception:  # unreadable: the load that follows says so
        return
    n = seq_len or min(int(context_length(config) or 1024), 1024)
    rows = batch_size
    if data_dir is not None:
        import numpy as np

        data, names = eval_domains(data_dir, domains, say=False, windows=windows)
        docs = [np.diff(data[d].doc_offsets("val")) for d in names]
        if windows == "documents":
            rows = min(batch_size, max(len(x) for x in docs))
            n = min(n, max(int(x.max()) for x in docs if len(x)))
        else:
            rows = min(batch_size, max(1, (max_tokens or 16384) // n))
    memory.check_forward("eval", ckpt, rows, n, ["--batch-size", "--seq-len"], device=dev)


def eval_checkpoint(
    spec: str,
    data_dir: str | Path | None = None,
    domains: list[str] | None = None,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 16,
    tasks: list[str] | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    windows: str | None = None,
    allow_format_mismatch: bool = False,
    packing: str | None = None,
) -> dict:
    """Evaluate one checkpoint; writes the results JSON (and a run's `task` event) and returns the results.

    `windows`: documents | packed; None = the run's own `eval.windows`, or documents for a plain checkpoint.
    `packing` (packed windows): documents | stream; None = the run's own `data.packing`, or documents."""
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot: must be >= 0 (got {num_fewshot})")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit: must be > 0 (got {limit})")
    if data_dir is None and not tasks:
        raise UserError("eval: nothing to do; give --data DIR (perplexity) and/or --tasks NAMES")
    ckpt, run = _locate(spec)
    info = _run_info(run)
    out_dir = Path(out) if out is not None else run
    if out_dir is None:
        raise UserError(f"checkpoint: {spec} is not a warmstart run, so its results have no home; give --out DIR")
    win = windows or info.get("windows") or "documents"
    if win not in ("documents", "packed"):
        raise UserError(f"--windows: expected documents or packed (got {win!r})")
    pack = packing or info.get("packing") or "documents"
    if pack not in ("documents", "stream"):
        raise UserError(f"--packing: expected documents or stream (got {pack!r})")
    if packing is not None and win != "packed":  # it would change nothing: say so rather than ignore it
        raise UserError(f"--packing {packing}: applies to --windows packed only (document windows score each "
                        "document alone from its start); add --windows packed or drop --packing")
    if data_dir is not None:
        eval_domains(data_dir, domains, say=False, windows=win)  # a bad --data or --domains fails before torch
    import torch

    from warmstart.data.tokenizer import load_tokenizer
    from warmstart.models.build import auto_class
    from warmstart.models.locate import load_failure

    dev = _device(device)
    if seq_len is not None:
        from transformers import AutoConfig

        from warmstart.models.build import check_seq_len

        try:
            config = AutoConfig.from_pretrained(str(ckpt))
        except Exception as e:  # OSError/ValueError for a missing or unreadable config.json
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"checkpoint: cannot read the config of {spec} ({first})") from None
        check_seq_len(config, seq_len, "--seq-len", "give a smaller --seq-len (or leave it out)")
    _check_memory(ckpt, seq_len or info.get("seq_len"), batch_size, dev, data_dir, domains, win,
                  max_tokens or info.get("max_tokens"))
    tok = load_tokenizer(str(ckpt))
    try:
        model = auto_class("causal").from_pretrained(str(ckpt), dtype=torch.float32)
    except Exception as e:  # transformers raises OSError/ValueError/KeyError/UnpicklingError for unusable files
        raise UserError(f"checkpoint: cannot load {spec} as a causal LM ({load_failure(e)})") from None
    model.to(dev).eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False

    result: dict = {"checkpoint": str(ckpt), "run_dir": str(run) if run else None, **info}
    if run is not None:
        result["run_settings"] = {k: info.get(k) for k in ("seq_len", "max_tokens", "windows", "packing")}
    if data_dir is not None:
        from warmstart.models.build import check_seq_len, context_length

        max_pos = context_length(model.config) or 1024
        n = seq_len or info.get("seq_len") or min(int(max_pos), 1024)
        check_seq_len(model.config, n, "--seq-len", "give a smaller --seq-len")
        max_tokens = max_tokens or info.get("max_tokens") or 16384  # a run's own, so eval repeats its number
        per = domain_losses(model, tok, data_dir, domains, n, max_tokens, batch_size, dev, win, allow_format_mismatch,
                            pack)
        result.update({"data": str(data_dir), "seq_len": n, "max_tokens": max_tokens, "windows": win,
                       "packing": pack if win == "packed" else None, "val": per})
        result["val/avg/loss"] = sum(v["loss"] for v in per.values()) / len(per)
    if tasks:
        from warmstart.eval.tasks import run_tasks

        scores = run_tasks(model, tok, tasks, num_fewshot, limit, dev, batch_size=batch_size)
        result.update({"tasks": scores, "num_fewshot": num_fewshot, "limit": limit})

    name = f"eval-step{info['step']:06d}.json" if info.get("step") is not None else "eval.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out_dir / name, result)
    result["json"] = str(out_dir / name)
    if run is not None and tasks:
        from warmstart.runtime.metrics import MetricsLog

        event = {"event": "task", "step": info["step"], "tokens": info["tokens"], "flops": info["flops"]}
        event.update({f"task/{k}": v for k, v in result["tasks"].items()})
        MetricsLog(rundir.metrics_path(run), trackers=[]).write(event)
    return result


def quantity(result: dict) -> str:
    """What the losses are, in words, and which run numbers equal them (a plain checkpoint: a run's step 0 with
    these settings; a run: its own in-loop evaluation)."""
    n, m, win = result["seq_len"], result["max_tokens"], result["windows"]
    if win == "documents":
        what = (f"document windows (each document from its start, at most {n + 1} tokens; the first {m} targets, "
                "or all a domain's validation documents give)")
        same = f"data.seq_len {n}, eval.max_tokens {m}, eval.windows documents"
    else:
        what = f"packed windows of {n + 1} tokens, {result['packing']} packing (the first {m // n or 1} windows)"
        same = f"data.seq_len {n}, eval.max_tokens {m}, eval.windows packed, data.packing {result['packing']}"
    if result.get("run_dir"):
        own = result.get("run_settings") or {}
        mine = {"seq_len": n, "max_tokens": m, "windows": win, "packing": result.get("packing") or own.get("packing")}
        if own and all(own.get(k) == v for k, v in mine.items() if k != "packing" or win == "packed"):
            return f"{what}: the run's own in-loop evaluation"
        return f"{what}: NOT the run's in-loop evaluation (it used {_settings(own)}); its numbers differ"
    return f"{what}; a run's step-0 loss is this number only with {same}"


def _settings(info: dict) -> str:
    s = f"data.seq_len {info.get('seq_len')}, eval.max_tokens {info.get('max_tokens')}, eval.windows {info.get('windows')}"
    return s + (f", data.packing {info.get('packing')}" if info.get("windows") == "packed" else "")


def format_result(result: dict) -> str:
    """The lines `warmstart eval` prints."""
    lines = [
        f"checkpoint {result['checkpoint']}" + (f" (step {result['step']})" if result.get("step") else "")
    ]
    if result.get("val"):
        lines.append(f"  {quantity(result)}")
    for n, v in (result.get("val") or {}).items():
        few = " (all it has: fewer than max_tokens)" if v["tokens"] < result["max_tokens"] else ""
        lines.append(f"  val/{n:<14} loss {v['loss']:.4f}  ppl {v['ppl']:.2f}  ({v['tokens']} tokens{few})")
    for k, v in (result.get("tasks") or {}).items():
        lines.append(f"  task/{k:<24} {v:.4f}")
    lines.append(f"wrote {result['json']}")
    return "\n".join(lines)
