"""Where a command will write: checked before any work, so a bad output path is one line, not a late traceback.

`check_out_dir` / `check_out_file` are called at the boundary where an output path enters (a recipe's out_dir,
a command's --out). They refuse a path whose kind is wrong (a file where a directory is needed, or the other way
round, or a file in the middle of the path) and a location that cannot be written (read-only filesystem, no
permission), which is found by creating and removing an empty temporary directory in the nearest existing
folder: permission bits alone do not tell (root ignores them; a read-only mount ignores them too).
Nothing is left behind and no existing file is touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from warmstart.errors import UserError

# OSErrors that are the environment's answer to a write (not bugs): reported as one line naming the file
ENVIRONMENT_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                      errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}


def _nearest_existing(path: Path, what: str) -> Path:
    """The closest ancestor of `path` (or `path` itself) that exists; a file there is an error."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{what}: {p} is a file, so {path} cannot be created below it")
            return p
    return Path.cwd()  # pragma: no cover - a relative path's parents end at '.', which exists


def _probe_writable(folder: Path, what: str, target: Path) -> None:
    try:
        probe = tempfile.mkdtemp(prefix=".warmstart-probe-", dir=folder)
    except OSError as e:
        raise UserError(f"{what}: cannot write {target} ({e.strerror or e} in {folder})") from None
    with contextlib.suppress(OSError):
        os.rmdir(probe)


def check_out_dir(path: str | os.PathLike, what: str) -> Path:
    """`path` is an existing directory or can be created, and its folder can be written; returns it as a Path.

    Raises UserError (naming `what`, e.g. "--out" or "out_dir") for an existing non-directory, a file among its
    parents, or an unwritable location.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what}: {path} is a file, not a directory; choose another {what}")
    folder = _nearest_existing(path, what)
    _probe_writable(folder, what, path)
    return path


def check_out_file(path: str | os.PathLike, what: str) -> Path:
    """`path` names a file that can be written: not a directory, its parents creatable and writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what}: {path} is a directory, not a file; choose another {what}")
    folder = _nearest_existing(path.parent, what)
    _probe_writable(folder, what, path)
    return path


def describe_os_error(e: OSError) -> str | None:
    """One line for an environmental OSError (read-only, permission, disk full, wrong kind of path), else None."""
    if e.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = e.filename if e.filename is not None else "a file"
    return f"{where}: {e.strerror or e}"
