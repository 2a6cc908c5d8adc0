"""`prepare --executor ray|slurm` on datatrove's executors: the same bytes as `local` from a local Ray and
from a two-node cluster (a head and a worker started here), a worker killed mid-job retried, a stopped job
continued from its finished tasks, a bad record named from the worker that read it; Slurm's array job and
the error without `sbatch`.

Needs `warmstart[cluster]` (ray, datatrove; part of the `dev` extra, so CI runs these)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_prepare import TEXTS, run, tree_digest, write_jsonl

from warmstart.cli import main
from warmstart.data.tasks import work_dir

pytest.importorskip("ray")
pytest.importorskip("datatrove")
# datatrove 0.10 places its Ray actors with arguments Ray 2.60 calls deprecated
pytestmark = pytest.mark.filterwarnings("ignore:placement_group:DeprecationWarning")

# Token authentication (Ray >= 2.5x) would need the test's cluster and driver to share a token file.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def corpus(tmp_path: Path, n: int = 600) -> dict:
    """Two domains; `a` is big enough to make a few tasks of `task_mb` 0.02."""
    a = write_jsonl(tmp_path / "a.jsonl", [f"{i}: " + TEXTS[i % len(TEXTS)] * (1 + i % 5) for i in range(n)])
    b = write_jsonl(tmp_path / "b.jsonl", TEXTS)
    return {"a": [{"path": str(a)}], "b": [{"path": str(b)}]}


def write_recipe(tmp_path: Path, tokenizer_dir, out: Path, domains: dict, **kw) -> Path:
    p = tmp_path / f"{out.name}.yaml"
    p.write_text(
        yaml.safe_dump(
            {"tokenizer": str(tokenizer_dir), "out": str(out), "domains": domains, "val_docs": 7, **kw}
        )
    )
    return p


def test_local_ray_with_two_workers_writes_the_local_bytes(tmp_path, tokenizer_dir, capfd, monkeypatch):
    domains = corpus(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths in the recipe: the workers run in directories of their own
    relative = {name: [{"path": Path(s["path"]).name} for s in srcs] for name, srcs in domains.items()}
    run(tokenizer_dir, Path("local"), relative, val_docs=7)
    recipe = write_recipe(tmp_path, tokenizer_dir, Path("ray"), relative, task_mb=0.05)
    assert main(["prepare", str(recipe), "--executor", "ray", "--workers", "2", "--quiet"]) == 0
    out = capfd.readouterr().out
    assert "executor ray: " in out and "tasks run" in out
    assert tree_digest(tmp_path / "ray") == tree_digest(tmp_path / "local")
    assert not work_dir(tmp_path / "ray").exists()


# ----------------------------------------------------------------------------------------------- a 2-node clu
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A Ray head and a second worker node (one CPU each) on this machine; yields the address and the two
    `ray start` processes' ids; stopped (their process groups killed) at the end."""
    import ray

    ray_bin = str(Path(sys.executable).parent / "ray")
    if not Path(ray_bin).is_file():
        ray_bin = shutil.which("ray") or pytest.skip("ray is importable but its `ray` command is not on PATH")
    port = _free_port()
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
    procs = []

    def start(args):
        procs.append(
            subprocess.Popen(
                [ray_bin, "start", *args, *common],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    try:
        start(
            [
                "--head",
                f"--port={port}",
                "--include-dashboard=false",
                f"--ray-client-server-port={_free_port()}",
            ]
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    pytest.fail("the Ray head did not start within 60 s")
                time.sleep(0.25)
        address = f"127.0.0.1:{port}"
        start([f"--address={address}"])
        ray.init(address=address, log_to_driver=False)
        try:
            while ray.cluster_resources().get("CPU", 0) < 2:
                if time.monotonic() > deadline:
                    pytest.fail("the second Ray node did not join within 60 s")
                time.sleep(0.25)
        finally:
            ray.shutdown()
        yield address, [p.pid for p in procs]
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _descendants(roots: list[int]) -> dict[int, str]:
    """pid -> command line of every live process below `roots` (the cluster's own processes)."""
    parent, cmd = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd[int(d.name)] = (d / "cmdline").read_text().replace("\0", " ")
            except (OSError, IndexError, ValueError):
                continue
    out = {}
    for pid in parent:
        p = pid
        while p in parent and p not in roots and p > 1:
            p = parent[p]
        if p in roots:
            out[pid] = cmd[pid]
    return out


def _prepare_proc(recipe: Path, address: str, workers: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "warmstart",
        "prepare",
        str(recipe),
        "--executor",
        "ray",
        "--address",
        address,
        "--workers",
        str(workers),
        "--quiet",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(out: Path) -> list[Path]:
    return sorted(work_dir(out).rglob("task-*.json"))


def test_two_node_cluster_writes_the_local_bytes(tmp_path, tokenizer_dir, cluster):
    address, _ = cluster
    domains = corpus(tmp_path)
    run(tokenizer_dir, tmp_path / "local", domains, val_docs=7)
    result = run(
        tokenizer_dir, tmp_path / "ray", domains, val_docs=7, executor="ray", address=address, task_mb=0.05
    )
    assert result.tasks_run >= 3
    assert tree_digest(tmp_path / "ray") == tree_digest(tmp_path / "local")


def test_worker_killed_mid_job_is_retried(tmp_path, tokenizer_dir, cluster):
    address, roots = cluster
    domains = corpus(tmp_path, n=1500)
    out = tmp_path / "ray"
    proc = _prepare_proc(write_recipe(tmp_path, tokenizer_dir, out, domains, task_mb=0.05), address, 2)
    killed = None
    deadline = time.monotonic() + 90
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        busy = [p for p, c in _descendants(roots).items() if c.startswith("ray::RankWorker.run_for_rank")]
        if busy and _done(out):  # mid-job: some tasks finished, one running
            os.kill(busy[0], signal.SIGKILL)
            killed = busy[0]
        time.sleep(0.05)
    _, err = proc.communicate(timeout=180)
    assert killed is not None, "no task was seen running"
    assert proc.returncode == 0, err
    run(tokenizer_dir, tmp_path / "local", domains, val_docs=7)
    assert tree_digest(out) == tree_digest(tmp_path / "local")


def test_stopped_job_continues_from_finished_tasks(tmp_path, tokenizer_dir, cluster):
    address, _ = cluster
    domains = corpus(tmp_path, n=1500)
    out = tmp_path / "ray"
    recipe = write_recipe(tmp_path, tokenizer_dir, out, domains, task_mb=0.05)
    proc = _prepare_proc(recipe, address, 1)
    deadline = time.monotonic() + 90
    while len(_done(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # the user's Ctrl-C
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and not (out / "manifest.json").exists()
    time.sleep(1)  # a task the stop cut off may still land its files (complete, by rename) or not at all
    finished = len(_done(out))
    result = run(tokenizer_dir, out, domains, val_docs=7, executor="ray", address=address, task_mb=0.05)
    total = result.tasks_run + result.tasks_reused
    assert finished >= 2 and result.tasks_reused == finished and result.tasks_run == total - finished >= 1
    run(tokenizer_dir, tmp_path / "local", domains, val_docs=7)
    assert tree_digest(out) == tree_digest(tmp_path / "local")


def test_bad_record_named_by_file_and_line_from_a_worker(tmp_path, tokenizer_dir, cluster, capfd):
    address, _ = cluster
    lines = [json.dumps({"text": f"document {i} " * 20}) for i in range(400)]
    lines[351] = '{"text": 7}'
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    recipe = write_recipe(
        tmp_path, tokenizer_dir, tmp_path / "out", {"web": [{"path": str(path)}]}, task_mb=0.02
    )
    assert main(["prepare", str(recipe), "--executor", "ray", "--address", address, "--quiet"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"error: {path}:352: 'text' is a int, not a string" in err[0], err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- slurm
def test_an_address_where_nothing_listens_is_one_line_within_seconds(tmp_path, tokenizer_dir, capfd):
    """`ray.init` retries an address where nothing answers without end; prepare says so in one line instead."""
    address = f"127.0.0.1:{_free_port()}"  # bound and closed: nothing listens there
    recipe = write_recipe(tmp_path, tokenizer_dir, tmp_path / "out", corpus(tmp_path))
    start = time.monotonic()
    assert main(["prepare", str(recipe), "--executor", "ray", "--address", address, "--quiet"]) == 2
    assert time.monotonic() - start < 60
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"executor ray: nothing answers at --address {address}" in err[0], err
    assert not (tmp_path / "out").exists()


def test_slurm_without_sbatch_is_one_line(tmp_path, tokenizer_dir, capfd, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    recipe = write_recipe(
        tmp_path, tokenizer_dir, tmp_path / "out", corpus(tmp_path), slurm={"partition": "cpu"}
    )
    assert main(["prepare", str(recipe), "--executor", "slurm", "--quiet"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "executor slurm: no `sbatch` on PATH" in err[0], err
    assert not (tmp_path / "out").exists()


def test_slurm_array_job_script(tmp_path, tokenizer_dir):
    """The sbatch script datatrove writes for prepare's tasks: one array index per task, the recipe's
    settings."""
    from warmstart.data.executors import slurm_executor
    from warmstart.data.preparation import _config
    from warmstart.data.tasks import TaskJob, plan_tasks
    from warmstart.data.tokenizer import load_tokenizer

    domains = corpus(tmp_path)
    cfg = _config(
        {
            "tokenizer": str(tokenizer_dir),
            "out": str(tmp_path / "out"),
            "domains": domains,
            "executor": "slurm",
            "slurm": {
                "partition": "cpu",
                "time": "2:00:00",
                "env_command": "source /venv/bin/activate",
                "sbatch_args": {"account": "lm"},
            },
        },
        {},
    )
    tasks = plan_tasks("a", "0" * 64, cfg.domains["a"], tmp_path / "out", 20_000)
    job = TaskJob(tasks, cfg.domains, load_tokenizer(str(tokenizer_dir)), None, "uint16", 8, False)
    ex = slurm_executor(job, tmp_path / "logs", cfg.slurm, None)
    script = ex.get_launch_file_contents(
        ex.get_sbatch_args(len(tasks)), "launch_pickled_pipeline executor.pik"
    )
    for line in [
        f"#SBATCH --array=0-{len(tasks) - 1}",
        "#SBATCH --partition=cpu",
        "#SBATCH --time=2:00:00",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --account=lm",
        "source /venv/bin/activate",
        "launch_pickled_pipeline executor.pik",
    ]:
        assert line in script, line
    assert len(tasks) >= 3 and ex.world_size == len(tasks)


def test_slurm_array_job_then_merge(tmp_path, tokenizer_dir, capfd, monkeypatch):
    """Submitted through datatrove's Slurm executor to an `sbatch` that records what it was given (there is no
    Slurm here); its array indices then run as Slurm would run them (`launch_pickled_pipeline` with
    SLURM_ARRAY_TASK_ID and SLURM_NODELIST set); the same command again writes the local bytes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        f'#!/bin/sh\nfor last; do :; done\necho "$@" >> {tmp_path}/sbatch.args\n'
        f'cat "$last" >> {tmp_path}/sbatch.script\necho "Submitted batch job 4242"\n'
    )
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$4"\n')  # `scontrol show hostnames LIST`
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    domains = corpus(tmp_path)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tokenizer_dir, out, domains, task_mb=0.05, slurm={"partition": "cpu"})
    assert main(["prepare", str(recipe), "--executor", "slurm", "--quiet"]) == 0
    said = capfd.readouterr().out
    assert "submitted Slurm job 4242" in said and not out.exists()
    pik = next(work_dir(out).glob("engine-*/executor.pik"))
    n = len(json.loads((pik.parent / "ranks_to_run.json").read_text()))
    script = (tmp_path / "sbatch.script").read_text()
    assert f"#SBATCH --array=0-{n - 1}" in script and "#SBATCH --partition=cpu" in script and n >= 3
    assert main(["prepare", str(recipe), "--executor", "slurm", "--quiet"]) == 2  # not run yet: not again
    assert "already submitted" in capfd.readouterr().err
    launcher = str(Path(sys.executable).parent / "launch_pickled_pipeline")
    for i in range(n):
        subprocess.run(
            [launcher, str(pik)],
            env={**os.environ, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_NODELIST": "localhost"},
            check=True,
            capture_output=True,
            timeout=120,
        )
    assert main(["prepare", str(recipe), "--executor", "slurm", "--quiet"]) == 0
    run(tokenizer_dir, tmp_path / "local", domains, val_docs=7)
    assert tree_digest(out) == tree_digest(tmp_path / "local")
