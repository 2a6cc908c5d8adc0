"""Real text that is not in the demo corpus and is a shift for SmolLM2, built reproducibly from Debian packages.

    python bench/real_corpus.py --work /tmp/warmstart-real     # writes WORK/text/*.jsonl and WORK/corpus.json

Domains (every document is one file, or a part of one split at blank lines to at most `max_chars` characters):
- `man`: the roff sources of the Linux programmer's manual, sections 2 and 3 (package `manpages-dev`);
- `docs`: Debian Policy (plain-text chapters, `debian-policy`) and the GNU coding standards and maintainer
  information (Info files, `gnu-standards`);
- `legal`: licence texts: /usr/share/common-licenses of `base-files` and the machine-readable copyright files of
  every package above;
- `prose`, `code`: text like SmolLM2's own pre-training data (an upstream-like domain for replay and mixtures): the
  Python language reference topics and standard-library source of the running interpreter (bench/smollm2.py).

The packages are fetched with `apt-get download` (the versions the configured mirror has; run `apt-get update`
once first) and unpacked with `dpkg -x`; their exact names and versions, and the count of documents and
characters of each domain, go into WORK/corpus.json. A second run reuses the downloaded .deb files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2 import real_texts, write_jsonl  # noqa: E402

PACKAGES = ("manpages-dev", "debian-policy", "gnu-standards", "base-files")


def fetch(work: Path) -> dict[str, dict]:
    """Download and unpack PACKAGES into WORK/debs; {package: {version, deb, root}}."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    out = {}
    for pkg in PACKAGES:
        have = sorted(debs.glob(f"{pkg}_*.deb"))
        if not have:
            subprocess.run(["apt-get", "download", "-q", pkg], cwd=debs, check=True)
            have = sorted(debs.glob(f"{pkg}_*.deb"))
        deb = have[-1]
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        root = debs / f"x-{pkg}"
        if not root.is_dir():
            tmp = debs / f"x-{pkg}.tmp"
            subprocess.run(["rm", "-rf", str(tmp)], check=True)
            subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
            tmp.rename(root)
        out[pkg] = {"version": version, "deb": deb.name, "root": root}
    return out


def _read(p: Path) -> str:
    raw = p.read_bytes()
    if p.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def split_doc(text: str, max_chars: int) -> list[str]:
    """`text` cut at blank lines into parts of at most `max_chars` characters (a longer paragraph is cut at its
    last line break before the limit, or at the limit); parts shorter than min(200, max_chars / 2) are dropped."""
    paras = []
    for para in text.split("\n\n"):
        while len(para) > max_chars:
            cut = para.rfind("\n", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            paras.append(para[:cut])
            para = para[cut:].lstrip("\n")
        paras.append(para)
    parts, cur = [], ""
    for para in paras:
        if cur and len(cur) + len(para) + 2 > max_chars:
            parts.append(cur)
            cur = para
        else:
            cur = f"{cur}\n\n{para}" if cur else para
    if cur.strip():
        parts.append(cur)
    return [p for p in parts if len(p.strip()) >= min(200, max_chars // 2)]


def domain_texts(pkgs: dict[str, dict], max_chars: int) -> dict[str, list[str]]:
    """{man, docs, legal}: documents in sorted (reproducible) file order."""
    man_root = pkgs["manpages-dev"]["root"] / "usr/share/man"
    man = [t for sec in ("man2", "man3") for p in sorted((man_root / sec).glob("*.gz"))
           if not _read(p).startswith(".so ")  # a one-line alias of another page
           for t in split_doc(_read(p), max_chars)]
    policy = sorted((pkgs["debian-policy"]["root"] / "usr/share/doc/debian-policy").rglob("*.txt"))
    info = sorted((pkgs["gnu-standards"]["root"] / "usr/share/info").glob("*.gz"))
    docs = [t for p in [*policy, *info] for t in split_doc(_read(p), max_chars)]
    licences = sorted(p for p in (pkgs["base-files"]["root"] / "usr/share/common-licenses").iterdir() if p.is_file())
    copyrights = sorted(p for info in pkgs.values() for p in (info["root"] / "usr/share/doc").glob("*/copyright"))
    legal = [t for p in [*licences, *copyrights] for t in split_doc(_read(p), max_chars)]
    return {"man": man, "docs": docs, "legal": legal}


def build(work: Path, max_docs: int | None = None, max_chars: int = 1500) -> dict:
    """Write WORK/text/{man,docs,legal,prose,code}.jsonl (each capped at `max_docs` documents, taken evenly over
    the sorted list) and WORK/corpus.json; returns corpus.json's content (paths under `sources`)."""
    pkgs = fetch(work)
    texts = {**domain_texts(pkgs, max_chars),
             **{k: [p for t in v for p in split_doc(t, max_chars)] for k, v in real_texts().items()}}
    sources, counts = {}, {}
    for dom, docs in texts.items():
        if max_docs is not None and len(docs) > max_docs:
            stride = len(docs) / max_docs
            docs = [docs[int(i * stride)] for i in range(max_docs)]
        sources[dom] = str(write_jsonl(work / "text" / f"{dom}.jsonl", docs))
        counts[dom] = {"docs": len(docs), "chars": sum(len(d) for d in docs)}
    meta = {
        "packages": {p: {"version": v["version"], "deb": v["deb"]} for p, v in pkgs.items()},
        "python": sys.version.split()[0],
        "max_docs": max_docs,
        "max_chars": max_chars,
        "domains": counts,
        "sources": sources,
    }
    (work / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/warmstart-real"))
    p.add_argument("--max-docs", dest="max_docs", type=int, default=None)
    p.add_argument("--max-chars", dest="max_chars", type=int, default=1500)
    args = p.parse_args()
    meta = build(args.work, args.max_docs, args.max_chars)
    print(json.dumps({k: meta[k] for k in ("packages", "domains")}, indent=2))


if __name__ == "__main__":
    main()
