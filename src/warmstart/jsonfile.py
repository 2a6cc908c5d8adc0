"""Reading the JSON files warmstart writes (indexes, manifests, summaries): an object, or one line saying why not."""

from __future__ import annotations

import json
import math
from pathlib import Path

from warmstart.errors import UserError


def finite(obj: object) -> object:
    """`obj` with every non-finite float (NaN, +-inf) replaced by None, through dicts, lists and tuples: an
    undefined number is written as JSON's null, never as the bare `NaN` that is not JSON at all."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: object, **kwargs) -> str:
    """`json.dumps` of `finite(obj)` with allow_nan=False: what every JSON file warmstart writes goes through."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


class DuplicateKeyError(ValueError):
    """A JSON object with a key written twice (json keeps the last one silently)."""


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKeyError(f"key {k!r} written twice in one object; keep one")
        out[k] = v
    return out


def loads(text: str | bytes) -> object:
    """`json.loads`, except that an object repeating a key raises `DuplicateKeyError` (a ValueError): a mixture
    or index that names a domain twice is ambiguous, never resolved by last-one-wins."""
    return json.loads(text, object_pairs_hook=_unique_pairs)


def read_json_object(path: str | Path, what: str | None = None, fix: str | None = None) -> dict:
    """The JSON object in `path`. Raises `UserError` naming the file (as a corrupt `what`, with `fix` appended)
    when it is not valid UTF-8 JSON or not an object; OSError (e.g. missing) propagates."""
    p = Path(path)
    head = f"{p}: corrupt {what}: " if what else f"{p}: "
    tail = f"; {fix}" if fix else ""
    try:
        obj = loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{head}not valid JSON ({str(e).splitlines()[0]}){tail}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{head}expected a JSON object, got a {type(obj).__name__}{tail}")
    return obj
