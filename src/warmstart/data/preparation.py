"""`warmstart prepare`: text sources -> tokenized train/val token arrays per domain (format: `data/shards.py`).

The document encoder and its worker processes are in data/encode.py, the shard writer beside its reader in
data/shards.py, the validation split's count and seeded draw in data/splits.py; this module plans, checks and
builds the domains of a recipe.

Two streaming passes per domain: a cheap one that validates every record and counts documents (so the
validation documents can be drawn as an exact, seeded count before any token is written, and a bad line fails
before any work), then the tokenizing one. Nothing in an existing output directory changes unless the whole run
succeeds: each domain is built in a temp directory beside its final place and swapped in only at the end.

A domain is up to date when its fingerprint (tokenizer vocabulary, document format, dtype, split settings, seed and the
sha256 of its source files) matches its index.json. A hub dataset is streamed twice, and is fingerprinted by its
name only: to pick up a new version of it, delete its domain directory.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.atomic import build_dir, write_json
from warmstart.config import PrepareConfig, SourceConfig, read_yaml, set_dotted, validate
from warmstart.data.doc_format import DocumentFormat, resolve_format
from warmstart.data.encode import _batches, _Encoder
from warmstart.data.shards import (
    FORMAT,
    LEGACY_FORMATS,
    SPLITS,
    DomainData,
    SplitWriter,
    dtype_for_vocab,
    read_manifest,
)
from warmstart.data.sources import detect_format, fingerprint_source, iter_documents
from warmstart.data.splits import val_count, val_indices, write_runs
from warmstart.data.tokenizer import load_tokenizer, tokenizer_identity
from warmstart.errors import UserError


# ----------------------------------------------------------------------------------------------- results
@dataclass
class DomainResult:
    name: str
    status: str  # "built", "rebuilt", "repaired" or "up to date"
    path: Path
    train_docs: int
    train_tokens: int
    val_docs: int
    val_tokens: int
    bad_records: int = 0
    seconds: float = 0.0

    @property
    def docs(self) -> int:
        return self.train_docs + self.val_docs

    @property
    def tokens(self) -> int:
        return self.train_tokens + self.val_tokens

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens written per second of this run's work on the domain (None when nothing was built)."""
        if self.status == "up to date" or self.seconds <= 0:
            return None
        return self.tokens / self.seconds


@dataclass
class PrepareResult:
    out: Path
    dtype: str
    domains: list[DomainResult]
    seconds: float = 0.0
    unlisted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # quality-selected domains whose source is unchanged
    stale: list[str] = field(default_factory=list)  # quality-selected domains whose source was rebuilt
    document: DocumentFormat | None = None
    executor: str = "local"
    tasks_run: int = 0  # executor ray/slurm: tasks this call ran
    tasks_reused: int = 0  # ... and tasks finished by an earlier, stopped run (not run again)
    pending: str | None = None  # executor slurm: the job submitted, when the shards are not written yet

    @property
    def built(self) -> list[str]:
        return [d.name for d in self.domains if d.status != "up to date"]

    @property
    def up_to_date(self) -> bool:
        return not self.built

    def summary(self) -> str:
        """A short table for the terminal."""
        head = f"{'domain':<16} {'status':<10} {'docs':>9} {'train tok':>13} {'val docs':>8} {'val tok':>11}"
        head += f" {'bad':>5} {'tok/s':>8} {'time':>7}"
        if self.pending:
            return self.pending
        lines = [head]
        for d in self.domains:
            rate = f"{_si(d.tokens_per_s)}/s" if d.tokens_per_s else "-"
            secs = f"{d.seconds:.1f}s" if d.status != "up to date" else "-"
            lines.append(
                f"{d.name:<16} {d.status:<10} {d.docs:>9,} {d.train_tokens:>13,} {d.val_docs:>8,} "
                f"{d.val_tokens:>11,} {d.bad_records:>5,} {rate:>8} {secs:>7}"
            )
        n_built = len(self.built)
        state = "up to date" if not n_built else f"{n_built} built, {len(self.domains) - n_built} up to date"
        lines.append(f"data in {self.out} ({self.dtype}; {state}; {self.seconds:.1f}s)")
        if self.tasks_run or self.tasks_reused:
            reused = f", {self.tasks_reused} finished by an earlier run" if self.tasks_reused else ""
            lines.append(f"executor {self.executor}: {self.tasks_run} tasks run{reused}")
        if self.document is not None:
            lines.append(f"documents: {self.document.describe()} ({self.document.rule})")
        if self.kept:
            lines.append(f"kept in the manifest (selected from this recipe's domains): {', '.join(self.kept)}")
        if self.stale:
            lines.append(
                f"note: dropped from the manifest, selected from a domain since rebuilt: {', '.join(self.stale)}; "
                "run `warmstart quality score` and `select` again"
            )
        if self.unlisted:
            lines.append(f"note: left as is, not in this recipe's manifest: {', '.join(self.unlisted)}")
        return "\n".join(lines)


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


