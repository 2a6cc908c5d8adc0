"""The built-in demo corpus: real text that every CPython installation carries, so demos need no downloads.

Three domains with a real distribution shift between them, one JSONL file each (`{"text": ...}` per line):

    prose       the language & library reference in `pydoc_data.topics` (what `help('if')` shows):
                English technical prose with reST-style headings, grammar rules and examples
    code        standard-library Python source with docstrings removed (comments kept), split at
                top-level definitions into documents of at most MAX_DOC_BYTES
    docstrings  the module/class/function docstrings of *other* standard-library modules, one
                document per module (split the same way), so no text is shared with `code`

Which module feeds `code` and which feeds `docstrings` is fixed by a hash of its own path (about 1 in 3 goes
to `code`), and each domain takes whole modules (topics) in a hash order of their paths until the next one
would overflow its byte budget, then writes them in path order. So a stdlib that lacks some module changes
little else (distributions split out e.g. tkinter or idlelib, which are skipped here for that reason). The
output is byte-identical for a given Python installation; distributions that patch stdlib files, or another
Python version, give slightly different text. Exact repeats within a domain are dropped.

Beside the JSONL files the directory holds `corpus.json` (per domain: docs, bytes, file, sha256) and
`prepare.yaml`, a ready `warmstart prepare` recipe with VAL_DOCS validation documents per domain. Its paths
are OUT-relative paths *as OUT was given* (e.g. `demo/prose.jsonl` for `warmstart corpus demo demo`), so the
recipe works when run from the same working directory; an absolute OUT gives absolute paths.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import yaml

from warmstart.atomic import build_dir
from warmstart.errors import UserError

FORMAT = "warmstart-demo-corpus-v1"
DOMAINS = ("prose", "code", "docstrings")
BUDGET_BYTES = {"prose": 1_500_000, "code": 1_500_000, "docstrings": 1_500_000}  # JSONL bytes per domain
MAX_DOC_BYTES = 16_000  # UTF-8 bytes of one document's text; longer sources are split
VAL_DOCS = 8  # validation documents per domain in the prepare recipe
CODE_SHARE = 3  # one module in CODE_SHARE goes to `code`, the rest to `docstrings`

# Stdlib parts never used: tests, third-party packages, build-specific files, pieces that distributions ship
# as separate packages (so their absence elsewhere does not matter), and the topics file the prose comes from.
_SKIP_TOP = {
    "site-packages",
    "dist-packages",
    "lib-dynload",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "distutils",
    "ensurepip",
    "pydoc_data",
    "venv",
    "__phello__",
}
_SKIP_ANY = {"test", "tests", "idle_test", "__pycache__"}
_SKIP_FILES = {
    "turtle.py",
    "sitecustomize.py",
    "usercustomize.py",
    "_distutils_system_mod.py",
    "__hello__.py",
}

_DOC_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


# ----------------------------------------------------------------------------------------------- sources
def _key(rel: str, salt: str = "") -> str:
    """A stable pseudo-random key of a path: spreads a byte budget across the whole stdlib."""
    return hashlib.sha256(f"{salt}{rel}".encode()).hexdigest()


def _is_code_module(rel: str) -> bool:
    return int(_key(rel, "split:")[:8], 16) % CODE_SHARE == 0


def stdlib_modules(stdlib: Path | None = None) -> list[tuple[str, str]]:
    """(relative path, source) of the usable stdlib .py files, sorted by path; non-UTF-8 files skipped."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        top = here == root
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _SKIP_ANY and not (top and (d in _SKIP_TOP or d.startswith("config-")))
        )
        for name in sorted(filenames):
            if not name.endswith(".py") or name in _SKIP_FILES or name.startswith("_sysconfigdata"):
                continue
            path = here / name
            if path.is_symlink():
                continue
            try:
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if "with gencodec.py" in text[:1000]:  # generated codec tables: data, not code
                continue
            out.append((path.relative_to(root).as_posix(), text))
    out.sort()
    return out


# ----------------------------------------------------------------------------------------------- splitting
def _nbytes(s: str) -> int:
    return len(s.encode("utf-8"))


def _hard_split(piece: str, limit: int) -> Iterator[str]:
    """Split at line ends, and a line longer than `limit` bytes at character boundaries."""
    for line in piece.splitlines(keepends=True):
        while _nbytes(line) > limit:
            cut = limit
            while _nbytes(line[:cut]) > limit:
                cut -= 1
            yield line[:cut]
            line = line[cut:]
        yield line


def pack(pieces: list[str], limit: int = MAX_DOC_BYTES) -> list[str]:
    """Concatenate consecutive pieces into documents of at most `limit` UTF-8 bytes (blank ones dropped)."""
    docs: list[str] = []
    cur: list[str] = []
    size = 0
    for piece in pieces:
        parts = [piece] if _nbytes(piece) <= limit else list(_hard_split(piece, limit))
        for part in parts:
            n = _nbytes(part)
            if cur and size + n > limit:
                docs.append("".join(cur))
                cur, size = [], 0
            cur.append(part)
            size += n
    if cur:
        docs.append("".join(cur))
    return [d.strip("\n") for d in docs if d.strip()]


