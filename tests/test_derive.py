"""`warmstart derive`: the block search and the LR probes charged to the run, evaluation against the checkpoint on
the same windows, resume after SIGKILL in each stage, and bad input. Real tiny models and real text."""

from __future__ import annotations

import json

import pytest
import yaml
from job_helpers import assert_same_job, decision, kill_at, run, run_in_process, tree_digest

from warmstart.cli import main

# 3 LRs, 64 steps of 256 tokens, 2 of the checkpoint's 4 blocks
SETTINGS = ["--layers", "2", "--tokens", "16384", "--probe-share", "0.5", "--lrs", "1e-3,3e-3,1e-2",
            "--seq-len", "32", "--batch-tokens", "256", "--micro-batch-size", "8", "--eval-tokens", "128",
            "--val-fraction", "0.2", "--sample-tokens", "512", "--cpu-threads", "1", "--device", "cpu"]


def args(ckpt, texts, out, extra=()):
    return ["derive", str(ckpt), "--text", f"lib={texts['new']}", "--out", str(out), *SETTINGS, *extra]


@pytest.fixture(scope="module")
def job(tmp_path_factory, job_checkpoint, job_texts):
    out = tmp_path_factory.mktemp("derive") / "job"
    return out, run_in_process(args(job_checkpoint, job_texts, out))


def test_search_and_probes_charged_reference_on_the_same_windows(job):
    out, stdout = job
    dec = decision(out)
    inherited = json.loads((out / "inherited" / "inherited.json").read_text())
    assert inherited["choice"]["rule"] == "auto" and len(inherited["blocks"]) == 2
    search = inherited["choice"]["search_flops"]
    assert search > 0 and dec["search_flops"] == search
    assert [c["name"] for c in dec["candidates"]] == ["lr=0.001", "lr=0.003", "lr=0.01"]
    assert dec["deciding_flops"] == pytest.approx(dec["probe_flops"] + dec["format_flops"] + search, rel=1e-12)
    summary = json.loads((out / "run" / "summary.json").read_text())
    # the run is charged the search (through its init, the cut) and the probes + format probe (charged_flops)
    assert summary["init_flops"] == pytest.approx(dec["deciding_flops"], rel=1e-12)
    cfg = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert cfg["init"]["from"] == str(out / "inherited") and cfg["schedule"]["max_lr"] == dec["max_lr"]
    # the checkpoint's loss was measured on the windows the run is evaluated on: the run's step-0 loss (the cut
    # before training) is on the same number of tokens as the reference's
    ref = json.loads((out / "shift.json").read_text())["losses"]["lib"]
    events = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(e for e in events if e.get("event") == "eval")
    assert first["val/lib/tokens"] == sum(ref["counts"])
    report = (out / "report" / "report.md").read_text()
    assert report.index("## Decision") < report.index("## Runs") and "checkpoint (4 blocks)" in report
    tail = stdout.strip().splitlines()
    start = max(i for i, line in enumerate(tail) if line.startswith("derive: "))
    assert len(tail) - start <= 12


def test_sigkill_in_each_stage_resumes_to_the_same_model(job, job_checkpoint, job_texts, tmp_path):
    out = tmp_path / "job"
    a = args(job_checkpoint, job_texts, out)
    # killed after the block search, then in the full run (a checkpoint half-written)
    for pause in ("job:searched", "checkpoint_write:12"):
        kill_at(a, pause)
    run(a)
    assert_same_job(job[0], out)
    a_rec, b_rec = (json.loads((d / "inherited" / "inherited.json").read_text()) for d in (job[0], out))
    assert a_rec["blocks"] == b_rec["blocks"]
    assert {**a_rec["choice"], "sample": None} == {**b_rec["choice"], "sample": None}  # its own data dir


