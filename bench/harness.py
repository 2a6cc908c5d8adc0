"""What the benchmark scripts share: editing a recipe tree by section, and a `main` that a signal stops cleanly.

Imported by the scripts beside it (`python bench/NAME.py` puts bench/ on sys.path).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from warmstart import signals


def edited(tree: dict, **edits) -> dict:
    """`tree` with `section__key=value` set inside a section and `section=value` replacing one, in place."""
    for key, value in edits.items():
        sec, _, sub = key.partition("__")
        if sub:
            tree[sec][sub] = value
        else:
            tree[sec] = value
    return tree


JOB_KEYS = ("seq_len", "batch_tokens", "micro_batch_size", "eval_tokens", "val_fraction", "device")


def add_job_settings(p, *, batch_tokens: int, micro_batch_size: int, eval_tokens: int) -> None:
    """The flags a job bench (bench/adapt.py, bench/derive.py) passes through to the job's config, with the
    script's own defaults for the batch and the evaluation."""
    p.add_argument("--seq-len", dest="seq_len", type=int, default=256)
    p.add_argument("--batch-tokens", dest="batch_tokens", type=int, default=batch_tokens)
    p.add_argument("--micro-batch-size", dest="micro_batch_size", type=int, default=micro_batch_size)
    p.add_argument("--eval-tokens", dest="eval_tokens", type=int, default=eval_tokens)
    p.add_argument("--val-fraction", dest="val_fraction", type=float, default=0.05)
    p.add_argument("--device", default="auto")
    p.add_argument("--cpu-threads", dest="cpu_threads", default="auto")
    p.add_argument("--lrs")


def job_settings(args) -> dict:
    """The job-config keys `add_job_settings` gave (cpu_threads as the config takes it; lrs only when given)."""
    from warmstart.recipes.jobs.flags import parse_list

    tree = {k: getattr(args, k) for k in JOB_KEYS}
    tree["cpu_threads"] = args.cpu_threads if args.cpu_threads == "auto" else int(args.cpu_threads)
    if args.lrs:
        tree["lrs"] = parse_list(args.lrs, "--lrs")
    return tree


def timed_job(work, job, run) -> tuple[object, float | None, str | None]:
    """(run(), its wall time in s, a note): the wall time of the invocation that ran the job, kept in WORK/wall.json
    the first time, so a re-run that reads the finished job back (seconds) does not replace it; the note says when
    that invocation resumed a job an earlier one had begun (its wall time is then only the rest). A job already
    finished (its run's summary.json written) with no wall.json was run before its time was kept: None, and nothing
    written."""
    import json
    import time
    from pathlib import Path

    from warmstart import atomic

    path = Path(work) / "wall.json"
    kept = json.loads(path.read_text()) if path.is_file() else None
    begun = Path(job).exists()
    done = kept is None and (Path(job) / "run" / "summary.json").is_file()
    t0 = time.perf_counter()
    result = run()
    wall = round(time.perf_counter() - t0, 1)
    if done:
        return result, None, "read back: the job finished before its wall time was kept"
    if kept is None:
        kept = {"wall_s": wall, "note": "resumed a job begun earlier: the rest only" if begun else None}
        atomic.write_json(path, kept)
    return result, kept["wall_s"], kept["note"]


def run_main(main: Callable[[], None]) -> None:
    """`main()`; a run stopped by a signal (checkpointed: re-running the script resumes it) ends the script with
    one line and the run's exit code (128 + signum)."""
    try:
        main()
    except signals.Interrupted as e:
        print(f"bench: stopped by {e.name}; re-run the same command to resume", file=sys.stderr)
        sys.exit(e.exit_code)
