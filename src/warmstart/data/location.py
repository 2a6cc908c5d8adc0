"""Where a source lives: a local path, or an fsspec URL (`s3://`, `gs://`, `hf://`, `memory://`, `file://`,
any protocol whose fsspec package is installed). `FsPath` has the few `pathlib` methods that data/sources.py
uses, so one reader serves both; the filesystem is made again from the URL after unpickling (a task on another
machine opens its own)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import IO

from warmstart.errors import UserError


def location(path: str) -> Path | FsPath:
    """`path` as a local `Path`, or as an `FsPath` when it is a URL (`protocol://...`)."""
    return FsPath(path) if "://" in path else Path(path)


class FsPath:
    def __init__(self, url: str, info: dict | None = None):
        self.url = url
        self._info = info  # from a listing: spares one request per file

    def __getstate__(self) -> dict:
        return {"url": self.url, "_info": self._info}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"FsPath({self.url!r})"

    def __str__(self) -> str:
        return self.url

    def __eq__(self, other) -> bool:
        return isinstance(other, FsPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    # ------------------------------------------------------------------------------------- the filesystem
    @property
    def fs_path(self) -> tuple:
        """(fsspec filesystem, its path for this URL)."""
        try:
            import fsspec
        except ImportError:  # pragma: no cover - a dependency of datasets and of warmstart[cluster]
            raise UserError(f"{self.url}: reading URLs needs fsspec; pip install fsspec") from None
        try:
            return fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:
            protocol = self.url.split("://", 1)[0]
            raise UserError(
                f"{self.url}: no filesystem for {protocol}:// ({str(e).splitlines()[0]}); install its fsspec "
                "package (s3fs, gcsfs, huggingface_hub, ...)"
            ) from None

    def _stat(self) -> dict | None:
        if self._info is None:
            fs, path = self.fs_path
            try:
                self._info = fs.info(path)
            except FileNotFoundError:
                return None
        return self._info

    # ----------------------------------------------------------------------------------- pathlib's subset
    @property
    def name(self) -> str:
        return PurePosixPath(self.fs_path[1]).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.fs_path[1]).suffix

    @property
    def suffixes(self) -> list[str]:
        return PurePosixPath(self.fs_path[1]).suffixes

    def __truediv__(self, name: str) -> FsPath:
        return FsPath(self.url.rstrip("/") + "/" + name)

    def exists(self) -> bool:
        return self._stat() is not None

    def is_dir(self) -> bool:
        info = self._stat()
        return info is not None and info.get("type") == "directory"

    def is_file(self) -> bool:
        info = self._stat()
        return info is not None and info.get("type") == "file"

    def stat(self) -> SimpleNamespace:
        info = self._stat()
        if info is None:
            raise FileNotFoundError(self.url)
        return SimpleNamespace(st_size=int(info.get("size") or 0))

    def glob(self, pattern: str) -> list[FsPath]:
        """The files (only) under this directory matching `pattern`, each with its listing's info."""
        fs, root = self.fs_path
        found = fs.glob(root.rstrip("/") + "/" + pattern, detail=True)
        base = self.url.rstrip("/")
        root = root.rstrip("/")
        return [
            FsPath(base + p[len(root) :], info) for p, info in found.items() if info.get("type") == "file"
        ]

    def relative_to(self, root: FsPath) -> PurePosixPath:
        return PurePosixPath(self.url[len(root.url.rstrip("/")) + 1 :])

    def open_raw(self) -> IO[bytes]:
        fs, path = self.fs_path
        return fs.open(path, "rb")


def open_raw(path: Path | FsPath) -> IO[bytes]:
    """A binary stream of the file's bytes as stored (no decompression)."""
    if isinstance(path, FsPath):
        return path.open_raw()
    return open(path, "rb")  # noqa: SIM115 - the caller closes it
