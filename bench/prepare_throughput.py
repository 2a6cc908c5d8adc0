"""How close `warmstart prepare` gets to the tokenizer's own speed, and what a second worker buys.

Corpus: the running Python's standard-library modules (tests and IDLE left out), cut at top-level definitions
into documents of about 2 KB or more (web-page sized), plus the `pydoc_data` topic texts: real code and prose
that needs no download, written as JSONL. Measured in one run, each the median of --repeats (round-robin):

  baseline          tok(texts, add_special_tokens=False) on every text at once, texts already in memory (the
                    tokenizer's own batch encoding; it may use Rust threads on every core)
  baseline-1thread  the same with TOKENIZERS_PARALLELISM=false (one core)
  prepare-wN        the whole `prepare` call with workers=N into a fresh directory: tokenizer load, source
                    fingerprint, counting pass, tokenizing, writing

    python bench/prepare_throughput.py [--mb 12] [--tokenizer DIR] [--out bench/results/prepare_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path


def split_module(text: str, min_chars: int = 2000) -> list[str]:
    """A module as documents of web-page size: cut before top-level definitions once a piece has min_chars."""
    pieces, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        if size >= min_chars and line.startswith(("def ", "class ", "async def ", "@")):
            pieces.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
    if cur:
        pieces.append("".join(cur))
    return pieces


def corpus(max_mb: float) -> list[str]:
    """Stdlib modules (split into ~2 KB+ documents) and pydoc topics, shuffled with a fixed seed."""
    from pydoc_data.topics import topics

    lib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "__pycache__"}
    files = [p for p in sorted(lib.rglob("*.py")) if not skip & set(p.relative_to(lib).parts)]
    texts = [topics[k] for k in sorted(topics)]
    for p in files:
        try:
            texts.extend(split_module(p.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    random.Random(0).shuffle(texts)
    out, size = [], 0
    for t in texts:
        if size >= max_mb * 1e6:
            break
        out.append(t)
        size += len(t.encode("utf-8"))
    return out


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its finished children (prepare's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def versions() -> dict:
    import numpy
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/prepare_throughput.json")
    ap.add_argument("--mb", type=float, default=12.0, help="corpus size in MB of UTF-8 text")
    ap.add_argument("--tokenizer", help="tokenizer dir/json (default: train a byte-level BPE on the corpus)")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--batch-docs", type=int, default=256, help="documents per tokenization task (as prepare)"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)

    from warmstart.data import prepare
    from warmstart.data.tokenizer import load_tokenizer
    from warmstart.data.tokenizer_train import train_bpe

    load_at_start = os.getloadavg()[0]
    texts = corpus(args.mb)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as tmp:
        tmp = Path(tmp)
        src = tmp / "corpus.jsonl"
        with open(src, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        if args.tokenizer:
            tok_path = args.tokenizer
        else:
            tok_path = str(tmp / "tok")
            train_bpe(texts[: max(1, len(texts) // 4)], vocab_size=args.vocab_size, out=tok_path)

        def baseline(threads: bool):
            # A freshly loaded tokenizer each time, as prepare loads its own: BPE's word cache starts cold too.
            tok = load_tokenizer(tok_path)
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads else "false"
            try:
                t0, c0 = time.perf_counter(), cpu_seconds()
                ids = tok(texts, add_special_tokens=False)["input_ids"]
                n = sum(map(len, ids)) + len(texts)  # + one EOS per document, as prepare writes
                return time.perf_counter() - t0, cpu_seconds() - c0, n
            finally:
                if saved is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved

        def run_prepare(w: int, rep: int):
            out = tmp / f"out-w{w}-{rep}"
            recipe = {"tokenizer": tok_path, "out": str(out), "domains": {"stdlib": [{"path": str(src)}]}}
            t0, c0 = time.perf_counter(), cpu_seconds()
            r = prepare(recipe, progress=False, workers=w, batch_docs=args.batch_docs)
            return time.perf_counter() - t0, cpu_seconds() - c0, r.domains[0].tokens

        variants = {"baseline": lambda rep: baseline(True), "baseline-1thread": lambda rep: baseline(False)}
        for w in args.workers:
            variants[f"prepare-w{w}"] = lambda rep, w=w: run_prepare(w, rep)
        runs: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        counts = set()
        # Round-robin, so a busy moment on the machine hits every variant alike.
        for rep in range(args.repeats):
            for name, fn in variants.items():
                seconds, cpu_s, n = fn(rep)
                runs[name].append(seconds)
                cpu[name].append(cpu_s)
                counts.add(n)
        assert len(counts) == 1, counts  # prepare wrote exactly the baseline's tokens (EOS included)
        n_tokens = counts.pop()
        rows = {
            name: {
                "seconds": statistics.median(ts),
                "best_seconds": min(ts),
                "runs": [round(t, 3) for t in ts],
                "cpu_seconds": statistics.median(cpu[name]),
            }
            for name, ts in runs.items()
        }

    # Median: what a run typically got. Best: the least disturbed run, closest to the code's own speed on a
    # shared machine (other processes only ever make a run slower).
    base, base_best = rows["baseline"]["seconds"], rows["baseline"]["best_seconds"]
    for r in rows.values():
        r["tokens_per_s"] = n_tokens / r["seconds"]
        r["vs_baseline"] = base / r["seconds"]
        r["best_tokens_per_s"] = n_tokens / r["best_seconds"]
        r["best_vs_baseline"] = base_best / r["best_seconds"]
    result = {
        "benchmark": "prepare_throughput",
        "corpus": {
            "docs": len(texts),
            "bytes": n_bytes,
            "tokens": n_tokens,
            "source": "stdlib + pydoc topics",
        },
        "tokenizer": tok_path
        if args.tokenizer
        else f"byte-level BPE {args.vocab_size} trained on 1/4 of corpus",
        "batch_docs": args.batch_docs,
        "repeats": args.repeats,
        "tokenizers_parallelism_env": os.environ.get("TOKENIZERS_PARALLELISM"),
        "machine": {
            "cpu_count": os.cpu_count(),
            # Other work on the machine: with a load above the CPU count, the runs share the cores.
            "load_average_1min": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
            "platform": platform.platform(),
            **versions(),
        },
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# prepare throughput ({len(texts)} docs, {n_bytes / 1e6:.1f} MB, {n_tokens:,} tokens; "
        f"{os.cpu_count()} CPUs; {args.repeats} runs each, round-robin)",
        "",
        f"1-minute load average at start/end: {load_at_start:.1f} / {os.getloadavg()[0]:.1f} (other work on the "
        "machine shares the cores when it exceeds the CPU count). CPU seconds: this process and its workers.",
        "",
        "| run | median s | tokens/s | vs baseline | best s | best tokens/s | best vs baseline | CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        md.append(
            f"| {name} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} | {r['vs_baseline']:.2f}x "
            f"| {r['best_seconds']:.2f} | {r['best_tokens_per_s']:,.0f} | {r['best_vs_baseline']:.2f}x "
            f"| {r['cpu_seconds']:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