def split_paragraphs(text: str, limit: int = MAX_DOC_BYTES) -> list[str]:
    """Split prose at blank lines into documents of at most `limit` bytes."""
    paras = text.split("\n\n")
    pieces = [p + "\n\n" for p in paras[:-1]] + [paras[-1]]
    return pack(pieces, limit)


# ----------------------------------------------------------------------------------------------- domains
def _docstring_node(owner: ast.AST) -> ast.Expr | None:
    body = getattr(owner, "body", None)
    if body and isinstance(body[0], ast.Expr):
        value = body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return body[0]
    return None


def _owners(tree: ast.Module) -> Iterator[ast.AST]:
    """The module and every class/function in it, in source order (statements only: faster than ast.walk)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, _DOC_OWNERS):
            yield node
        children = [
            c
            for field in ("body", "orelse", "finalbody", "handlers", "cases")
            for c in getattr(node, field, None) or []
            if isinstance(c, ast.AST)
        ]
        stack.extend(reversed(children))


def code_documents(source: str, tree: ast.Module, limit: int = MAX_DOC_BYTES) -> list[str]:
    """The module's source without docstrings, split at top-level statements (and class members)."""
    lines = source.splitlines(keepends=True)
    blines = [ln.encode("utf-8") for ln in lines]
    keep = [True] * len(lines)
    replace: dict[int, str] = {}
    for owner in _owners(tree):
        doc = _docstring_node(owner)
        if doc is None or doc.end_lineno is None or doc.end_col_offset is None:
            continue
        first, last = doc.lineno - 1, doc.end_lineno - 1
        # only a docstring alone on its lines (col offsets are UTF-8 byte offsets)
        if blines[first][: doc.col_offset].strip() or blines[last][doc.end_col_offset :].strip():
            continue
        for i in range(first, last + 1):
            keep[i] = False
        if len(owner.body) == 1 and not isinstance(owner, ast.Module):  # keep the body non-empty
            indent = blines[first][: doc.col_offset].decode("utf-8")
            replace[first] = f"{indent}pass\n"

    # split points: top-level statements and the members of top-level classes, each taking along the
    # comments and blank lines right above it
    starts: set[int] = set()
    for stmts in [tree.body] + [n.body for n in tree.body if isinstance(n, ast.ClassDef)]:
        prev_end = 0
        for node in stmts:
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
            while start - 1 >= prev_end and (
                not lines[start - 1].strip() or lines[start - 1].lstrip()[:1] == "#"
            ):
                start -= 1
            starts.add(start)
            prev_end = node.end_lineno or node.lineno
    bounds = sorted(starts | {0, len(lines)})
    pieces = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        piece = "".join(replace.get(i, lines[i]) for i in range(a, b) if keep[i] or i in replace)
        if piece.strip():
            pieces.append(piece)
    return pack(pieces, limit)


def docstring_documents(tree: ast.Module, limit: int = MAX_DOC_BYTES) -> list[str]:
    """Every docstring of the module (cleaned like `inspect.cleandoc`), in source order."""
    docs = [d for owner in _owners(tree) if (d := ast.get_docstring(owner, clean=True))]
    return split_paragraphs("\n\n".join(docs), limit) if docs else []


def prose_documents(limit: int = MAX_DOC_BYTES) -> list[tuple[str, list[str]]]:
    """(topic, documents) of the pydoc reference topics, sorted by topic."""
    from pydoc_data.topics import topics

    return [(name, split_paragraphs(topics[name], limit)) for name in sorted(topics)]


def _take(units: list[tuple[str, list[str]]], budget: int) -> list[str]:
    """Whole units in hash order until the next one would overflow the JSONL byte budget; then path order."""
    chosen, size = [], 0
    for rel, docs in sorted(units, key=lambda u: _key(u[0])):
        n = _jsonl_bytes(docs)
        if size + n > budget:
            break
        chosen.append((rel, docs))
        size += n
    # drop exact repeats (pydoc's 'if' and 'else' topics are one text): a copy could land in train and val
    return list(dict.fromkeys(d for _, docs in sorted(chosen) for d in docs))


def _jsonl_line(text: str) -> str:
    return json.dumps({"text": text}, ensure_ascii=False) + "\n"


def _jsonl_bytes(docs: list[str]) -> int:
    return sum(_nbytes(_jsonl_line(d)) for d in docs)


