"""`prepare --executor ray` against today's local worker processes, on the same 100+ MB of real text.

Corpus: Python source shipped with the running interpreter and its installed packages (the standard library,
then site-packages; tests left out), cut at top-level definitions into documents of about 2 KB or more,
shuffled with a fixed seed, written as one JSONL file: real code and docstrings, nothing downloaded. Measured
in one run (each the median of --repeats, round-robin), both into a fresh directory, the whole `prepare` call:

  local-wN   executor local, workers=N (worker processes on this machine)
  ray-wN     executor ray, workers=N, a local Ray started by the call itself (its start-up counted), the file
             cut into tasks of --task-mb

Every output file of every run must have the same sha256 (checked; the run fails otherwise).

    python bench/prepare_scale.py [--mb 100] [--workers 2] [--task-mb 16]
                                  [--out bench/results/prepare-scale.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_throughput import split_module  # noqa: E402

SKIP = {"test", "tests", "idlelib", "__pycache__"}


def source_files() -> list[Path]:
    """The standard library's modules, then every installed package's, in a fixed order."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    files = [
        p for p in sorted(lib.rglob("*.py")) if not (SKIP | {"site-packages"}) & set(p.relative_to(lib).parts)
    ]
    files += [p for p in sorted(site.rglob("*.py")) if not SKIP & set(p.relative_to(site).parts)]
    return files


def write_corpus(path: Path, max_mb: float) -> tuple[int, int]:
    """Write at least `max_mb` MB (if the machine has them) of documents to `path`; (documents, bytes)."""
    texts: list[str] = []
    size = 0
    for p in source_files():
        try:
            pieces = split_module(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        texts.extend(pieces)
        size += sum(len(t.encode("utf-8")) for t in pieces)
        if size >= max_mb * 1e6:
            break
    random.Random(0).shuffle(texts)
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return len(texts), size


def digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            out[str(p.relative_to(root))] = h.hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/prepare-scale.json")
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size in MB of UTF-8 text")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--task-mb", type=float, default=16.0, help="input MB per Ray task")
    ap.add_argument(
        "--tokenizer", help="tokenizer dir/json (default: train a byte-level BPE on 8 MB of the corpus)"
    )
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tmp", help="where the corpus and outputs go (default: a temp dir, removed)")
    args = ap.parse_args(argv)

    import ray

    from warmstart.data import prepare
    from warmstart.data.tokenizer_train import train_bpe

    load_at_start = os.getloadavg()[0]
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="ws-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        src = tmp / "corpus.jsonl"
        n_docs, n_bytes = write_corpus(src, args.mb)
        tok_path = args.tokenizer
        if not tok_path:
            tok_path = str(tmp / "tok")
            sample, size = [], 0
            with open(src, encoding="utf-8") as f:
                for line in f:
                    sample.append(json.loads(line)["text"])
                    size += len(line)
                    if size > 8e6:
                        break
            train_bpe(sample, vocab_size=args.vocab_size, out=tok_path)

        w = args.workers
        variants = {
            f"local-w{w}": {"executor": "local"},
            f"ray-w{w}": {"executor": "ray", "task_mb": args.task_mb},
        }
        runs: dict[str, list[float]] = {name: [] for name in variants}
        digests, tokens = {}, set()
        for rep in range(args.repeats):
            for name, extra in variants.items():
                out = tmp / f"out-{name}-{rep}"
                recipe = {"tokenizer": tok_path, "out": str(out), "domains": {"code": [{"path": str(src)}]}}
                t0 = time.perf_counter()
                r = prepare(recipe, progress=False, workers=w, **extra)
                runs[name].append(time.perf_counter() - t0)
                tokens.add(r.domains[0].tokens)
                digests[name] = digest(out)
                shutil.rmtree(out)
        same = len({json.dumps(d, sort_keys=True) for d in digests.values()}) == 1
        assert same and len(tokens) == 1, "the executors wrote different bytes"
        n_tokens = tokens.pop()
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    rows = {
        name: {
            "seconds": statistics.median(ts),
            "runs": [round(t, 2) for t in ts],
            "tokens_per_s": n_tokens / statistics.median(ts),
        }
        for name, ts in runs.items()
    }
    local, ray_row = rows[f"local-w{w}"], rows[f"ray-w{w}"]
    ratio = ray_row["tokens_per_s"] / local["tokens_per_s"]
    import datatrove

    result = {
        "benchmark": "prepare_scale",
        "corpus": {
            "docs": n_docs,
            "bytes": n_bytes,
            "tokens": n_tokens,
            "source": "stdlib + site-packages Python source",
        },
        "workers": w,
        "task_mb": args.task_mb,
        "repeats": args.repeats,
        "identical_output_files": len(next(iter(digests.values()))),
        "ray_vs_local": ratio,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
            "ray": ray.__version__,
            "datatrove": getattr(datatrove, "__version__", "?"),
        },
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# prepare at scale: Ray vs local ({n_docs:,} docs, {n_bytes / 1e6:.1f} MB, {n_tokens:,} tokens; "
        f"{os.cpu_count()} CPUs; {w} workers; {args.repeats} run(s) each)",
        "",
        f"`python bench/prepare_scale.py --mb {args.mb:g} --workers {w} --task-mb {args.task_mb:g}`. "
        f"1-minute load average at start/end: {load_at_start:.1f} / {os.getloadavg()[0]:.1f}. "
        f"Ray {ray.__version__}, "
        "its start-up inside the timed call. Every output file identical across the runs "
        f"({result['identical_output_files']} files, sha256).",
        "",
        "| run | median s | tokens/s | vs local |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        md.append(
            f"| {name} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / local['tokens_per_s']:.2f}x |"
        )
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
