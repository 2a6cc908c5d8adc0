"""A checkpoint is data: a crafted `.metadata` or optimizer item that names code to run is refused in one line,
and the code does not run."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest
from train_helpers import tiny_recipe

from warmstart.errors import UserError
from warmstart.train import checkpoint as ckpt
from warmstart.train.loop import train


class _Payload:
    """Unpickling this touches a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir, tokenizer_dir):
    out = tmp_path_factory.mktemp("safety")
    recipe = tiny_recipe(data_dir, tokenizer_dir, out, "r", train={"steps": 2, "checkpoint_every": 2})
    return train(recipe).run_dir, recipe


def test_crafted_metadata_is_refused_and_runs_nothing(run, tmp_path):
    from warmstart.models.build import build_model

    run_dir, recipe = run
    path = tmp_path / "ck"
    shutil.copytree(ckpt.newest_valid(run_dir / "checkpoints"), path)
    model = build_model(recipe.model, None, seed=0).model
    ckpt.load_into(path, model, None, rank=0)  # the genuine metadata loads through the restricted reader
    marker = tmp_path / "ran"
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UserError, match="refused to load a checkpoint that names code to run"):
        ckpt.load_into(path, model, None, rank=0)
    assert not marker.exists()


def test_crafted_optimizer_item_is_refused_and_runs_nothing(run, tmp_path):
    """Non-tensor items (optimizer settings) are pickles inside the shard: one naming code is refused."""
    import torch
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    from warmstart.models.build import build_model
    from warmstart.train.optim import build_optimizer

    run_dir, recipe = run
    src = ckpt.newest_valid(run_dir / "checkpoints")
    path = tmp_path / "ck"
    shutil.copytree(src, path)
    with open(path / ".metadata", "rb") as f:
        meta = pickle.load(f)
    key = next(k for k, v in meta.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
    info = meta.storage_data[next(i for i in meta.storage_data if i.fqn == key)]
    marker = tmp_path / "ran"
    evil = pickle.dumps(_Payload(marker))
    shard = path / info.relative_path
    data = bytearray(shard.read_bytes())
    assert len(evil) <= info.length, "payload must fit the item's slot"
    data[info.offset : info.offset + info.length] = evil.ljust(info.length, b".")
    shard.write_bytes(bytes(data))
    model = build_model(recipe.model, None, seed=0).model
    optimizer = build_optimizer(model, recipe.optim, lr=1e-3, device=torch.device("cpu"))
    with pytest.raises(UserError, match="names code to run"):
        ckpt.load_into(path, model, optimizer, rank=0)
    assert not marker.exists()


@pytest.mark.parametrize("manifest", ["[]", '{"model": 3}', "{bad"])
def test_checkpoint_manifest_that_is_not_a_table_is_named_damaged(run, tmp_path, manifest):
    run_dir, _ = run
    path = tmp_path / "checkpoints" / ckpt.newest_valid(run_dir / "checkpoints").name
    shutil.copytree(ckpt.newest_valid(run_dir / "checkpoints"), path)
    (path / "manifest.json").write_text(manifest)
    problem = ckpt.verify(path)
    assert problem is not None and "manifest" in problem
    assert ckpt.newest_valid(tmp_path / "checkpoints") is None


# ----------------------------------------------------------------------------------------------- disk, said up front
@pytest.mark.parametrize(("tie", "every", "keep", "kept"), [(True, 0, 2, 1), (False, 2, 3, 3)])
def test_disk_said_up_front_is_what_the_run_leaves(data_dir, tokenizer_dir, tmp_path, capsys, tie, every, keep, kept):
    """The start line's disk estimate against the files: the checkpoints kept (each the estimate plus at most
    250 kB of file headers, DCP metadata, RNG and JSON state) and final/'s weights."""
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, overrides=[
        f"train.checkpoint_every={every}", f"train.keep_checkpoints={keep}",
        f"model.sizes.tie_word_embeddings={str(tie).lower()}"])
    res = train(recipe)
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("disk: "))
    assert ckpt.checkpoint_steps(8, every) == ([8] if not every else [2, 4, 6, 8])
    from warmstart.models.build import build_model

    model = build_model(recipe.model, None, seed=0, seq_len=recipe.data.seq_len).model
    est = ckpt.disk_estimate(model, 8, every, keep)
    assert est["checkpoints"] == kept and f"{kept} checkpoint(s) of ~{ckpt.human_bytes(est['checkpoint_bytes'])}" in line
    dirs = ckpt.list_checkpoints(res.run_dir / "checkpoints")
    assert len(dirs) == kept
    for d in dirs:
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        assert est["checkpoint_bytes"] <= size <= est["checkpoint_bytes"] + 250_000, (size, est)  # headers, RNG
    assert (res.final_dir / "model.safetensors").stat().st_size == pytest.approx(est["final_bytes"], rel=0.02)


def test_a_full_disk_is_one_line_and_the_run_resumes(data_dir, tokenizer_dir, tmp_path, monkeypatch):
    """A checkpoint the disk cannot hold: torch's writer fails with a RuntimeError from its zip writer (what a full
    disk gives, "unexpected pos"); the job names the checkpoint and the space it needs in an ENOSPC OSError (one line
    from the CLI), leaves no half-written directory, and the same run resumes from its last whole checkpoint once
    there is room. Another failure with room to spare is raised as it was."""
    import errno
    from collections import namedtuple

    from warmstart.outputs import describe_os_error

    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, "r", train={"steps": 4, "checkpoint_every": 2})
    real_save, real_usage = ckpt.dcp.save, shutil.disk_usage
    usage = namedtuple("usage", "total used free")

    def fill_disk(state, checkpoint_id, **kw):  # the step-4 checkpoint does not fit
        if Path(checkpoint_id).name == ".tmp-" + ckpt.step_dir(Path("."), 4).name:
            (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(state, checkpoint_id=checkpoint_id, **kw)

    monkeypatch.setattr(ckpt.dcp, "save", fill_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError) as got:
        train(recipe)
    assert got.value.errno == errno.ENOSPC
    line = describe_os_error(got.value)
    assert "\n" not in line and "no space left on the device for checkpoint step-" in line
    assert re.search(r"needs about [0-9.]+ MB, 1 kB is free; free space and run the same command again", line)
    root = tmp_path / "r" / "checkpoints"
    assert [p.name for p in root.iterdir()] == [ckpt.step_dir(root, 2).name]  # the half-written one is gone
    # room to spare: the same failure is not a full disk and is raised as it was
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        train(recipe, resume=True)
    # a quota (or inode) limit with bytes to spare: the OSError DCP wraps per rank is found and said in one line
    from torch.distributed.checkpoint.api import CheckpointException

    def over_quota(state, checkpoint_id, **kw):
        if Path(checkpoint_id).name == ".tmp-" + ckpt.step_dir(Path("."), 4).name:
            raise CheckpointException("save failed", {0: (OSError(errno.EDQUOT, "Disk quota exceeded"), None)})
        return real_save(state, checkpoint_id=checkpoint_id, **kw)

    monkeypatch.setattr(ckpt.dcp, "save", over_quota)
    with pytest.raises(OSError) as got:
        train(recipe, resume=True)
    assert got.value.errno == errno.EDQUOT and "quota is used up" in describe_os_error(got.value)
    assert [p.name for p in root.iterdir()] == [ckpt.step_dir(root, 2).name]
    # the disk freed: the run resumes from step 2 and finishes
    monkeypatch.setattr(ckpt.dcp, "save", real_save)
    result = train(recipe, resume=True)
    assert result.step == 4 and result.final_dir is not None and (result.final_dir / "config.json").is_file()
