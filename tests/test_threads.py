"""train.cpu_threads: auto = the free cores (shared by a torchrun's local processes, capped for small models);
a number or null (torch's default) as given."""

from __future__ import annotations

import pytest
import torch

from warmstart.config import TrainConfig
from warmstart.runtime import threads


@pytest.mark.parametrize(
    ("params", "cores", "load", "procs", "want"),
    [
        (135_000_000, 16, 0.0, 1, 16),  # free cores: all
        (135_000_000, 16, 6.4, 1, 10),  # others keep 6.4 busy
        (135_000_000, 2, 6.0, 1, 1),  # over-subscribed: one thread, never zero
        (135_000_000, 16, 0.0, 4, 4),  # a torchrun of 4 on this host shares them
        (135_000_000, 16, 2.0, 3, 4),
        (1_000_000, 16, 0.0, 1, threads.SMALL_THREADS),  # a small model: few threads
        (1_000_000, 2, 1.2, 1, 1),
    ],
)
def test_choose_threads(params, cores, load, procs, want):
    assert threads.choose_threads(params, cores, load, procs) == want


def test_apply_sets_torchs_threads():
    before = torch.get_num_threads()
    try:
        assert threads.apply(3, 10) == "threads: 3 (train.cpu_threads)" and torch.get_num_threads() == 3
        line = threads.apply("auto", 100_000_000)
        n = threads.choose_threads(100_000_000, threads.usable_cores(), threads.others_load())
        assert torch.get_num_threads() in (n, n - 1, n + 1)  # the load average may move between the two reads
        assert line.startswith(f"threads: {torch.get_num_threads()} (auto: {threads.usable_cores()} cores, load ")
        assert threads.apply(None, 10) == f"threads: {torch.get_num_threads()} (torch's default)"
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_setting_validates():
    base = {"steps": 1}
    assert TrainConfig.model_validate(base).cpu_threads == "auto"
    assert TrainConfig.model_validate({**base, "cpu_threads": 4}).cpu_threads == 4
    assert TrainConfig.model_validate({**base, "cpu_threads": None}).cpu_threads is None
    for bad in (0, -2, "many"):
        with pytest.raises(ValueError):
            TrainConfig.model_validate({**base, "cpu_threads": bad})
