"""The `warmstart` command: parse arguments, load the recipe, call one function. No logic lives here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from warmstart.errors import UserError


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set schedule.max_lr=3e-4 (repeatable)",
    )


def _flag_overrides(args: argparse.Namespace, names: list[str]) -> list[str]:
    """Turn explicit command-line flags into --set overrides so both paths are validated alike."""
    out = []
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value is not False:
            out.append(f"{name}={'true' if value is True else value}")
    return out


# ----------------------------------------------------------------------------------------------- commands
def cmd_prepare(args: argparse.Namespace) -> int:
    from warmstart.config import PrepareConfig, load
    from warmstart.data import prepare

    flags = _flag_overrides(args, ["workers", "overwrite", "skip_bad_records", "val_docs", "val_fraction"])
    cfg = load(PrepareConfig, args.recipe, flags + args.overrides)
    result = prepare(cfg, progress=not args.quiet)
    print(result.summary())
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from warmstart.config import PrepareConfig, load
    from warmstart.data.tokenizer_train import train_tokenizer

    base = {"tokenizer": "-", "out": "-"}
    cfg = load(PrepareConfig, None, args.overrides, base={**base, **_read_sources(args.recipe)})
    out = train_tokenizer(cfg.domains, vocab_size=args.vocab_size, out=Path(args.out))
    print(f"wrote tokenizer ({args.vocab_size} tokens) to {out}")
    return 0


def _read_sources(path: str) -> dict:
    from warmstart.config import read_yaml

    tree = read_yaml(path)
    if "domains" not in tree:
        raise UserError(f"{path}: no 'domains' section (a prepare recipe lists the domains to learn from)")
    return {"domains": tree["domains"]}


def cmd_corpus_demo(args: argparse.Namespace) -> int:
    from warmstart.data.demo_corpus import write_demo_corpus

    info = write_demo_corpus(Path(args.out), overwrite=args.overwrite)
    for name, d in info["domains"].items():
        print(f"  {name:<12} {d['docs']:>6} docs {d['bytes'] / 1e6:8.2f} MB  {d['file']}")
    print(f"wrote demo corpus to {args.out} (prepare recipe: {info['recipe']})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from warmstart.config import load_recipe
    from warmstart.train.loop import train

    recipe = load_recipe(args.recipe, args.overrides)
    result = train(recipe, resume=args.resume, allow_config_change=args.allow_config_change)
    return result.exit_code


def cmd_inherit(args: argparse.Namespace) -> int:
    from warmstart.config import InheritConfig, load
    from warmstart.models.surgery import inherit

    base = {"from": args.ref, "layers": args.layers, "blocks": args.blocks, "out": args.out,
            "overwrite": args.overwrite}
    cfg = load(InheritConfig, None, [], base={k: v for k, v in base.items() if v is not None})
    res = inherit(cfg.from_, cfg.out, layers=cfg.layers, blocks=cfg.blocks, overwrite=cfg.overwrite)
    print(f"wrote {res.model_class} with blocks {res.blocks} of {res.ref_layers} "
          f"({res.params / 1e6:.2f}M of {res.ref_params / 1e6:.2f}M params) to {res.out}")
    return 0


def cmd_grow(args: argparse.Namespace) -> int:
    from warmstart.config import GrowRecipe, load
    from warmstart.recipes.inheritune import grow

    result = grow(load(GrowRecipe, args.recipe, args.overrides))
    return result.exit_code


def cmd_quickstart(args: argparse.Namespace) -> int:
    from warmstart.recipes.quickstart import run_quickstart

    run_quickstart(Path(args.out), fresh=args.fresh)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from warmstart.models.presets import PRESETS

    for name, (family, sizes) in PRESETS.items():
        print(f"{name:<16} {family:<9} {sizes}")
    return 0


# ----------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="warmstart",
        description="Compute-efficient LM pre-training that starts from what you already have.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quickstart", help="the whole story on the built-in corpus, on a laptop CPU")
    q.add_argument("--out", default="quickstart", help="working directory (default: ./quickstart)")
    q.add_argument("--fresh", action="store_true", help="delete the quickstart's previous runs first")
    q.set_defaults(func=cmd_quickstart)

    pp = sub.add_parser("prepare", help="text -> tokenized train/val token shards per domain")
    pp.add_argument("recipe", help="a prepare recipe (YAML: tokenizer, out, domains)")
    pp.add_argument("--workers", type=int, help="tokenizer processes")
    pp.add_argument("--val-docs", dest="val_docs", type=int, help="validation documents per domain")
    pp.add_argument("--val-fraction", dest="val_fraction", type=float, help="validation share of documents")
    pp.add_argument("--overwrite", action="store_true", help="rebuild domains whose inputs changed")
    pp.add_argument("--skip-bad-records", dest="skip_bad_records", action="store_true")
    pp.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_set(pp)
    pp.set_defaults(func=cmd_prepare)

    tk = sub.add_parser("tokenizer", help="tokenizer tools")
    tks = tk.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    tt = tks.add_parser("train", help="train a byte-level BPE on the domains of a prepare recipe")
    tt.add_argument("recipe", help="a prepare recipe; its domains are the training text")
    tt.add_argument("--vocab-size", dest="vocab_size", type=int, default=2048)
    tt.add_argument("--out", required=True, help="directory for the tokenizer (AutoTokenizer-loadable)")
    _add_set(tt)
    tt.set_defaults(func=cmd_tokenizer_train)

    co = sub.add_parser("corpus", help="built-in corpora")
    cos = co.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    cd = cos.add_parser("demo", help="write the built-in multi-domain demo corpus (no downloads)")
    cd.add_argument("out", help="output directory")
    cd.add_argument("--overwrite", action="store_true")
    cd.set_defaults(func=cmd_corpus_demo)

    tr = sub.add_parser("train", help="pretrain / continue / re-warm from one recipe (also under torchrun)")
    tr.add_argument("recipe", help="a train recipe (YAML)")
    tr.add_argument("--resume", action="store_true", help="continue this run from its newest checkpoint")
    tr.add_argument(
        "--allow-config-change",
        dest="allow_config_change",
        action="store_true",
        help="let --resume continue with a changed data mixture or schedule",
    )
    _add_set(tr)
    tr.set_defaults(func=cmd_train)

    ih = sub.add_parser("inherit", help="Inheritune: a smaller model from a reference's first N blocks")
    ih.add_argument("--from", dest="ref", required=True, help="reference: HF checkpoint dir, hub name or run dir")
    ihg = ih.add_mutually_exclusive_group(required=True)
    ihg.add_argument("--layers", type=int, help="inherit the first N blocks (1..k-1)")
    ihg.add_argument("--blocks", help="inherit these blocks in this order, e.g. 0-5,8")
    ih.add_argument("--out", required=True, help="output directory (a plain Hugging Face checkpoint)")
    ih.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    ih.set_defaults(func=cmd_inherit)

    gr = sub.add_parser("grow", help="Inheritune v2: inherit k/2 blocks, +2 per round until the reference's loss")
    gr.add_argument("recipe", help="a grow recipe (YAML: reference, grow, data, optim, schedule, train, eval)")
    _add_set(gr)
    gr.set_defaults(func=cmd_grow)

    pr = sub.add_parser("presets", help="list the tiny model presets")
    pr.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("WARMSTART_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        if debug:
            raise
        print(f"warmstart: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("warmstart: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
