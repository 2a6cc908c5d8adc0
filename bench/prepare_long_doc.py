"""Peak memory of `warmstart prepare` on one huge document against the same text as many documents.

Corpus: the `pydoc_data` topic texts and standard-library modules (bench/smollm2.py `real_texts`), joined and
repeated up to --mb MB. Written twice as JSONL: one document, and the same text cut into --docs documents (at
line ends). Each is prepared by its own `python -m warmstart prepare` under `/usr/bin/time -v` (workers: 1), and
its "Maximum resident set size" is read. Then, in a fresh process, the one document's prepared tokens are
compared with the tokenizer's encoding of the whole text at once (what prepare wrote before it encoded long
documents in pieces): they must be identical.

    python bench/prepare_long_doc.py [--mb 20] [--docs 100] [--tokenizer /work/cache/smollm2]
        [--out bench/results/prepare_long_doc.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smollm2 import real_texts  # noqa: E402


def corpus(mb: float) -> str:
    texts = real_texts()
    base = "\n\n".join(texts["prose"] + texts["code"])
    want = int(mb * 1e6)
    return (base * (want // len(base) + 1))[:want]


def cut(text: str, n: int) -> list[str]:
    """`text` as `n` documents of about equal size, each ending at a line end."""
    out, start = [], 0
    for i in range(1, n):
        end = text.find("\n", len(text) * i // n)
        end = len(text) if end < 0 else end + 1
        if end > start:
            out.append(text[start:end])
            start = end
    out.append(text[start:])
    return [t for t in out if t]


def peak_rss_mb(cmd: list[str], env: dict) -> tuple[float, str]:
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return kb / 1024, proc.stderr


CHECK = """
import sys, numpy as np
from warmstart.data.doc_format import encode_texts
from warmstart.data.shards import open_data_dir
from warmstart.data.tokenizer import load_tokenizer
tok = load_tokenizer(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
dom = open_data_dir(sys.argv[3])["one"]
got = np.asarray(dom.tokens("train"))
fmt = dom.index["document"]
whole = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
want = np.asarray([*fmt["prefix"], *whole, *fmt["suffix"]])
print(len(got), len(want), bool(len(got) == len(want) and (got == want).all()))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--tokenizer", default="/work/cache/smollm2")
    ap.add_argument("--out", default="bench/results/prepare_long_doc.json")
    args = ap.parse_args()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    text = corpus(args.mb)
    result: dict = {
        "command": "python " + " ".join(sys.argv),
        "chars": len(text),
        "tokenizer": args.tokenizer,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "whole.txt").write_text(text, encoding="utf-8")
        docs = {"one": [text], "many": cut(text, args.docs)}
        for name, texts in docs.items():
            src = root / f"{name}.jsonl"
            src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
            recipe = root / f"{name}.yaml"
            recipe.write_text(
                json.dumps(
                    {
                        "tokenizer": args.tokenizer,
                        "out": str(root / f"out-{name}"),
                        "val_docs": 0,
                        "workers": 1,
                        "domains": {name: [{"path": str(src)}]},
                    }
                )
            )
            mb, _ = peak_rss_mb([sys.executable, "-m", "warmstart", "prepare", str(recipe)], env)
            result[name] = {"documents": len(texts), "peak_rss_mb": round(mb, 1)}
            print(f"{name}: {len(texts)} document(s), peak RSS {mb:.0f} MB", flush=True)
        check = subprocess.run(
            [sys.executable, "-c", CHECK, args.tokenizer, str(root / "whole.txt"), str(root / "out-one")],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        n_got, n_want, same = check.stdout.split()
        result["one"]["tokens"] = int(n_got)
        result["identical_to_whole_encoding"] = same == "True" and n_got == n_want
        print(f"one document: {n_got} tokens written, {n_want} from encoding it whole; identical: {same}")
    result["ratio_one_over_many"] = round(result["one"]["peak_rss_mb"] / result["many"]["peak_rss_mb"], 2)
    print(f"peak RSS one/many: {result['ratio_one_over_many']}x")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
