"""Running `prepare`'s tasks (data/tasks.py) on an existing engine: datatrove's executors, warmstart[cluster].

datatrove (Hugging Face's data pipeline library; FineWeb was built with it) brings what a cluster run needs
and warmstart should not grow itself: a Ray executor that retries a task whose worker died, a Slurm executor
that submits array jobs, and completion markers so a re-run skips finished tasks. warmstart gives it one
pipeline step, `TaskJob`, whose rank is the task number; the tasks' outputs and the merge are warmstart's own,
so the engine never decides the order of anything written.

  ray    connects to `address` (or $RAY_ADDRESS: a running cluster, `ray start --head`), or starts a new
         local Ray when none is given; `workers` tasks run at once (default: one per CPU of the cluster);
         blocks until every task has ended.
  slurm  writes an sbatch array script and submits it with `sbatch` (datatrove's SlurmPipelineExecutor);
         returns at once: run the same `prepare` again when the job has finished, and it writes the shards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

from warmstart.data.tasks import TaskJob, run_task
from warmstart.errors import UserError

EXTRA_HINT = "pip install 'warmstart[cluster]'"


def _require(module: str, executor: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"executor {executor}: needs the optional packages ray and datatrove; {EXTRA_HINT}"
        ) from None


@contextlib.contextmanager
def _quiet_engine():
    """datatrove logs every task's start and stats (loguru); warmstart shows its own progress and summary."""
    from loguru import logger

    logger.disable("datatrove")
    try:
        yield
    finally:
        logger.enable("datatrove")


def run_inline(job: TaskJob) -> None:
    """Every task in this process, one after another (the task path without an engine; used by tests)."""
    for task in job.tasks:
        run_task(job, task)


def check_reachable(address: str, seconds: float = 5.0) -> None:
    """A HOST:PORT Ray address must answer a TCP connection within `seconds`: `ray.init` on an address where
    nothing listens retries without end. UserError otherwise; other address forms (ray://, auto) pass."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as e:
        raise UserError(f"executor ray: nothing answers at --address {address} ({e.strerror or e}); start a head "
                        "there with `ray start --head --port PORT`, or leave --address out for a local Ray") from None


def run_ray(job: TaskJob, logs: Path, address: str | None, workers: int | None, progress: bool) -> None:
    """Run every unfinished task on Ray (datatrove's RayPipelineExecutor); returns when all have ended."""
    if address:
        check_reachable(address)
    ray = _require("ray", "ray")
    ray_executor = _require("datatrove.executor.ray", "ray")
    started = not ray.is_initialized()
    if started:
        try:
            # "local": a new Ray here, never a cluster that happens to run here (ray.init's default)
            target = address or os.environ.get("RAY_ADDRESS") or "local"
            ray.init(address=target, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"at {address}" if address else "locally"
            raise UserError(
                f"executor ray: cannot connect to or start Ray {where} ({_first_line(e)})"
            ) from None
    try:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        with _quiet_engine(), _progress(job, progress):
            executor = ray_executor.RayPipelineExecutor(
                [job],
                tasks=len(job.tasks),
                workers=workers,
                logging_dir=str(logs),
                cpus_per_task=1,
                mem_per_cpu_gb=1,
                skip_completed=True,
            )
            executor.run()
    finally:
        if started:
            ray.shutdown()


def slurm_executor(job: TaskJob, logs: Path, slurm, workers: int | None):
    """datatrove's SlurmPipelineExecutor for `job` (`launch_job` writes the sbatch script and submits it)."""
    slurm_mod = _require("datatrove.executor.slurm", "slurm")
    return slurm_mod.SlurmPipelineExecutor(
        [job],
        tasks=len(job.tasks),
        time=slurm.time,
        partition=slurm.partition,
        cpus_per_task=1,
        mem_per_cpu_gb=slurm.mem_per_cpu_gb,
        workers=workers or -1,
        job_name="warmstart-prepare",
        env_command=slurm.env_command,
        sbatch_args=dict(slurm.sbatch_args),
        logging_dir=str(logs),
        skip_completed=True,
    )


def submit_slurm(job: TaskJob, logs: Path, slurm, workers: int | None) -> str:
    """Submit the unfinished tasks as a Slurm array job; its job id."""
    if shutil.which("sbatch") is None:
        raise UserError(
            "executor slurm: no `sbatch` on PATH; run prepare on a Slurm login node, "
            "or use --executor local|ray"
        )
    if (logs / "launch_script.slurm").is_file():  # these very tasks were submitted by an earlier run
        raise UserError(
            f"executor slurm: a job for these {len(job.tasks)} unfinished tasks was already submitted "
            f"(logs: {logs}); run again once it has ended, or delete that directory to submit them again"
        )
    with _quiet_engine():
        executor = slurm_executor(job, logs, slurm, workers)
        executor.launch_job()
    return str(executor.job_id)


@contextlib.contextmanager
def _progress(job: TaskJob, enabled: bool):
    """A bar of finished tasks (and tokens written), read from the tasks' done files while the engine runs."""
    import json

    from warmstart.progress import bar as progress_bar

    stop = threading.Event()
    with progress_bar(len(job.tasks), desc="tasks", unit=" task", enabled=enabled) as bar:

        def poll() -> None:
            seen: set[int] = set()
            tokens = 0
            while True:
                for i, task in enumerate(job.tasks):
                    if i not in seen and task.done:
                        seen.add(i)
                        with contextlib.suppress(OSError, ValueError):
                            tokens += json.loads(task.file(".json").read_text())["tokens"]
                        bar.update(1)
                        bar.set_postfix_str(f"{tokens / 1e6:.1f}M tok", False)
                if len(seen) == len(job.tasks) or stop.is_set():
                    return
                stop.wait(0.5)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
