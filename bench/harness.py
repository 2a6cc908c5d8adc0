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


def run_main(main: Callable[[], None]) -> None:
    """`main()`; a run stopped by a signal (checkpointed: re-running the script resumes it) ends the script with
    one line and the run's exit code (128 + signum)."""
    try:
        main()
    except signals.Interrupted as e:
        print(f"bench: stopped by {e.name}; {e.note}", file=sys.stderr)
        sys.exit(e.exit_code)