# ----------------------------------------------------------------------------------------------- config
def _config(cfg: PrepareConfig | dict | str | Path, overrides: dict[str, Any]) -> PrepareConfig:
    """Validate a dict or a recipe path like the CLI does; keyword overrides act like `--set key=value`."""
    if isinstance(cfg, PrepareConfig) and not overrides:
        return cfg
    if isinstance(cfg, PrepareConfig):
        tree, source = cfg.model_dump(mode="json", by_alias=True), "recipe"
    elif isinstance(cfg, dict):
        tree, source = copy.deepcopy(cfg), "recipe"
    elif isinstance(cfg, (str, os.PathLike)):
        tree, source = read_yaml(cfg), str(cfg)
    else:
        raise TypeError(
            f"prepare(cfg): expected PrepareConfig, dict or recipe path, got {type(cfg).__name__}"
        )
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return validate(PrepareConfig, tree, source)


# ----------------------------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    name: str
    sources: list[SourceConfig]
    path: Path
    fingerprint: str
    source_info: list[dict]
    status: str = "up to date"
    n_docs: int = 0
    bad_records: int = 0
    val_index: np.ndarray | None = None
    seconds: float = 0.0


def _open_domain(path: Path) -> DomainData | None:
    """The prepared domain at `path`, or None for anything else (no index, foreign or corrupt index)."""
    try:
        data = DomainData.open(path)
    except (UserError, OSError, KeyError, TypeError, ValueError):
        return None
    return data if isinstance(data.index.get("splits"), dict) else None


def _domain_state(path: Path, fingerprint: str) -> str:
    """'missing', 'same', 'damaged' (same inputs, files truncated) or 'different'."""
    if not path.exists():
        return "missing"
    data = _open_domain(path)
    if data is None or data.index.get("fingerprint") != fingerprint:
        return "different"
    try:
        data.verify()
    except (UserError, KeyError, TypeError, ValueError):
        return "damaged"
    return "same"


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"out: {out} exists and is not a directory; choose another out")
    if not out.is_dir():
        return
    manifest = out / "manifest.json"
    if manifest.is_file():
        if read_manifest(out).get("format") not in (FORMAT, *LEGACY_FORMATS):
            raise UserError(f"{manifest}: not a {FORMAT} manifest; choose another out")
        return
    # Without a manifest, a directory is ours only if it holds nothing but prepared domains (a run that
    # stopped between swapping in its domains and writing the manifest).
    if any(not p.name.startswith(".") and _open_domain(p) is None for p in out.iterdir()):
        raise UserError(
            f"out: {out} exists and is not a warmstart data directory (no manifest.json); "
            "choose another out or empty it"
        )


