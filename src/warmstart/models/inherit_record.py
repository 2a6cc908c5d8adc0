"""An inherited checkpoint's own record (`inherited.json`) and where `inherit` may write one.

Torch-free, so the CLI checks `--out` and a run reads the block search's cost before anything heavy is imported.
"""

from __future__ import annotations

import json
from pathlib import Path

from warmstart.errors import UserError
from warmstart.models.locate import resolve_checkpoint

INHERITED_FILE = "inherited.json"  # provenance of an inherited checkpoint, next to its config.json


def search_flops(checkpoint: Path | str, what: str = "init.from") -> float:
    """The forward FLOPs its block search spent (inherited.json `choice.search_flops`, eval/block_choice.py) for
    an inherited checkpoint directory; 0.0 for any other checkpoint, a hub name, or a `first` cut (nothing was
    measured). Raises UserError when inherited.json is unreadable or its count is not a number >= 0."""
    f = Path(str(checkpoint)) / INHERITED_FILE
    if not f.is_file():
        return 0.0
    try:
        record = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{what}: {f} is not readable JSON; re-run `warmstart inherit`") from None
    choice = record.get("choice") if isinstance(record, dict) else None
    if not isinstance(record, dict) or not isinstance(choice, (dict, type(None))):
        raise UserError(f"{what}: {f} is not an inherit record (an object whose `choice` is an object); "
                        "re-run `warmstart inherit`")
    value = (choice or {}).get("search_flops", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise UserError(f"{what}: {f}: choice.search_flops {json.dumps(value)} is not a finite number >= 0; "
                        "re-run `warmstart inherit`")
    return float(value)


def check_out(out: str | Path, overwrite: bool, ref: str | Path | None = None,
              sample: str | Path | None = None) -> Path:
    """Where `inherit` may write: a new or empty directory, or (with `overwrite`) an earlier inherit output (it
    holds inherited.json); never the reference, the sample data, or a directory inside or around either (a
    replace would delete them). Raises UserError naming --out."""
    out = Path(out)
    target = out.resolve()
    guarded = []
    if ref is not None and Path(str(ref)).exists():
        guarded.append(("the reference --from", Path(str(ref)).resolve()))
        src = resolve_checkpoint(str(ref), "--from")
        if isinstance(src, Path):
            guarded.append(("the reference --from", src.resolve()))
    if sample is not None and Path(str(sample)).exists():
        guarded.append(("the sample data --sample", Path(str(sample)).resolve()))
    for what, path in guarded:
        if target == path or path.is_relative_to(target) or target.is_relative_to(path):
            rel = "is" if target == path else ("holds" if path.is_relative_to(target) else "is inside")
            raise UserError(f"--out: {out} {rel} {what} ({path}); write the cut to another directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out: {out} exists and is not empty; choose another directory or pass --overwrite")
        if not (out / INHERITED_FILE).is_file():
            raise UserError(f"--out: {out} is not an earlier `warmstart inherit` output (no {INHERITED_FILE}); "
                            "--overwrite replaces only those, so choose another directory")
    return out
