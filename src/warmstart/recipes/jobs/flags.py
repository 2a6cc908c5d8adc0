"""The jobs' command lines: flags <-> recipe keys, one table, so `--write-recipe` writes what the flags meant and a
recipe (`--recipe adapt.yaml`) is validated with the same schema and the same one-line errors naming the flag."""

from __future__ import annotations

import argparse
from pathlib import Path

from warmstart.errors import UserError

# recipe key -> (flag, argparse keyword arguments); the order is --help's
COMMON = {
    "tokens": ("--tokens", {"help": "training budget in tokens, e.g. 65536, 64k (= 64,000), 1.5M"}),
    "out": ("--out", {"help": "the job's directory (re-run the same command to resume)"}),
    "probe_share": ("--probe-share", {"type": float, "help": "at most this share of the run's training FLOPs is "
                                      "spent on the probes (0.1)"}),
    "seed": ("--seed", {"type": int, "help": "data order and initialisation seed (0)"}),
    "lrs": ("--lrs", {"help": "candidate max LRs, comma-separated, at least 3 spanning 10x"}),
    "seq_len": ("--seq-len", {"type": int, "help": "tokens per training sequence (256)"}),
    "batch_tokens": ("--batch-tokens", {"type": int, "help": "tokens per optimizer step (4096)"}),
    "micro_batch_size": ("--micro-batch-size", {"type": int, "help": "sequences per forward pass (8)"}),
    "eval_tokens": ("--eval-tokens", {"type": int, "help": "validation tokens per domain (16384)"}),
    "val_fraction": ("--val-fraction", {"type": float, "help": "share of each domain's documents held out (0.05)"}),
    "alpha": ("--alpha", {"type": float, "help": "level of the paired t-test that drops a probe early (0.05)"}),
    "device": ("--device", {"choices": ["auto", "cpu", "cuda"]}),
    "cpu_threads": ("--cpu-threads", {"help": "torch threads on CPU: a number or auto"}),
    "skip_bad_records": ("--skip-bad-records", {"action": "store_true", "default": None,
                                                "help": "skip (and count) records that are not text instead of "
                                                        "stopping at the first"}),
}
ADAPT = {
    "max_forgetting": ("--max-forgetting", {"type": float, "help": "the most the old text's loss may rise, in nats "
                                            "(0.05; needs --old)"}),
    "replay": ("--replay", {"help": "candidate replay shares of the old text, comma-separated (0,0.05,0.25)"}),
    "horizon_exponent": ("--horizon-exponent", {"type": float, "help": "beta of the probes' horizon correction: the "
                                                "probes' best max LR x (probe steps / run steps)^beta (0.12; 0: none)"}),
}
DERIVE = {
    "layers": ("--layers", {"type": int, "help": "blocks of the smaller model"}),
    "sample_tokens": ("--sample-tokens", {"type": int, "help": "train tokens the block search measures on (16384)"}),
    "distill": ("--distill", {"action": "store_true", "default": None,
                              "help": "train against the checkpoint's next-token distribution"}),
    "until_reference": ("--until-reference", {"action": "store_true", "default": None,
                                              "help": "Inheritune v2: grow the model until it matches the checkpoint"}),
}
LISTS = {"lrs", "replay"}


def add_flags(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("checkpoint", nargs="?", help="a HF checkpoint dir, a warmstart run dir, or a hub name")
    article = "an" if kind == "adapt" else "a"
    p.add_argument("--recipe", help=f"{article} {kind} recipe (YAML, as --write-recipe writes it); flags override it")
    p.add_argument("--text", action="append", metavar="NAME=PATH[,PATH...]",
                   help="new text: a domain name and its files or directories (repeatable)")
    if kind == "adapt":
        p.add_argument("--old", action="append", metavar="NAME=PATH[,PATH...]",
                       help="text the model must not forget: its general data, or a proxy of it (repeatable)")
    for key, (flag, kw) in {**COMMON, **(ADAPT if kind == "adapt" else DERIVE)}.items():
        p.add_argument(flag, dest=key, **kw)
    p.add_argument("--baseline", metavar="RUN",
                   help="a finished run directory the job's run replaces (the same text from scratch, or with a fixed "
                        "recipe): the report measures compute saved against it (not part of the job's settings)")
    p.add_argument("--write-recipe", dest="write_recipe", metavar="FILE.yaml",
                   help="write the settings the flags mean into this recipe and stop (run it with --recipe)")


def parse_domains(items: list[str] | None, flag: str) -> dict[str, list[str]] | None:
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, paths = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"{flag} {item}: expected NAME=PATH[,PATH...], e.g. {flag} code=src/")
        if name in out:
            raise UserError(f"{flag} {name}: given twice; list all its paths in one {flag} NAME=P1,P2")
        out[name.strip()] = [p.strip() for p in paths.split(",")]
    return out