def _count_documents(plan: _Plan, cfg: PrepareConfig, progress: bool) -> None:
    """First pass: validate every record and count documents, so the validation set is fixed up front."""
    from warmstart.progress import bar as progress_bar

    total_bad = 0
    n_total = 0
    with progress_bar(desc=f"{plan.name}: reading", unit=" doc", enabled=progress, leave=False) as bar:
        for src, info in zip(plan.sources, plan.source_info, strict=True):
            stats: dict = {}
            n = 0
            for _ in iter_documents(src, skip_bad_records=cfg.skip_bad_records, stats=stats):
                n += 1
                if n % 4096 == 0:
                    bar.update(4096)
            bar.update(n % 4096)
            info["docs"], info["bad_records"] = n, stats.get("bad_records", 0)
            n_total += n
            total_bad += info["bad_records"]
    if n_total == 0:
        paths = ", ".join(s.path for s in plan.sources)
        why = f"all {total_bad} records were bad" if total_bad else "its sources hold no documents"
        raise UserError(f"domain {plan.name!r}: no documents to prepare ({why}: {paths})")
    plan.n_docs, plan.bad_records = n_total, total_bad
    k = val_count(n_total, cfg.val_docs, cfg.val_fraction, plan.name)
    plan.val_index = val_indices(n_total, k, cfg.seed, plan.name)


# ----------------------------------------------------------------------------------------------- building
def _build_domain(
    plan: _Plan, tmp: Path, cfg: PrepareConfig, encoder: _Encoder, index_head: dict, progress: bool
) -> dict:
    """Second pass: tokenize and stream into the temp directory `tmp`; returns the index written there."""
    from warmstart.progress import bar as progress_bar

    val = plan.val_index if plan.val_index is not None else np.zeros(0, np.int64)
    writers = {
        "train": SplitWriter(tmp, "train", plan.n_docs - len(val), encoder.dtype),
        "val": SplitWriter(tmp, "val", len(val), encoder.dtype),
    }

    def docs() -> Iterator[str]:
        for src in plan.sources:
            yield from iter_documents(src, skip_bad_records=cfg.skip_bad_records, stats={})

    done = 0
    try:
        with progress_bar(plan.n_docs, desc=plan.name, unit=" doc", enabled=progress) as bar:
            for lengths, tokens in encoder.map(_batches(docs(), cfg.batch_docs)):
                k = len(lengths)
                write_runs(writers, lengths, tokens, done, val)
                done += k
                bar.update(k)
                bar.set_postfix_str(
                    f"{(writers['train'].tokens + writers['val'].tokens) / 1e6:.1f}M tok", False
                )
        splits = {s: writers[s].finish() for s in SPLITS}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return _write_index(tmp, plan, index_head, splits)


def _write_index(tmp: Path, plan: _Plan, index_head: dict, splits: dict) -> dict:
    """Write the domain's index.json into `tmp` (the same keys and order, whichever path built it)."""
    index = {
        **index_head,
        "domain": plan.name,
        "fingerprint": plan.fingerprint,
        "splits": splits,
        "sources": plan.source_info,
        "bad_records": plan.bad_records,
    }
    write_json(tmp / "index.json", index)
    return index


def prepare(
    cfg: PrepareConfig | dict | str | Path, *, progress: bool = True, **overrides: Any
) -> PrepareResult:
    """Tokenize every domain of a prepare recipe into `cfg.out`; domains whose inputs are unchanged are skipped.

    `cfg` may be a validated config, a dict, or a recipe path; keyword overrides (e.g. `workers=2`) are applied
    like `--set`. A domain whose inputs changed is rebuilt only with `overwrite`; otherwise a `UserError`, and
    the output directory is left exactly as it was.
    """
    t_start = time.perf_counter()
    cfg = _config(cfg, overrides)
    out = Path(cfg.out)
    _check_out_dir(out)
    setup = _setup(cfg)

    # Plan every domain before writing anything: a bad input anywhere fails with the out dir untouched.
    count = cfg.executor == "local"  # on an engine, the tasks count documents as they read them
    plans = [
        _plan_domain(name, sources, cfg, setup, out, progress, count) for name, sources in cfg.domains.items()
    ]
    run = _TaskRun()
    results = _build_domains(plans, cfg, setup, out, progress, run)
    if run.pending:
        return PrepareResult(out=out, dtype=setup.dtype.name, domains=[], executor=cfg.executor,
                             pending=run.pending, seconds=time.perf_counter() - t_start)

    fingerprints = {p.name: p.fingerprint for p in plans}
    manifest, derived, stale = _write_manifest(out, cfg, setup.identity, fingerprints)
    return PrepareResult(
        out=out,
        dtype=setup.dtype.name,
        document=setup.doc_fmt,
        domains=[results[p.name] for p in plans],
        seconds=time.perf_counter() - t_start,
        unlisted=_unlisted(out, manifest["domains"], stale),
        kept=list(derived),
        stale=stale,
        executor=cfg.executor,
        tasks_run=run.ran,
        tasks_reused=run.reused,
    )


