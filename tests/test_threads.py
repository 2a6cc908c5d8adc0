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
        (135_000_000, 16, 6.4, 1, 10),  # others keep 6.4 cores busy
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
        assert 1 <= torch.get_num_threads() <= threads.usable_cores()  # the busy share moves between samples
        assert line.startswith(f"threads: {torch.get_num_threads()} (auto: {threads.usable_cores()} cores, ")
        assert line.endswith(" busy with other work; train.cpu_threads to set it)")
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


def test_busy_cores_sees_a_busy_process():
    """A busy loop pinned to one of this process's cores shows as about one busy core more than before."""
    import os
    import subprocess
    import sys

    if not hasattr(os, "sched_getaffinity") or not os.path.exists("/proc/stat"):
        pytest.skip("Linux only")
    cpu = min(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        import time

        time.sleep(0.5)
        loaded = threads.busy_cores(1.0)
    finally:
        busy.kill()
        busy.wait()
    assert 0.5 <= loaded <= threads.usable_cores()
