"""SIGTERM and SIGINT: a clean stop in every phase of a command.

Inside `handling()` a signal raises `Interrupted` where the program is: the stack unwinds, so atomic writes
remove their temp files (`warmstart.atomic`) and the run-directory lock is released; the CLI prints one line
and exits 128 + the signal number. Inside `deferred()` (the training step loop) the signal is only recorded:
the loop finishes its step, writes a checkpoint and stops on its own. A forked child that inherited the handler
dies of the signal as it would without it.

`pause_point(name)` is a test hook: when the environment variable WARMSTART_TEST_PAUSE_AT equals `name`, the
process says so on stderr and waits there (up to 10 minutes, or until a deferred signal arrives), so a test can
signal or kill it in that exact phase. Unset, it does nothing. Points: `startup` (config.yaml written, before
step 1), `checkpoint_write:STEP` (a checkpoint half-written), `before_final` (the last checkpoint written,
final/ not begun), `final_save` (final/ written to its temp folder, not yet renamed); a job's stages
(recipes/jobs): `job:format`, `job:prepared`, `job:shift`, `job:searched`, `job:rung` (a probe's rung measured),
`job:decision`, each with its result written and the next stage not begun.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

HANDLED = (signal.SIGTERM, signal.SIGINT)
PAUSE_ENV = "WARMSTART_TEST_PAUSE_AT"


class Interrupted(BaseException):
    """A SIGTERM/SIGINT stopped the command (a BaseException, like KeyboardInterrupt, so cleanups run)."""

    def __init__(self, signum: int, note: str = ""):
        super().__init__(signum)
        self.signum = signum
        self.note = note  # what to do next, added by the layer that knows (e.g. "continue it with --resume")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Deferred:
    """A signal that arrived inside `deferred()`; the owner calls `take()` once it has acted on it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.consumed = False

    def take(self) -> int:
        self.consumed = True
        return self.signum or signal.SIGTERM


_owner_pid: int | None = None
_deferred: list[Deferred] = []


def _handle(signum, frame) -> None:
    if os.getpid() != _owner_pid:  # a forked child: die of the signal, as without the handler
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _deferred:
        _deferred[-1].signum = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into `Interrupted` for the duration (main thread only; nests)."""
    global _owner_pid
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_owner = _owner_pid
    old = {s: signal.signal(s, _handle) for s in HANDLED}
    _owner_pid = os.getpid()
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _owner_pid = previous_owner


@contextlib.contextmanager
def deferred() -> Iterator[Deferred]:
    """Record SIGTERM/SIGINT instead of raising; one not `take()`n by the end is raised as `Interrupted` then."""
    req = Deferred()
    _deferred.append(req)
    try:
        yield req
    finally:
        _deferred.remove(req)
    if req.signum is not None and not req.consumed:
        raise Interrupted(req.signum)


def pause_point(name: str) -> None:
    """Test hook (see the module docstring): wait here when WARMSTART_TEST_PAUSE_AT == name."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    print(f"warmstart: test pause at {name}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (_deferred and _deferred[-1].signum is not None):
        time.sleep(0.02)