@dataclass
class _Setup:
    """What every domain of a run shares: the tokenizer, its document format, the token dtype, the tokenizer
    identity (as recorded in manifest.json) and the head of every index.json."""

    tok: Any
    doc_fmt: DocumentFormat
    dtype: np.dtype
    identity: dict
    index_head: dict


def _setup(cfg: PrepareConfig) -> _Setup:
    """Load the tokenizer and settle the document format and dtype; `UserError` when the dtype cannot hold its ids."""
    tok = load_tokenizer(cfg.tokenizer)
    doc_fmt = resolve_format(tok, cfg.bos, cfg.doc_end)
    vocab = tok.get_vocab()
    id_bound = max(len(tok), max(vocab.values(), default=-1) + 1, *(i + 1 for i in doc_fmt.prefix + doc_fmt.suffix))
    try:
        dtype = np.dtype(dtype_for_vocab(id_bound, cfg.dtype))
    except UserError as e:
        raise UserError(f"{cfg.tokenizer}: {e}") from None
    # eos_id: the token between documents (the n-gram scorer's start context), kept for readers of the index
    end = (doc_fmt.suffix or doc_fmt.prefix or [tok.eos_token_id])[-1]
    identity = {**tokenizer_identity(tok, name=cfg.tokenizer), "eos_id": end}
    settings = {
        "val_docs": cfg.val_docs,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "bos": doc_fmt.bos,
        "doc_end": doc_fmt.doc_end,
        "dtype": cfg.dtype,
    }
    index_head = {
        "format": FORMAT,
        "tokenizer": identity,
        "dtype": dtype.name,
        "vocab_size": len(tok),
        "document": doc_fmt.to_json(),
        "settings": settings,
    }
    return _Setup(tok, doc_fmt, dtype, identity, index_head)


def _fingerprint(name: str, cfg: PrepareConfig, setup: _Setup, source_info: list[dict]) -> str:
    """sha256 of every input that decides a domain's bytes (see the module docstring)."""
    doc_fmt = setup.doc_fmt
    return _sha256_json(
        {
            "format": FORMAT,
            "domain": name,
            "vocab_hash": setup.identity["vocab_hash"],
            "document": [doc_fmt.prefix, doc_fmt.suffix, doc_fmt.specials_as_text],
            "dtype": setup.dtype.name,
            "val_docs": cfg.val_docs,
            "val_fraction": cfg.val_fraction,
            "seed": cfg.seed,
            "sources": [i["fingerprint"] for i in source_info],
        }
    )


def _plan_domain(
    name: str, sources: list[SourceConfig], cfg: PrepareConfig, setup: _Setup, out: Path, progress: bool,
    count: bool = True,
) -> _Plan:
    """Fingerprint domain `name`, compare it with what `out` holds, and count its documents when it is to be built;
    `UserError` when it exists with different inputs and `overwrite` is off."""
    t0 = time.perf_counter()
    source_info = []
    for src in sources:
        fmt = detect_format(src)
        info = {**src.model_dump(), "format": fmt, "fingerprint": fingerprint_source(src)}
        source_info.append(info)
    fingerprint = _fingerprint(name, cfg, setup, source_info)
    plan = _Plan(name, sources, out / name, fingerprint, source_info)
    state = _domain_state(plan.path, fingerprint)
    if state == "different" and not cfg.overwrite:
        old = _open_domain(plan.path)
        if old is not None and old.document_format.legacy:
            raise UserError(
                f"{plan.path}: domain {name!r} was prepared by an older warmstart (text + EOS, no recorded "
                "document format); use --overwrite to rebuild it in the checkpoint's format"
            )
        raise UserError(
            f"{plan.path}: domain {name!r} exists with different inputs; use --overwrite to rebuild it"
        )
    plan.status = {"missing": "built", "different": "rebuilt", "damaged": "repaired"}.get(
        state, "up to date"
    )
    if plan.status != "up to date" and count:
        _count_documents(plan, cfg, progress)
    plan.seconds = time.perf_counter() - t0
    return plan


