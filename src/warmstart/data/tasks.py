"""`prepare` as independent tasks, for an engine that runs them on many machines (`executor: ray | slurm`).

A task is one part of one source (data/sources.py `source_parts`: a byte range of a JSONL file, a file, a run
of text files); it reads its documents, tokenizes them exactly as the local path does (`encode_chunk`), and
writes its tokens and document lengths beside the output directory, in the work directory `.<out>.tasks/`:

    .<out>.tasks/<domain>-<fingerprint[:16]>/task-00012.tokens        the part's documents' tokens, in order
                                             task-00012.lengths.npy   tokens per document
                                             task-00012.json          counts; written last: the task is done
                                             task-00012.error         the one-line error of a task that failed

Every file appears by rename, complete or not at all, so a task killed mid-way and run again (by the engine's
retry or by the user re-running `prepare`) leaves no trace of the first try, and a finished task is never run
again. When every task of a domain is done, `merge_domain` streams the tasks' outputs in input order into the
usual shards: the validation draw is made from the domain's document count exactly as the local path makes it,
so the bytes (shards, offsets, index.json) are the same whatever the executor, worker count or task size.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warmstart.atomic import write_json, write_text
from warmstart.config import SourceConfig
from warmstart.data.doc_format import DocumentFormat
from warmstart.data.encode import _batches, encode_chunk
from warmstart.data.shards import SplitWriter
from warmstart.data.sources import SourcePart, iter_part, source_parts
from warmstart.data.splits import val_count, val_indices, write_runs
from warmstart.errors import UserError

MERGE_DOCS = 1 << 16  # documents copied per step of the merge: bounds its memory whatever a task's size


@dataclass(frozen=True)
class Task:
    domain: str
    number: int  # in the domain's input order
    source: int  # index of its source in the domain's list
    part: SourcePart
    prefix: str  # its output files' path without suffix

    def file(self, suffix: str) -> Path:
        return Path(self.prefix + suffix)

    @property
    def done(self) -> bool:
        return self.file(".json").is_file()


def work_dir(out: Path) -> Path:
    """Where a run's task outputs live until its shards are written: beside `out`, so a run that fails or is
    stopped (which removes an `out` it created) keeps its finished tasks for the next run."""
    return out.parent / f".{out.name}.tasks"


def plan_tasks(
    domain: str, fingerprint: str, sources: list[SourceConfig], out: Path, part_bytes: int
) -> list[Task]:
    """The tasks of one domain, in input order. Their outputs sit in a directory named by the domain's
    fingerprint, so outputs of other inputs or settings are never mixed in."""
    root = work_dir(out) / f"{domain}-{fingerprint[:16]}"
    tasks: list[Task] = []
    for i, src in enumerate(sources):
        for part in source_parts(src, part_bytes):
            n = len(tasks)
            tasks.append(Task(domain, n, i, part, str(root / f"task-{n:05d}")))
    return tasks


class TaskJob:
    """What every task of a run shares (the loaded tokenizer travels with it), callable as an engine's
    pipeline step: `job(data, rank, world_size)` runs task `rank`."""

    def __init__(
        self,
        tasks: list[Task],
        sources: dict[str, list[SourceConfig]],
        tok,
        fmt: DocumentFormat,
        dtype: np.dtype,
        batch_docs: int,
        skip_bad_records: bool,
    ):
        self.tasks, self.sources, self.tok, self.fmt = tasks, sources, tok, fmt
        self.dtype, self.batch_docs, self.skip_bad_records = np.dtype(dtype), batch_docs, skip_bad_records

    def __repr__(self) -> str:  # the engine logs its pipeline; the tokenizer's repr is pages long
        return f"warmstart.prepare({len(self.tasks)} tasks)"

    def __call__(self, data, rank: int, world_size: int):
        run_task(self, self.tasks[rank])
        return data


def run_task(job: TaskJob, task: Task) -> bool:
    """Tokenize one task's part into its output files; False when it was already done (nothing is redone).

    A failure writes the task's `.error` (the one-line message naming file and line) and is raised again, so
    the engine sees the task fail and the run that merges reports the message."""
    if task.done:
        return False
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per task: the engine runs one task per core
    task.file("").parent.mkdir(parents=True, exist_ok=True)
    tag = f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp_tokens, tmp_lengths = task.file(".tokens" + tag), task.file(".lengths" + tag + ".npy")
    src = job.sources[task.domain][task.source]
    stats: dict = {}
    try:
        lengths, n_tokens, max_id = [], 0, -1
        with open(tmp_tokens, "wb") as f:
            docs = iter_part(src, task.part, job.skip_bad_records, stats)
            for batch in _batches(docs, job.batch_docs):
                lens, toks = encode_chunk(job.tok, batch, job.fmt, job.dtype)
                f.write(toks.tobytes())
                lengths.append(lens)
                n_tokens += int(toks.size)
                max_id = max(max_id, int(toks.max(initial=0)) if toks.size else -1)
            f.flush()
            os.fsync(f.fileno())
        lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        np.save(tmp_lengths, lens)
        os.replace(tmp_tokens, task.file(".tokens"))
        os.replace(tmp_lengths, task.file(".lengths.npy"))
        counts = {"docs": len(lens), "tokens": n_tokens, "bad_records": stats.get("bad_records", 0)}
        write_json(task.file(".json"), counts)
    except Exception as e:
        message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        write_text(task.file(".error"), message.splitlines()[0] if message else type(e).__name__)
        raise
    finally:
        for f in (tmp_tokens, tmp_lengths):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
    return True


def check_finished(tasks: list[Task], where: str) -> None:
    """`UserError` unless every task is done: the first failed task's own message (in input order), else how
    many did not finish and that running again continues from the finished ones."""
    for task in tasks:
        if not task.done and task.file(".error").is_file():
            raise UserError(task.file(".error").read_text(encoding="utf-8").strip())
    missing = [t for t in tasks if not t.done]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(tasks)} prepare tasks did not finish (engine logs: {where}); "
            "run the same command again to continue from the finished ones"
        )


def merge_domain(name: str, tasks: list[Task], n_sources: int, tmp: Path, dtype: np.dtype, cfg) -> dict:
    """Stream the finished tasks of domain `name` in input order into train/val shards in `tmp`.

    Returns {splits, docs, bad_records, per_source: [(docs, bad_records)]}; the validation documents are drawn
    from the domain's document count with `val_count`/`val_indices`, as the local path draws them."""
    counts = [json.loads(t.file(".json").read_text()) for t in tasks]
    n_docs = sum(c["docs"] for c in counts)
    bad = sum(c["bad_records"] for c in counts)
    per_source = [[0, 0] for _ in range(n_sources)]
    for t, c in zip(tasks, counts, strict=True):
        per_source[t.source][0] += c["docs"]
        per_source[t.source][1] += c["bad_records"]
    if n_docs == 0:
        why = f"all {bad} records were bad" if bad else "its sources hold no documents"
        paths = ", ".join(s.path for s in cfg.domains[name])
        raise UserError(f"domain {name!r}: no documents to prepare ({why}: {paths})")
    k = val_count(n_docs, cfg.val_docs, cfg.val_fraction, name)
    val = val_indices(n_docs, k, cfg.seed, name)
    writers = {
        "train": SplitWriter(tmp, "train", n_docs - k, dtype),
        "val": SplitWriter(tmp, "val", k, dtype),
    }
    done = 0
    try:
        for t, c in zip(tasks, counts, strict=True):
            lengths = np.load(t.file(".lengths.npy"))
            if c["tokens"]:
                tokens = np.memmap(t.file(".tokens"), dtype=dtype, mode="r", shape=(c["tokens"],))
            else:
                tokens = np.zeros(0, dtype)
            start = 0  # the token where lengths[a] begins
            for a in range(0, len(lengths), MERGE_DOCS):
                lens = lengths[a : a + MERGE_DOCS]
                end = start + int(lens.sum())
                write_runs(writers, lens, np.asarray(tokens[start:end]), done, val)
                done, start = done + len(lens), end
            del tokens
        splits = {s: w.finish() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return {"splits": splits, "docs": n_docs, "bad_records": bad, "per_source": per_source}
