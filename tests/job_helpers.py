"""Running a job command in a subprocess, stopping it at a named stage (WARMSTART_TEST_PAUSE_AT), and comparing
two job directories' results."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from train_helpers import assert_same_weights, metrics_without_timing


def env(pause: str | None = None) -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    e.pop("WARMSTART_TEST_PAUSE_AT", None)
    if pause:
        e["WARMSTART_TEST_PAUSE_AT"] = pause
    return e


def kill_at(args: list[str], pause: str, timeout: float = 240, sig: int = signal.SIGKILL) -> str:
    """Start `warmstart ARGS`, wait until it pauses at `pause`, send `sig` (SIGKILL: it dies at once; another: the
    job stops itself); its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "warmstart", *args], env=env(pause), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    err: list[str] = []

    def read():
        for line in iter(proc.stderr.readline, b""):
            err.append(line.decode(errors="replace"))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(f"test pause at {pause}" in line for line in err):
            proc.send_signal(sig)
            code = proc.wait(timeout=120)
            assert code == (-sig if sig == signal.SIGKILL else 128 + sig), "".join(err)[-3000:]
            t.join(timeout=10)
            return "".join(err)
        if proc.poll() is not None:
            raise AssertionError(f"ended (exit {proc.returncode}) before pausing at {pause}: {''.join(err)[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no pause at {pause} within {timeout} s")


def run(args: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "warmstart", *args], env=env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def run_in_process(args: list[str]) -> str:
    """`warmstart ARGS` in this process (the uninterrupted job a killed one must equal); its stdout. Exit 0."""
    import contextlib
    import io

    from warmstart.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    return buf.getvalue()


def decision(out: Path) -> dict:
    return json.loads((out / "decision.json").read_text())


def assert_same_job(a: Path, b: Path) -> None:
    """The same decision, the same rung measurements, the same run (weights bit for bit, metrics, FLOPs)."""
    assert decision(a) == decision(b)
    for rung in sorted((a / "probes").glob("*/rung-*.json")):
        other = b / rung.relative_to(a)
        assert json.loads(rung.read_text()) == json.loads(other.read_text()), rung
    assert_same_weights(a / "run" / "final" / "model.safetensors", b / "run" / "final" / "model.safetensors")
    assert metrics_without_timing(a / "run") == metrics_without_timing(b / "run")


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}
