"""How many CPU threads torch uses in a training process: the cores that are free, not all of them.

torch's default intra-op thread count is every core. When other processes keep some cores busy, its threads wait
for each other at the end of every parallel region (a preempted thread stalls the whole op) and throughput
collapses: with load 6 on 2 cores a 10-step SmolLM2 run went at 18 tokens/s against 130 on free cores. `auto`
takes the idle share of the cores this process may run on (`os.sched_getaffinity`), sampled from /proc/stat over
SAMPLE_S while this process waits (so its own earlier runs do not count, as they would in the load average, which
is the fallback off Linux), shares it among the processes of one torchrun on this host, and gives a model under
SMALL_PARAMS at most SMALL_THREADS (too little work per op to spread over more). `bench/threads.py` measures the
choice against torch's default, with and without competing CPU-bound processes.
"""

from __future__ import annotations

import os
import time

SMALL_PARAMS = 5_000_000
SMALL_THREADS = 2
SAMPLE_S = 0.5


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; os.cpu_count where that is not available)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def _cpu_times() -> dict[int, tuple[int, int]]:
    """{cpu: (idle + iowait jiffies, all jiffies)} from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                v = [int(x) for x in vals]
                out[int(name[3:])] = (v[3] + v[4], sum(v[:8]))
    return out


def busy_cores(sample_s: float = SAMPLE_S) -> float:
    """Cores of this process's affinity set that others keep busy: measured over `sample_s` seconds from
    /proc/stat while this process sleeps; elsewhere the 1-minute load average (0.0 where there is none)."""
    try:
        mine = os.sched_getaffinity(0)
        a = _cpu_times()
        time.sleep(sample_s)
        b = _cpu_times()
    except (AttributeError, OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0
    busy = 0.0
    for cpu in mine & a.keys() & b.keys():
        total = b[cpu][1] - a[cpu][1]
        if total > 0:
            busy += 1.0 - (b[cpu][0] - a[cpu][0]) / total
    return busy


def choose_threads(n_params: int, cores: int, busy: float, local_procs: int = 1) -> int:
    """Threads for one of `local_procs` training processes on a host with `cores` usable cores of which others
    keep `busy` busy: the free cores (rounded, at least 1) shared among the local processes, capped at
    SMALL_THREADS for a model under SMALL_PARAMS parameters."""
    free = max(1, round(cores - busy))
    threads = max(1, free // max(1, local_procs))
    if n_params < SMALL_PARAMS:
        threads = min(threads, SMALL_THREADS)
    return threads


def apply(setting: int | str | None, n_params: int, local_procs: int = 1) -> str:
    """Set torch's intra-op threads from `train.cpu_threads` (a number, 'auto', or None for torch's own default)
    and return what was set, for the run's first lines."""
    import torch

    if setting is None:
        return f"threads: {torch.get_num_threads()} (torch's default)"
    if setting == "auto":
        cores, busy = usable_cores(), busy_cores()
        n = choose_threads(n_params, cores, busy, local_procs)
        torch.set_num_threads(n)
        return f"threads: {n} (auto: {cores} cores, {busy:.1f} busy with other work; train.cpu_threads to set it)"
    torch.set_num_threads(int(setting))
    return f"threads: {int(setting)} (train.cpu_threads)"
