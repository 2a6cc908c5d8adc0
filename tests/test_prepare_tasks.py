"""`prepare` cut into tasks (data/tasks.py): a source's parts read back its documents exactly, and the tasks'
outputs merge into the same bytes as the local path, whatever the task size; a bad record in a later part is
named by its line in the whole file. Run in-process (`run_inline`); the engines are tested in
test_prepare_executors.py."""

from __future__ import annotations

import gzip
import json

import pytest
from test_prepare import TEXTS, make_source, run, tree_digest, write_jsonl

from warmstart.config import PrepareConfig, SourceConfig
from warmstart.data import executors
from warmstart.data.sources import iter_documents, iter_part, source_parts
from warmstart.data.tasks import work_dir
from warmstart.errors import UserError


@pytest.fixture
def inline(monkeypatch):
    """The task path with its tasks run in this process, one after another, in place of Ray."""
    monkeypatch.setattr(executors, "run_ray", lambda job, *a, **k: executors.run_inline(job))


def test_parts_read_back_the_source_at_any_cut(tmp_path):
    texts = [f"doc {i} " + "x" * (i % 7) for i in range(40)] + ["", "last"]
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"text": t}) + "\n" + "\n" * (i % 3 == 0) for i, t in enumerate(texts))
    )
    src = SourceConfig(path=str(path))
    size = path.stat().st_size
    for part_bytes in [1, 2, 3, 7, 16, 17, 64, size - 1, size, size + 5]:
        parts = source_parts(src, part_bytes)
        assert [t for p in parts for t in iter_part(src, p)] == texts == list(iter_documents(src)), part_bytes
        if part_bytes < size:
            assert len(parts) == -(-size // part_bytes)


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "parquet", "text-dir"])
def test_tasks_merge_to_the_local_bytes(tmp_path, tokenizer_dir, inline, kind):
    src, _ = make_source(kind, tmp_path, TEXTS * 3)
    other = {"path": str(write_jsonl(tmp_path / "e.jsonl", TEXTS[:7]))}
    domains = {"a": [src, other], "b": [other]}
    run(tokenizer_dir, tmp_path / "local", domains, val_docs=5)
    for task_mb in (1e-4, 3e-4, 64):
        out = tmp_path / f"tasks-{task_mb}"
        result = run(tokenizer_dir, out, domains, val_docs=5, executor="ray", task_mb=task_mb, batch_docs=3)
        assert tree_digest(out) == tree_digest(tmp_path / "local"), task_mb
        assert result.tasks_run > (4 if task_mb < 1 and kind in ("jsonl", "text-dir") else 2)
        assert not work_dir(out).exists()  # spent once the shards are in place


def test_bad_record_in_a_later_part_named_by_its_line(tmp_path, tokenizer_dir, inline):
    lines = [json.dumps({"text": f"document {i}"}) for i in range(30)]
    lines[23] = '{"text": "cut'
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"^{path}:24: not valid JSON") as e:
        run(tokenizer_dir, tmp_path / "out", {"web": [{"path": str(path)}]}, executor="ray", task_mb=1e-4)
    assert "--skip-bad-records" in str(e.value)
    assert not (tmp_path / "out").exists()
    # skipped and counted, with the same shards as the local path
    run(tokenizer_dir, tmp_path / "local", {"web": [{"path": str(path)}]}, skip_bad_records=True)
    result = run(
        tokenizer_dir,
        tmp_path / "tasks",
        {"web": [{"path": str(path)}]},
        skip_bad_records=True,
        executor="ray",
        task_mb=1e-4,
    )
    assert result.domains[0].bad_records == 1
    assert tree_digest(tmp_path / "tasks") == tree_digest(tmp_path / "local")


def test_finished_tasks_of_a_failed_run_are_kept_and_not_redone(tmp_path, tokenizer_dir, inline):
    good = write_jsonl(tmp_path / "good.jsonl", TEXTS * 4)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"text": "fine"}\n')[:-6])  # a truncated gzip: the task fails
    domains = {"a": [{"path": str(good)}], "b": [{"path": str(bad)}]}
    with pytest.raises(UserError, match="corrupt or truncated"):
        run(tokenizer_dir, tmp_path / "out", domains, executor="ray", task_mb=3e-4)
    done = sorted(work_dir(tmp_path / "out").rglob("task-*.json"))
    assert len(done) >= 3 and not (tmp_path / "out").exists()
    bad.write_bytes(gzip.compress(b'{"text": "fine"}\n'))  # fixed: a new input, so domain b's tasks are new
    result = run(tokenizer_dir, tmp_path / "out", domains, executor="ray", task_mb=3e-4)
    assert result.tasks_reused == len(done) and result.tasks_run == 1
    run(tokenizer_dir, tmp_path / "local", domains)
    assert tree_digest(tmp_path / "out") == tree_digest(tmp_path / "local")


def test_executor_settings_are_checked():
    base = {"tokenizer": "t", "out": "o", "domains": {"a": [{"path": "x"}]}}
    with pytest.raises(ValueError, match="slurm section"):
        PrepareConfig(**base, executor="slurm")
    with pytest.raises(ValueError, match="address is for executor ray"):
        PrepareConfig(**base, address="127.0.0.1:6379")
    assert PrepareConfig(**base).executor == "local"