def build_domains(stdlib: Path | None = None) -> dict[str, list[str]]:
    """The documents of every domain, fully determined by the Python installation."""
    code_units: list[tuple[str, list[str]]] = []
    doc_units: list[tuple[str, list[str]]] = []
    sizes = {"code": 0, "docstrings": 0}
    # Parse in the order `_take` uses and stop parsing a domain once its budget is exceeded: `_take` never
    # looks further, and parsing dominates the run time.
    for rel, source in sorted(stdlib_modules(stdlib), key=lambda m: _key(m[0])):
        name = "code" if _is_code_module(rel) else "docstrings"
        if sizes[name] > BUDGET_BYTES[name]:
            continue
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        if name == "code":
            docs = code_documents(source, tree)
            code_units.append((rel, docs))
        else:
            docs = docstring_documents(tree)
            doc_units.append((rel, docs))
        sizes[name] += _jsonl_bytes(docs)
    return {
        "prose": _take(prose_documents(), BUDGET_BYTES["prose"]),
        "code": _take(code_units, BUDGET_BYTES["code"]),
        "docstrings": _take(doc_units, BUDGET_BYTES["docstrings"]),
    }


# ----------------------------------------------------------------------------------------------- output
def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another output directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(
            f"{out}: exists and is not empty; pass --overwrite to replace it, or choose another directory"
        )
    marker = out / "corpus.json"
    try:
        ok = json.loads(marker.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise UserError(
            f"{out}: not a demo corpus (no {marker.name} of format {FORMAT}); refusing to replace it even with "
            "--overwrite; choose another directory"
        )


def write_demo_corpus(out: Path, overwrite: bool = False) -> dict:
    """Write the demo corpus into `out` atomically (see the module docstring) and describe it.

    An existing non-empty `out` is refused unless `overwrite`, and even then only a previous demo corpus is
    replaced (as a whole, including anything written into it since, such as a tokenizer or shards).
    """
    out = Path(out)
    _check_out(out, overwrite)
    domains = build_domains()
    files: dict[str, dict] = {}
    recipe_path = out / "prepare.yaml"
    with build_dir(out, replace=True) as tmp:
        for name in DOMAINS:
            data = "".join(_jsonl_line(d) for d in domains[name]).encode("utf-8")
            (tmp / f"{name}.jsonl").write_bytes(data)
            files[name] = {
                "docs": len(domains[name]),
                "bytes": len(data),
                "file": f"{name}.jsonl",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        recipe = {
            "tokenizer": (out / "tokenizer").as_posix(),
            "out": (out / "shards").as_posix(),
            # the 1% default would leave 1-3 validation documents per domain; 8 gives every domain a few
            # thousand validation tokens (prose and code over 8k with a 2k-token BPE)
            "val_docs": VAL_DOCS,
            "domains": {
                name: [{"path": (out / f"{name}.jsonl").as_posix(), "format": "jsonl"}] for name in DOMAINS
            },
        }
        header = (
            "# The built-in demo corpus (warmstart corpus demo). Paths are written as the corpus directory was\n"
            "# given, so relative ones hold in the working directory it was written from; run there:\n"
            f"#   warmstart tokenizer train {recipe_path.as_posix()} --out {recipe['tokenizer']}\n"
            f"#   warmstart prepare {recipe_path.as_posix()}\n"
        )
        (tmp / "prepare.yaml").write_text(header + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        meta = {
            "format": FORMAT,
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "max_doc_bytes": MAX_DOC_BYTES,
            "budget_bytes": BUDGET_BYTES,
            "domains": files,
        }
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return {
        "domains": {
            name: {"docs": f["docs"], "bytes": f["bytes"], "file": (out / f["file"]).as_posix()}
            for name, f in files.items()
        },
        "recipe": recipe_path.as_posix(),
    }


def prepare_demo(root: Path, vocab_size: int = 2048, workers: int = 2, progress: bool = False):
    """The demo corpus under `root/corpus`, a `vocab_size` BPE learned on it, and its prepared shards.

    Each part is skipped when already there (prepare itself does no work on unchanged inputs). Returns
    (shards dir, tokenizer dir, PrepareResult); the quickstart and every benchmark start from this.
    """
    from warmstart.config import PrepareConfig, read_yaml, validate
    from warmstart.data.preparation import prepare
    from warmstart.data.tokenizer_train import train_tokenizer

    corpus = Path(root) / "corpus"
    if not (corpus / "corpus.json").exists():
        write_demo_corpus(corpus, overwrite=True)
    tree = read_yaml(corpus / "prepare.yaml")
    tree.update({"tokenizer": str(corpus / "tokenizer"), "out": str(corpus / "shards"), "workers": workers})
    cfg = validate(PrepareConfig, tree, str(corpus / "prepare.yaml"))
    if not (corpus / "tokenizer" / "tokenizer.json").exists():
        train_tokenizer(cfg.domains, vocab_size=vocab_size, out=corpus / "tokenizer")
    result = prepare(cfg, progress=progress)
    return corpus / "shards", corpus / "tokenizer", result