def _build_domains(
    plans: list[_Plan], cfg: PrepareConfig, setup: _Setup, out: Path, progress: bool, run: _TaskRun
) -> dict[str, DomainResult]:
    """Build every planned domain that is not up to date and swap them all in together; a result per domain.

    On any error nothing is swapped in, and an `out` this call created is removed (an engine's finished tasks
    stay in their work directory beside it, for the next run)."""
    created = not out.exists()
    results: dict[str, DomainResult] = {}
    todo = [p for p in plans if p.status != "up to date"]
    if todo and cfg.executor != "local":
        _run_tasks(todo, cfg, setup, out, progress, run)
        if run.pending:
            return results
    try:
        with contextlib.ExitStack() as swaps:
            if todo and cfg.executor == "local":
                encoder = swaps.enter_context(_Encoder(setup.tok, setup.doc_fmt, setup.dtype, cfg.workers))
            for plan in todo:
                t0 = time.perf_counter()
                # Built beside the final place; swapped in when the ExitStack closes, i.e. only if all succeed.
                tmp = swaps.enter_context(build_dir(plan.path, replace=True))
                if cfg.executor == "local":
                    index = _build_domain(plan, tmp, cfg, encoder, setup.index_head, progress)
                else:
                    index = _merge_domain(plan, tmp, cfg, setup, run.tasks[plan.name])
                plan.seconds += time.perf_counter() - t0
                results[plan.name] = _result(plan, index)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if todo and cfg.executor != "local":
        from warmstart.data.tasks import work_dir

        shutil.rmtree(work_dir(out), ignore_errors=True)  # every domain is in place: the tasks are spent
    for plan in plans:
        if plan.name not in results:
            results[plan.name] = _result(plan, DomainData.open(plan.path).index)
    return results


@dataclass
class _TaskRun:
    """An engine run's tasks per domain, how many it ran or found finished, and a Slurm job still pending."""

    tasks: dict[str, list] = field(default_factory=dict)
    ran: int = 0
    reused: int = 0
    pending: str | None = None


def _run_tasks(
    todo: list[_Plan], cfg: PrepareConfig, setup: _Setup, out: Path, progress: bool, run: _TaskRun
) -> None:
    """Cut the domains to build into tasks and have the engine run the unfinished ones (data/executors.py)."""
    from warmstart.data import executors
    from warmstart.data.tasks import TaskJob, check_finished, plan_tasks, work_dir

    part_bytes = max(1, int(cfg.task_mb * 1e6))
    # Workers run elsewhere, in other directories: every local path they meet is absolute.
    out = out.absolute()
    sources = {name: [_absolute(s) for s in srcs] for name, srcs in cfg.domains.items()}
    for plan in todo:
        t0 = time.perf_counter()
        run.tasks[plan.name] = plan_tasks(plan.name, plan.fingerprint, sources[plan.name], out, part_bytes)
        plan.seconds += time.perf_counter() - t0
    every = [t for tasks in run.tasks.values() for t in tasks]
    run.reused = sum(t.done for t in every)
    unfinished = [t for t in every if not t.done]
    job = TaskJob(
        unfinished, sources, setup.tok, setup.doc_fmt, setup.dtype, cfg.batch_docs, cfg.skip_bad_records
    )
    logs = work_dir(out) / f"engine-{_sha256_json([t.prefix for t in unfinished])[:16]}"
    workers = cfg.workers if "workers" in cfg.model_fields_set else None
    t0 = time.perf_counter()
    if unfinished and cfg.executor == "ray":
        executors.run_ray(job, logs, cfg.address, workers, progress)
    elif unfinished and cfg.executor == "slurm":
        job_id = executors.submit_slurm(job, logs, cfg.slurm, workers)
        run.pending = (
            f"submitted Slurm job {job_id}: {len(unfinished)} tasks ({run.reused} already finished); "
            f"run the same prepare command again once it has finished, to write the shards to {out}"
        )
        return
    elif unfinished:  # pragma: no cover - the config's Literal rules this out
        raise UserError(f"unknown executor {cfg.executor!r}")
    for plan in todo:  # the engine's time is shared by the domains in proportion to their input
        plan.seconds += (time.perf_counter() - t0) * len(run.tasks[plan.name]) / max(1, len(every))
    check_finished(every, str(logs))
    run.ran = len(unfinished)


