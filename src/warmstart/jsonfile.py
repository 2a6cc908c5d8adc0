"""Reading the JSON files warmstart writes (indexes, manifests, summaries): an object, or one line saying why not."""

from __future__ import annotations

import json
from pathlib import Path

from warmstart.errors import UserError


def read_json_object(path: str | Path, what: str | None = None, fix: str | None = None) -> dict:
    """The JSON object in `path`. Raises `UserError` naming the file (as a corrupt `what`, with `fix` appended)
    when it is not valid UTF-8 JSON or not an object; OSError (e.g. missing) propagates."""
    p = Path(path)
    head = f"{p}: corrupt {what}: " if what else f"{p}: "
    tail = f"; {fix}" if fix else ""
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{head}not valid JSON ({str(e).splitlines()[0]}){tail}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{head}expected a JSON object, got a {type(obj).__name__}{tail}")
    return obj
