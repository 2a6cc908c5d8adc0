"""Data: sources -> tokenized shards on disk -> a deterministic mixture sampler.

`warmstart.data.prepare(...)` mirrors `warmstart prepare`; it is imported on first use so that reading shards
(during training) does not pull in the preparation pipeline.
"""

from __future__ import annotations

__all__ = ["prepare"]


def __getattr__(name: str):
    if name == "prepare":
        from warmstart.data.preparation import prepare

        return prepare
    raise AttributeError(name)
