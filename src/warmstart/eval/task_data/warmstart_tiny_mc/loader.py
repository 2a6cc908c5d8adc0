"""Loads warmstart_tiny_mc's JSONL splits from this directory (lm-eval calls `load` via `custom_dataset`)."""

from pathlib import Path


def load(**kwargs):
    import datasets

    here = Path(__file__).resolve().parent
    files = {split: str(here / f"{split}.jsonl") for split in ("train", "test")}
    return datasets.load_dataset("json", data_files=files)