def _absolute(src: SourceConfig) -> SourceConfig:
    """`src` with its path absolute when it is a local file or directory (a URL or a hub name as it is)."""
    if "://" in src.path or not Path(src.path).exists():
        return src
    return src.model_copy(update={"path": os.path.abspath(src.path)})


def _merge_domain(plan: _Plan, tmp: Path, cfg: PrepareConfig, setup: _Setup, tasks: list) -> dict:
    """Write a domain from its finished tasks (data/tasks.py `merge_domain`) and its index.json into `tmp`."""
    from warmstart.data.tasks import merge_domain

    merged = merge_domain(plan.name, tasks, len(plan.sources), tmp, setup.dtype, cfg)
    for info, (docs, bad) in zip(plan.source_info, merged["per_source"], strict=True):
        info["docs"], info["bad_records"] = docs, bad
    plan.n_docs, plan.bad_records = merged["docs"], merged["bad_records"]
    return _write_index(tmp, plan, setup.index_head, merged["splits"])


# ----------------------------------------------------------------------------------------------- manifest
def _write_manifest(
    out: Path, cfg: PrepareConfig, identity: dict, fingerprints: dict[str, str]
) -> tuple[dict, dict[str, str], list[str]]:
    """Write `out`/manifest.json (only when it changes): (the manifest, derived domains kept, stale ones dropped)."""
    previous = read_manifest(out)
    derived, stale = _derived_domains(out, fingerprints, previous.get("domains", []))
    manifest = {
        "format": FORMAT,
        "tokenizer": identity,
        "domains": list(cfg.domains) + list(derived),
        "fingerprints": {**fingerprints, **derived},
    }
    if previous != manifest:
        write_json(out / "manifest.json", manifest)
    return manifest, derived, stale


def _unlisted(out: Path, listed: list[str], stale: list[str]) -> list[str]:
    """Prepared domains in `out` that the manifest does not list (and were not just dropped as stale), sorted."""
    return sorted(
        p.name
        for p in out.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name not in listed
        and p.name not in stale
        and (p / "index.json").is_file()
    )


def _derived_domains(out: Path, fingerprints: dict[str, str], listed: list[str]) -> tuple[dict[str, str], list[str]]:
    """Domains made from this recipe's domains (`warmstart quality select`) that stay listed in the manifest:
    ({name: fingerprint} of those whose source is unchanged, in their previous manifest order; names of those
    whose source was rebuilt since, which are dropped until selected again)."""
    found: dict[str, tuple[str, str, str]] = {}
    for path in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if path.name in fingerprints or not (path / "index.json").is_file():
            continue
        try:
            index = json.loads((path / "index.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        src = index.get("selected_from") or {}
        if src.get("domain") in fingerprints:
            found[path.name] = (index.get("fingerprint"), src["domain"], src.get("fingerprint"))
    order = sorted(found, key=lambda n: (listed.index(n) if n in listed else len(listed), n))
    derived, stale = {}, []
    for name in order:
        fp, src_name, src_fp = found[name]
        if src_fp == fingerprints[src_name]:
            derived[name] = fp
        else:
            stale.append(name)
    return derived, stale


def _result(plan: _Plan, index: dict) -> DomainResult:
    sp = index["splits"]
    return DomainResult(
        name=plan.name,
        status=plan.status,
        path=plan.path,
        train_docs=int(sp["train"]["docs"]),
        train_tokens=int(sp["train"]["tokens"]),
        val_docs=int(sp["val"]["docs"]),
        val_tokens=int(sp["val"]["tokens"]),
        bad_records=int(index.get("bad_records", 0)),
        seconds=plan.seconds if plan.status != "up to date" else 0.0,
    )


def _sha256_json(obj: Any) -> str:
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()