def parse_tokens(text: str) -> int:
    s = str(text).strip().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}.get(s[-1:].lower(), 1)
    try:
        value = float(s[:-1] if mult != 1 else s) * mult
    except ValueError:
        raise UserError(f"--tokens: expected a token count like 65536, 64k or 1.5M (got {text!r})") from None
    if not 0 < value < 1e18 or value != int(value):
        raise UserError(f"--tokens: must be a whole number > 0 (got {text!r})")
    return int(value)


def parse_list(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text}: expected comma-separated numbers, e.g. {flag} 1e-4,3e-4,1e-3") from None


def job_config(args: argparse.Namespace, kind: str):
    """The validated AdaptConfig / DeriveConfig of a command line (its --recipe, then its flags)."""
    from warmstart.config import AdaptConfig, DeriveConfig, read_yaml, validate

    model = AdaptConfig if kind == "adapt" else DeriveConfig
    table = {**COMMON, **(ADAPT if kind == "adapt" else DERIVE)}
    tree = read_yaml(args.recipe) if args.recipe else {}
    if args.checkpoint is not None:
        tree["checkpoint"] = args.checkpoint
    for key, flag in (("text", "--text"), ("old", "--old")):
        given = parse_domains(getattr(args, key, None), flag)
        if given is not None:
            tree[key] = given
    for key, (flag, _) in table.items():
        value = getattr(args, key, None)
        if value is None:
            continue
        if key == "tokens":
            value = parse_tokens(value)
        elif key in LISTS:
            value = parse_list(value, flag)
        elif key == "cpu_threads":
            value = value if value == "auto" else _int(value, flag)
        tree[key] = value
    names = {k: f for k, (f, _) in table.items()} | {"checkpoint": "CHECKPOINT", "text": "--text", "old": "--old"}
    missing = [names[k] for k in ("checkpoint", "text", "tokens", "out") if k not in tree]
    if missing:
        raise UserError(f"{kind}: give {', '.join(missing)} (or a --recipe that has them); see warmstart {kind} --help")
    return validate(model, tree, args.recipe or kind, names=names)


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{flag}: expected a number or auto (got {text!r})") from None


def check_baseline(path: str | None, out: str) -> Path | None:
    """The --baseline run directory, checked before the job writes anything: a finished warmstart run (its
    recipe's last step in summary.json with a final evaluation, final/ there, the evaluations in metrics.jsonl the
    report reads), not the job's own run; else one line."""
    if path is None:
        return None
    from warmstart.config import Recipe
    from warmstart.runtime import rundir

    run = Path(path).expanduser()
    if not run.is_dir():
        raise UserError(f"--baseline {path}: not a directory; give the run directory the job's run replaces")
    run = run.resolve()
    if run == Path(out).expanduser().resolve() or Path(out).expanduser().resolve() in run.parents:
        raise UserError(f"--baseline {path}: inside the job's own directory (--out); give a run the job's run "
                        "replaces, such as the same text from scratch or with a fixed recipe")
    cfg = rundir.read_config(run)
    why = "no config.yaml" if cfg is None else None
    if why is None:
        try:
            why = rundir.unfinished(run, Recipe.model_validate(cfg))
        except ValueError:
            why = "its config.yaml is not a train recipe"
    if why is None and not rundir.metrics_path(run).is_file():
        why = f"no {rundir.METRICS}"
    if why is None and not (rundir.read_summary(run) or {}).get("final_eval"):
        why = "no final evaluation"
    if why is not None:
        raise UserError(f"--baseline {path}: not a finished warmstart run with evaluations ({why}); finish it, or "
                        "give another run directory")
    return run


def write_recipe(cfg, path: str | Path) -> None:
    import yaml

    from warmstart import atomic
    from warmstart.outputs import check_out_file
    from warmstart.recipes.jobs.common import with_absolute_paths

    check_out_file(path, "--write-recipe")
    tree = with_absolute_paths(cfg).model_dump(mode="json", by_alias=True)
    atomic.write_text(path, yaml.safe_dump(tree, sort_keys=False, allow_unicode=True))
