"""train.keep_heap: large freed buffers stay in malloc's heap for reuse, and the numbers do not change."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from train_helpers import assert_same_weights, metrics_without_timing, tiny_recipe

from warmstart.train.host_allocator import heap_usage
from warmstart.train.loop import train

pytestmark = pytest.mark.skipif(heap_usage() is None, reason="needs glibc >= 2.33 (mallinfo2)")

PROBE = """
import torch
from warmstart.train.host_allocator import heap_usage, keep_heap
if {enable}:
    assert keep_heap(True)
x = torch.ones(64 << 20, dtype=torch.float32)  # 256 MiB, far above glibc's largest mmap threshold
live = heap_usage()
del x
freed = heap_usage()
print(live.heap, live.mmapped, freed.heap, freed.mmapped)
"""


def _probe(enable: bool) -> list[int]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE.format(enable=enable))],
                         capture_output=True, text=True, check=True)
    return [int(v) for v in out.stdout.split()]


def test_big_buffer_is_kept_in_the_heap_after_free():
    big = 256 << 20
    live_heap, live_mmapped, freed_heap, freed_mmapped = _probe(True)
    assert live_mmapped < big <= live_heap  # served from the heap, not a private mapping
    assert freed_heap >= big  # still there for the next step's logits after the free


def test_glibc_default_maps_and_unmaps_big_buffers():
    big = 256 << 20
    live_heap, live_mmapped, freed_heap, freed_mmapped = _probe(False)
    assert live_mmapped >= big > live_heap
    assert freed_mmapped < big  # handed back to the OS: the next step faults it in again


def test_keep_heap_changes_no_number(data_dir, tokenizer_dir, tmp_path):
    runs = {}
    for keep in (False, True):
        r = tiny_recipe(data_dir, tokenizer_dir, tmp_path, name=f"keep{keep}", overrides=[f"train.keep_heap={keep}"])
        runs[keep] = train(r).run_dir
    assert metrics_without_timing(runs[False]) == metrics_without_timing(runs[True])
    assert_same_weights(runs[False] / "final" / "model.safetensors", runs[True] / "final" / "model.safetensors")


@pytest.mark.parametrize("setting, n_params, on", [
    ("auto", 1_800_000, True),
    ("auto", 49_999_999, True),
    ("auto", 50_000_000, False),
    ("auto", 190_000_000, False),
    (True, 190_000_000, True),
    (False, 1_000, False),
])
def test_keep_heap_auto_is_on_for_small_models_only(setting, n_params, on):
    from warmstart.train.host_allocator import wanted

    assert wanted(setting, n_params) is on