def test_bad_input(job_checkpoint, job_texts, tmp_path, capsys):
    out = tmp_path / "out"
    bad = args(job_checkpoint, job_texts, out)
    bad[bad.index("--layers") + 1] = "4"
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--layers: 4 is outside 1..3" in err[0]
    assert not out.exists()
    small = args(job_checkpoint, job_texts, out)
    small[small.index("--tokens") + 1] = "1024"  # not even the probes' evaluation fits
    assert main(small) == 2
    assert "too small for the probes" in capsys.readouterr().err and not out.exists()
    # a budget the check before writing lets through (it cannot know the block search's cost) but the probes do not
    # fit once the search is paid for: refused then, and the first call leaves nothing behind
    floor = int(err_line(capsys, small).split(": at least ")[1].split(" tokens")[0].replace(",", ""))
    after = args(job_checkpoint, job_texts, out)
    after[after.index("--tokens") + 1] = str(floor)
    line = err_line(capsys, after)
    assert "too small for the probes" in line and "spent before them" in line and not out.exists()
    # another job's directory is not this one's
    out.mkdir()
    (out / "job.json").write_text(json.dumps({"job": "adapt", "config": {}}))
    before = tree_digest(out)
    assert main(args(job_checkpoint, job_texts, out)) == 2
    assert "holds a warmstart adapt job, not derive" in capsys.readouterr().err and tree_digest(out) == before


def test_until_reference_grows_until_the_checkpoint_is_matched(job_checkpoint, job_texts, tmp_path, capsys):
    out = tmp_path / "job"
    # the text the checkpoint was trained on, 1 block of 4 and LRs too small to recover in 64 steps: the first round
    # stays above the checkpoint's loss, so the job grows to 1 + 2 = 3 blocks (k - 1) and stops there
    a = args(job_checkpoint, {"new": job_texts["old"]}, out, ["--until-reference"])
    for flag, value in (("--lrs", "1e-6,3e-6,1e-5"), ("--layers", "1")):
        a[a.index(flag) + 1] = value
    assert main(a) == 0
    record = json.loads((out / "derive.json").read_text())
    rounds = record["rounds"]
    assert [r["layers"] for r in rounds] == [1, 3]
    assert not rounds[0]["matched"] and rounds[0]["loss"] > record["reference_loss"]
    for r in rounds:  # each round is a whole job of its own: its search, its probes, its run, its report
        d = out / f"L{r['layers']:02d}"
        assert (d / "decision.json").is_file() and (d / "report" / "report.html").is_file()
        assert json.loads((d / "run" / "summary.json").read_text())["flops"] == r["flops"]
        assert len(json.loads((d / "inherited" / "inherited.json").read_text())["blocks"]) == r["layers"]
    assert record["total_flops"] == sum(r["flops"] for r in rounds)
    assert "rounds: 1 blocks" in capsys.readouterr().out


def test_distill_trains_probes_and_run_against_the_checkpoint_teacher_charged(job, job_checkpoint, job_texts,
                                                                               tmp_path):
    """--distill: every probe and the full run train against the checkpoint's next-token distribution, and each
    token's FLOPs count the teacher's forward pass: a probe's training FLOPs are the student's plus the teacher's
    forward per token (so per token more than the same probe without --distill, by exactly that forward)."""
    from warmstart.recipes.jobs.common import flops_per_token

    out = tmp_path / "job"
    a = args(job_checkpoint, job_texts, out, ["--distill"])
    a[a.index("--tokens") + 1] = "32768"  # the probes carry the teacher's forward too: a larger budget fits them
    assert main(a) == 0
    dec, plain = decision(out), decision(job[0])
    teacher_fwd = flops_per_token(job_checkpoint, 32)[1]
    for r in dec["candidates"]:
        rcfg = yaml.safe_load((out / "probes" / r["name"] / "config.yaml").read_text())
        assert rcfg["distill"]["teacher"] == str(job_checkpoint)
        summary = json.loads((out / "probes" / r["name"] / "summary.json").read_text())
        student = next(c for c in plain["candidates"] if c["name"] == r["name"])
        student_fpt = student["train_flops"] / (student["steps"] * 256)
        assert summary["flops_per_token"] == pytest.approx(student_fpt + teacher_fwd, rel=1e-9)
    cfg = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert cfg["distill"]["teacher"] == str(job_checkpoint) and cfg["schedule"]["max_lr"] == dec["max_lr"]
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["init_flops"] == pytest.approx(dec["deciding_flops"], rel=1e-12)
    # the same cut as without --distill (the search does not depend on the loss), and its loss measured on the same
    # windows as the reference
    same = [json.loads((d / "inherited" / "inherited.json").read_text())["blocks"] for d in (out, job[0])]
    assert same[0] == same[1]


def err_line(capsys, argv) -> str:
    """The one error line of a refused command (a refusal after the models were loaded follows their progress
    bars on stderr)."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [x for x in lines if x.startswith("warmstart:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]
