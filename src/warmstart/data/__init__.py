"""Data: sources -> tokenized shards on disk -> a deterministic mixture sampler."""

from warmstart.data.pipeline import prepare

__all__ = ["prepare"]
