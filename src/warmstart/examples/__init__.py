"""The example recipes, shipped with the package (package data), so the walkthrough (docs/toolkit.md) runs
from any directory: `recipes/NAME` (the paths docs/ uses) or a bare NAME that is not a file here means the
packaged copy (`warmstart.config.recipe_path`); `warmstart recipe list` shows them, `warmstart recipe copy` writes
them out to edit. Their relative paths (`corpus/shards`, `runs/upstream`) are the walkthrough's, relative to where
it runs.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
PREFIX = "recipes"  # the paths docs/ uses: recipes/pretrain.yaml, recipes/continual/rewarm-sweep.yaml


def names() -> list[str]:
    """Every packaged recipe, as a POSIX path relative to the examples (e.g. 'continual/rewarm-sweep.yaml')."""
    return sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.yaml"))


def find(spec: str | Path) -> Path | None:
    """The packaged file `spec` names (`recipes/NAME` or `NAME`, with or without `.yaml`), or None."""
    parts = Path(spec).parts
    if not parts or Path(spec).is_absolute() or ".." in parts:
        return None
    if parts[0] == PREFIX:
        parts = parts[1:]
    if not parts:
        return None
    rel = Path(*parts)
    if rel.suffix != ".yaml":
        rel = rel.with_name(rel.name + ".yaml")
    path = ROOT / rel
    return path if path.is_file() else None


def description(path: Path) -> str:
    """The first comment line of a recipe (what it is), or ''."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
