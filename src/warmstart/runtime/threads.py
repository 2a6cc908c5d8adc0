"""How many CPU threads torch uses in a training process: the cores that are free, not all of them.

torch's default intra-op thread count is every core. When other processes keep some cores busy, its threads wait
for each other at the end of every parallel region (a preempted thread stalls the whole op) and throughput
collapses: with load 6 on 2 cores a 10-step SmolLM2 run went at 18 tokens/s against 130 on free cores. `auto`
takes the cores this process may run on (`os.sched_getaffinity`) minus the others' load (`os.getloadavg`, 1
minute), shares them among the processes of one torchrun on this host, and gives a model under SMALL_PARAMS at
most SMALL_THREADS (too little work per op to spread over more). `bench/threads.py` measures the choice against
torch's default, with and without competing CPU-bound processes.
"""

from __future__ import annotations

import os

SMALL_PARAMS = 5_000_000
SMALL_THREADS = 2


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; os.cpu_count where that is not available)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def others_load() -> float:
    """The 1-minute load average (runnable processes), 0.0 where the system does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_threads(n_params: int, cores: int, load: float, local_procs: int = 1) -> int:
    """Threads for one of `local_procs` training processes on a host with `cores` usable cores and `load`
    runnable processes of others: the free cores (rounded, at least 1) shared among the local processes, capped
    at SMALL_THREADS for a model under SMALL_PARAMS parameters."""
    free = max(1, round(cores - load))
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
        cores, load = usable_cores(), others_load()
        n = choose_threads(n_params, cores, load, local_procs)
        torch.set_num_threads(n)
        return f"threads: {n} (auto: {cores} cores, load {load:.1f}; train.cpu_threads to set it)"
    torch.set_num_threads(int(setting))
    return f"threads: {int(setting)} (train.cpu_threads)"
