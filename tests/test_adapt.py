"""`warmstart adapt`: the probes, the recorded decision, the FLOPs charged, resume after SIGKILL in every stage,
and bad input (one line, exit 2, nothing written). Real tiny models and real prepared text throughout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from job_helpers import assert_same_job, decision, kill_at, run, run_in_process, tree_digest

from warmstart.cli import main
from warmstart.config import AdaptConfig
from warmstart.recipes.jobs.probes import plan_rungs, rung_cost

# 6 candidates (3 LRs x 2 replay shares), 64 steps of 256 tokens; probes may take half the run's FLOPs
SETTINGS = ["--tokens", "16384", "--probe-share", "0.5", "--lrs", "1e-3,3e-3,1e-2", "--replay", "0,0.25",
            "--seq-len", "32", "--batch-tokens", "256", "--micro-batch-size", "8", "--eval-tokens", "128",
            "--val-fraction", "0.2", "--cpu-threads", "1", "--device", "cpu", "--alpha", "0.05"]


def args(ckpt, texts, out, old=True, extra=()):
    settings = list(SETTINGS)
    if not old:  # replay shares need old text
        del settings[settings.index("--replay"):settings.index("--replay") + 2]
    a = ["adapt", str(ckpt), "--text", f"lib={texts['new']}", "--out", str(out), *settings, *extra]
    return a + (["--old", f"prose={texts['old']}", "--max-forgetting", "0.5"] if old else [])


@pytest.fixture(scope="module")
def job(tmp_path_factory, job_checkpoint, job_texts):
    """The uninterrupted job, in this process; its stdout."""
    out = tmp_path_factory.mktemp("adapt") / "job"
    return out, run_in_process(args(job_checkpoint, job_texts, out))


def test_decision_recorded_and_charged(job):
    out, stdout = job
    dec = decision(out)
    # every candidate, with its probe losses at each rung it reached, and what became of it
    names = [c["name"] for c in dec["candidates"]]
    assert names == [f"lr={lr},replay={r}" for lr in ("0.001", "0.003", "0.01") for r in ("0", "0.25")]
    assert len(dec["rungs"]) >= 2 and dec["rungs"] == [dec["rungs"][0] * 2**i for i in range(len(dec["rungs"]))]
    assert [c["status"] for c in dec["candidates"]].count("chosen") == 1
    assert dec["chosen"] in names and dec["rule"].startswith("the lowest new-text") and dec["why"]
    for c in dec["candidates"]:
        assert set(c["new_loss"]) == set(c["forgetting"]) and "0" in c["new_loss"]
        assert c["steps"] == dec["rungs"][max(int(k) for k in c["new_loss"])]
        for r in c["new_loss"]:
            rung = json.loads((out / "probes" / c["name"] / f"rung-{r}.json").read_text())
            assert rung["steps"] == dec["rungs"][int(r)] and rung["tokens"] == rung["steps"] * 256
    stopped = [c for c in dec["candidates"] if c["status"].startswith(("dropped", "stopped"))]
    assert stopped  # successive halving stopped some probes early
    # once decided, no probe keeps weights or optimizer state on disk (its numbers stay in its rung files)
    for c in dec["candidates"]:
        probe = out / "probes" / c["name"]
        assert (probe / "summary.json").is_file() and not (probe / "checkpoints").exists()
        assert not (probe / "final").exists()
    # the choice is the rule and the horizon correction (its default beta) re-made from the stored rung files
    from warmstart.config import DEFAULT_HORIZON_EXPONENT as BETA
    from warmstart.recipes.jobs import pipeline, probes

    shift = json.loads((out / "shift.json").read_text())["losses"]
    latest = {}
    for c in dec["candidates"]:
        rung = json.loads((out / "probes" / c["name"] / f"rung-{max(int(k) for k in c['new_loss'])}.json").read_text())
        latest[c["name"]] = pipeline.probe_row(c["lr"], c["replay"], rung, ["lib"], ["prose"], shift)
    last = dec["rounds"][-1]  # the last rung raced: its survivors are the rows the rule picks from
    final = {n: latest[n] for n in last["continue"]}
    assert all(final[n]["steps"] == last["steps"] for n in final)
    assert dec["horizon_exponent"] == BETA > 0 and "horizon" in dec["correction"]
    assert probes.choose(final, 0.5, ["lib"], 0.05, latest=latest, run_steps=64, exponent=BETA)[0] == dec["chosen"]
    # the chosen candidate keeps the bound (or none does and the note says so)
    chosen = next(c for c in dec["candidates"] if c["name"] == dec["chosen"])
    last = str(max(int(k) for k in chosen["new_loss"]))
    assert chosen["forgetting"][last] <= 0.5 or "forgot least" in dec["why"]
    # the FLOPs spent deciding: every probe's training and evaluation, the format probe and the before-training
    # losses, within the probe share, and charged to the run from step 0
    probe = sum(c["train_flops"] + c["eval_flops"] for c in dec["candidates"])
    assert dec["probe_flops"] == pytest.approx(probe, rel=1e-12)
    assert dec["deciding_flops"] == pytest.approx(probe + dec["format_flops"] + dec["shift_flops"], rel=1e-12)
    assert dec["format_flops"] > 0 and dec["shift_flops"] > 0
    assert dec["deciding_flops"] <= 0.5 * dec["run_train_flops"] * (1 + 1e-9)  # the probe share holds it all
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["init_flops"] == pytest.approx(dec["deciding_flops"], rel=1e-12)
    events = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(e for e in events if e.get("event") == "eval")
    assert first["step"] == 0 and first["flops"] == pytest.approx(dec["deciding_flops"], rel=1e-12)
    # the run trains at the chosen settings: re-warming + re-decay, the replay share, dense evaluation early
    cfg = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert cfg["schedule"]["max_lr"] == dec["max_lr"] and cfg["schedule"]["kind"] == "cosine"
    assert (cfg["data"].get("replay") or {}).get("fraction", 0.0) == dec["replay"]
    assert cfg["eval"]["dense_steps"] >= 4 and cfg["train"]["steps"] == 64
    # the report opens with the decision table; the terminal ends with at most 12 lines of summary
    report = (out / "report" / "report.md").read_text()
    assert report.index("## Decision") < report.index("## Runs") and "Stability gap" in report
    assert "Loss per domain" in report and "Compute" in report
    tail = stdout.strip().splitlines()
    start = max(i for i, line in enumerate(tail) if line.startswith("adapt: "))
    assert len(tail) - start <= 12 and tail[-1].startswith("report: ")
    assert any(line.startswith("old text (prose)") for line in tail[start:])


def test_the_summary_says_the_stability_gap_as_measured(job):
    """A dip is given with its depth; no dip is said as none, not as a dip of 0.0000; one evaluation is too few."""
    from warmstart.recipes.jobs.common import JobResult
    from warmstart.report.jobs import summary_lines

    out, _ = job
    r = JobResult("adapt", out, decision(out), json.loads((out / "shift.json").read_text()),
                  json.loads((out / "run" / "summary.json").read_text()), ["lib"], ["prose"], 0.5)

    def gap_line(v):
        return next(x for x in summary_lines(r, {"val/lib/loss": v}) if x.startswith("stability gap"))

    dip = {"depth": 0.25, "worst_step": 3, "recovered": True, "recover_step": 9}
    assert gap_line(dip) == "stability gap: deepest dip 0.2500 nats on lib at step 3; recovered by step 9"
    assert gap_line({**dip, "recovered": False}).endswith("; not recovered")
    assert gap_line({**dip, "depth": 0.0}) == "stability gap: none (no new domain's loss rose above its start)"
    few = gap_line({**dip, "depth": 0.0, "recovered": None, "note": "one evaluation at or after step 0: too few"})
    assert few.startswith("stability gap: not measured (one evaluation")


def test_rerun_skips_every_stage(job, job_checkpoint, job_texts, capsys):
    out, _ = job
    before = tree_digest(out / "data")
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "decision.json", out / "run" / "summary.json")}
    assert main(args(job_checkpoint, job_texts, out)) == 0
    said = capsys.readouterr().out
    assert "up to date (nothing re-tokenized)" in said and "complete; skipping" in said
    assert tree_digest(out / "data") == before
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_sigkill_in_every_stage_resumes_to_the_same_model(job, job_checkpoint, job_texts, tmp_path):
    out = tmp_path / "job"
    a = args(job_checkpoint, job_texts, out)
    # killed after the format probe, the data and the before-training losses; then in a probe's training; then in
    # the full run, a checkpoint half-written (the decision made): each re-run continues where the last stopped
    for pause in ("job:shift", "startup", "checkpoint_write:12"):
        kill_at(a, pause)
    run(a)
    assert_same_job(job[0], out)


def test_without_old_decides_the_lr_alone(job_checkpoint, job_texts, tmp_path, capsys):
    """No old text: the LR alone, on the new text's loss; with --horizon-exponent 0 the probes' best as measured. A
    SIGTERM in the probes stops the job with the job's own resume note (not a probe run's --resume) and the same
    command finishes it."""
    import signal

    out = tmp_path / "job"
    a = args(job_checkpoint, job_texts, out, old=False, extra=["--horizon-exponent", "0"])
    a[a.index("--tokens") + 1] = "8192"  # 3 candidates need less
    err = kill_at(a, "job:rung", sig=signal.SIGTERM)
    assert "stopped by SIGTERM; re-run the same command to resume" in err and "--resume" not in err
    capsys.readouterr()
    assert main(a) == 0
    said = capsys.readouterr().out
    assert said.count("forgetting cannot be measured") == 1
    dec = decision(out)
    assert [c["name"] for c in dec["candidates"]] == ["lr=0.001", "lr=0.003", "lr=0.01"]
    assert dec["max_forgetting"] is None and "no --old" in dec["note"]
    assert dec["correction"].startswith("none for the LR") and "horizon" not in dec["why"]
    best = min((c for c in dec["candidates"] if c["steps"] == dec["rungs"][-1]),
               key=lambda c: c["new_loss"][str(len(dec["rungs"]) - 1)])
    assert dec["chosen"] == best["name"]
    assert yaml.safe_load((out / "run" / "config.yaml").read_text())["data"].get("replay") is None


def test_write_recipe_saves_what_the_flags_meant(job_checkpoint, job_texts, tmp_path):
    recipe = tmp_path / "adapt.yaml"
    assert main([*args(job_checkpoint, job_texts, tmp_path / "job"), "--write-recipe", str(recipe)]) == 0
    cfg = AdaptConfig.model_validate(yaml.safe_load(recipe.read_text()))
    assert cfg.tokens == 16384 and cfg.lrs == [1e-3, 3e-3, 1e-2] and cfg.replay == [0.0, 0.25]
    assert cfg.old == {"prose": [str(job_texts["old"])]} and cfg.max_forgetting == 0.5
    assert not (tmp_path / "job").exists()
    # the recipe runs as the flags did: --recipe, a flag over it, written again
    again = tmp_path / "again.yaml"
    assert main(["adapt", "--recipe", str(recipe), "--probe-share", "0.3", "--write-recipe", str(again)]) == 0
    assert AdaptConfig.model_validate(yaml.safe_load(again.read_text())) == cfg.model_copy(update={"probe_share": 0.3})


def test_probe_plan_fits_the_share():
    for n, steps, share in ((6, 64, 0.5), (9, 2000, 0.1), (3, 32, 0.5)):
        rungs = plan_rungs(n, steps, 256, share, 256)
        assert rung_cost(n, rungs[0], len(rungs), 256, 256) <= share * steps * 256


def test_the_budget_check_counts_the_format_probe(job, job_checkpoint, job_texts, tmp_path, capsys):
    """Before anything is written the check knows the format probe's cost exactly (format.json's FLOPs once run);
    a budget the probes fit only without it is refused in one line then, not after the probe and the data."""
    from warmstart.data.tokenizer import load_tokenizer
    from warmstart.models.locate import resolve_checkpoint
    from warmstart.recipes.jobs import common

    out, _ = job
    cfg = AdaptConfig.model_validate(json.loads((out / "job.json").read_text())["config"])
    src = resolve_checkpoint(cfg.checkpoint)
    fmt = json.loads((out / "format.json").read_text())["flops"]
    tok = load_tokenizer(str(src))
    fwd = common.flops_per_token(src, cfg.seq_len)[1]
    assert fmt > 0 and common.format_flops(cfg, tok, fwd) == pytest.approx(fmt, rel=1e-12)
    spent = fmt / common.flops_per_token(src, cfg.seq_len)[0]
    steps = next(s for s in range(1, 1000) if _fits(6, s, 0.0))  # the smallest budget without the format probe
    assert not _fits(6, steps, spent)
    small = args(job_checkpoint, job_texts, tmp_path / "small")
    small[small.index("--tokens") + 1] = str(steps * 256)
    line = _bad(small, capsys)
    assert "too small for the probes" in line and "spent before them" in line
    assert not (tmp_path / "small").exists()


def test_a_job_written_before_a_new_setting_resumes(job, job_checkpoint, job_texts):
    """job.json without a setting added since (here skip_bad_records) holds the same job: it ran with the default."""
    out, _ = job
    record = out / "job.json"
    kept = record.read_text()
    held = json.loads(kept)
    assert held["config"].pop("skip_bad_records") is False
    record.write_text(json.dumps(held))
    try:
        assert main(args(job_checkpoint, job_texts, out)) == 0
    finally:
        record.write_text(kept)


def test_plan_is_arithmetic_and_names_a_budget_that_fits():
    """The first rung is a division, not a search (1e15 tokens plans at once) and agrees with trying every step
    count; no rung is longer than the run; a refusal names the budget as given and the smallest whole number of
    batches that fits, and that budget does fit."""
    from warmstart.errors import UserError
    from warmstart.recipes.jobs.probes import most_first_steps

    for n, rungs, cap, ev in ((9, 1, 20_000, 512), (6, 2, 8_192, 128), (3, 3, 5_000, 0), (9, 3, 1e6, 1536.0)):
        brute = 0
        while rung_cost(n, brute + 1, rungs, 256, ev) <= cap:
            brute += 1
        assert most_first_steps(n, rungs, 256, ev, cap) == brute
    huge = plan_rungs(6, 10**15 // 256, 256, 0.1, 256)
    assert len(huge) == 3 and rung_cost(6, huge[0], 3, 256, 256) <= 0.1 * (10**15 // 256) * 256
    assert plan_rungs(2, 8, 256, 0.5, 0)[-1] <= 8
    with pytest.raises(UserError) as e:
        plan_rungs(6, 8832 // 256, 256, 0.5, 256, spent=3000.0, tokens=8832)
    msg = str(e.value)
    assert msg.startswith("--tokens 8,832 (34 whole batches): too small")
    need = int(msg.split(": at least ")[1].split(" tokens")[0].replace(",", ""))
    assert need % 256 == 0 and _fits(6, need // 256, 3000.0) and not _fits(6, need // 256 - 1, 3000.0)


def test_skip_bad_records_reads_past_a_record_that_is_not_text(job_checkpoint, job_texts, tmp_path, capsys):
    """A record that is not text stops the job in one line naming it (nothing written); with --skip-bad-records
    every stage (the checks, the format probe, the data) skips and counts it, as `prepare` does."""
    lines = Path(job_texts["new"]).read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    out = tmp_path / "job"
    argv = args(job_checkpoint, {"new": bad, "old": job_texts["old"]}, out)
    line = _bad(argv, capsys)
    assert "bad.jsonl" in line and ":2" in line and "--skip-bad-records" in line and not out.exists()
    assert main([*argv, "--skip-bad-records"]) == 0
    index = json.loads((out / "data" / "lib" / "index.json").read_text())
    assert index["bad_records"] == 1


def _fits(n: int, steps: int, spent: float) -> bool:
    from warmstart.errors import UserError

    try:
        plan_rungs(n, steps, 256, 0.5, 128 * 2, spent=spent)
        return True
    except UserError:
        return False


def _bad(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_bad_input_one_line_nothing_written(job_checkpoint, job_texts, tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    cases = [
        (args(tmp_path / "no-such-ckpt", job_texts, out, old=False), "checkpoint: "),
        (args(job_checkpoint, {"new": empty, "old": job_texts["old"]}, out), "empty (no text)"),
        (args(job_checkpoint, {"new": tiny, "old": job_texts["old"]}, out), "no document tokenizes to 2 or more"),
        ([*args(job_checkpoint, job_texts, out, old=False), "--max-forgetting", "0.1"], "--max-forgetting needs --old"),
        ([*args(job_checkpoint, job_texts, out, old=False), "--replay", "0.25"], "--replay needs --old"),
        ([*args(job_checkpoint, job_texts, out), "--lrs", "1e-3,1e-3,1e-2,3e-3"], "--lrs: each LR once"),
        ([*args(job_checkpoint, job_texts, out), "--horizon-exponent", "1.5"], "--horizon-exponent"),
    ]
    small = args(job_checkpoint, job_texts, out)
    small[small.index("--tokens") + 1] = "2048"
    cases.append((small, "too small for the probes"))
    for argv, said in cases:
        line = _bad(argv, capsys)
        assert said in line, line
        assert not out.exists()
    # an output directory holding something else: refused, its file untouched
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = tree_digest(out)
    line = _bad(args(job_checkpoint, job_texts, out), capsys)
    assert "holds something else" in line and tree_digest(out) == before
    assert Path(out / "notes.txt").read_text() == "mine"


def test_a_job_directory_of_other_settings_is_refused(job, job_checkpoint, job_texts, capsys):
    out, _ = job
    before = tree_digest(out)
    other = args(job_checkpoint, job_texts, out)
    other[other.index("--probe-share") + 1] = "0.3"
    line = _bad(other, capsys)
    assert "holds an adapt job with other settings (probe_share)" in line
    assert tree_digest(out) == before


def _row(lr, new_windows, forgetting=None, old_loss=None, replay=0.0, steps=4):
    sums = [float(v) * 10 for v in new_windows]  # 10 scored tokens per window
    return {"lr": lr, "replay": replay, "steps": steps, "new_loss": sum(new_windows) / len(new_windows),
            "forgetting": forgetting, "old_loss": old_loss,
            "losses": {"lib": {"sums": sums, "counts": [10] * len(sums)}}}


def test_the_horizon_correction_moves_the_lr_to_the_run():
    """lr x (probe steps / run steps)^beta, then the nearest candidate in log scale (Bjorck et al. 2024)."""
    import math

    from warmstart.recipes.jobs.probes import horizon_lr, nearest_lr

    assert math.isclose(horizon_lr(3e-4, 1, 40, 0.2), 3e-4 * 40 ** -0.2, rel_tol=1e-12)
    assert horizon_lr(3e-4, 4, 4, 0.2) == 3e-4 and horizon_lr(3e-4, 1, 40, 0.0) == 3e-4
    lrs = [1e-4, 3e-4, 1e-3]
    assert nearest_lr(1.43e-4, lrs) == 1e-4 and nearest_lr(2e-4, lrs) == 3e-4 and nearest_lr(5e-3, lrs) == 1e-3
    assert nearest_lr(2.0, [1.0, 4.0]) == 1.0  # halfway in log scale (exactly): the smaller


def test_the_rule_and_the_horizon_correction():
    from warmstart.recipes.jobs.probes import choose, race_rung

    noise = [0.02, -0.03, 0.01, -0.02, 0.03, -0.01, 0.02, -0.02]
    base = [3.0 + e for e in noise]
    # without a horizon correction the lowest probe loss wins, even by less than the windows' noise
    tie = {"small": _row(1e-4, base), "large": _row(1e-3, [b - 0.015 + 0.02 * (i % 2) for i, b in enumerate(base)])}
    assert tie["large"]["new_loss"] < tie["small"]["new_loss"]
    chosen, why = choose(tie, None, ["lib"], 0.05)
    assert chosen == "large" and "horizon" not in why
    # the same LR, replay shares the test cannot tell apart: the tie goes to the larger share (a short probe sees
    # little of the forgetting); a share clearly worse on the new text does not win
    wobble = [b + 0.015 - 0.02 * (i % 2) for i, b in enumerate(base)]  # differences -0.005, +0.015: no signal
    shares = {"r0": _row(3e-4, base, forgetting=-0.05), "r25": _row(3e-4, wobble, forgetting=-0.06, replay=0.25),
              "r5": _row(3e-4, [b + 0.012 - 0.02 * (i % 2) for i, b in enumerate(base)], forgetting=-0.05,
                         replay=0.05)}
    assert shares["r25"]["new_loss"] > shares["r0"]["new_loss"]
    chosen, why = choose(shares, 0.05, ["lib"], 0.05)
    assert chosen == "r25" and "larger replay share" in why
    far = {"r0": shares["r0"], "r25": _row(3e-4, [b + 0.3 for b in base], forgetting=-0.2, replay=0.25)}
    assert choose(far, 0.05, ["lib"], 0.05)[0] == "r0"
    # the horizon: 3e-4 best after 4 probe steps of a 160-step run moves to 3e-4 x 40^-0.2 = 1.43e-4 -> 1e-4,
    # a candidate halving stopped after 2 steps; there, the replay shares' tie goes to the larger share
    latest = {"s0": _row(1e-4, [b + 0.2 for b in base], forgetting=-0.01, steps=2),
              "s25": _row(1e-4, [b + 0.2 for b in wobble], forgetting=-0.02, replay=0.25, steps=2),
              "big": _row(1e-3, [b + 0.5 for b in base], forgetting=0.3, steps=2)}
    chosen, why = choose(shares, 0.05, ["lib"], 0.05, latest=latest, run_steps=160, exponent=0.2)
    assert chosen == "s25" and "0.000143" in why and "nearest candidate 0.0001;" in why
    # a short horizon gap keeps the LR (4 of 8 steps: 3e-4 x 2^-0.2 = 2.6e-4 -> 3e-4); exponent 0: no move
    kept, why = choose(shares, 0.05, ["lib"], 0.05, latest=latest, run_steps=8, exponent=0.2)
    assert kept == "r25" and "nearest candidate 0.0003 itself" in why
    assert choose(shares, 0.05, ["lib"], 0.05, latest=latest, run_steps=160, exponent=0.0)[0] == "r25"
    # the moved-to LR must have kept the bound in the probes, else the probes' best LR stays
    bad = {n: {**r, "forgetting": 0.2} for n, r in latest.items()}
    chosen, why = choose(shares, 0.05, ["lib"], 0.05, latest=bad, run_steps=160, exponent=0.2)
    assert chosen == "r25" and "kept the bound at the furthest rung it reached, so 0.0003 stays" in why
    # a probe from an earlier rung of the same LR is not compared with one that trained longer
    mixed = {**latest, "s5": _row(1e-4, [b - 0.5 for b in base], forgetting=-0.01, replay=0.05, steps=1)}
    assert choose(shares, 0.05, ["lib"], 0.05, latest=mixed, run_steps=160, exponent=0.2)[0] == "s25"
    # clearly better on every window: the larger LR wins
    clear = {"small": _row(1e-4, base), "large": _row(1e-3, [b - 0.2 for b in base])}
    assert choose(clear, None, ["lib"], 0.05)[0] == "large"
    # the bound: the lowest loss forgets too much, so the best that keeps it is chosen; none keeps it: least forgot
    bound = {"a": _row(1e-3, [b - 0.2 for b in base], forgetting=0.3), "b": _row(1e-4, base, forgetting=0.01)}
    assert choose(bound, 0.05, ["lib"], 0.05)[0] == "b"
    worse = {"a": _row(1e-3, base, forgetting=0.3), "b": _row(1e-4, base, forgetting=0.2)}
    chosen, why = choose(worse, 0.05, ["lib"], 0.05)
    assert chosen == "b" and "forgot least" in why
    # a rung: a probe shown worse on every window than a leader that keeps the bound is dropped early (unless it
    # forgets less); halving keeps the best half of the rest
    rows = {"lead": _row(3e-4, base, 0.0, 2.0), "bad": _row(1e-4, [b + 0.3 for b in base], 0.0, 2.0),
            "keeps-old": _row(1e-5, [b + 0.3 for b in base], -0.1, 1.9), "close": _row(1e-3, base, 0.0, 2.0)}
    out = race_rung(rows, 0.05, ["lib"], 0.05, last=False)
    assert out["leader"] == "lead" and out["dropped"] == {"bad": "lead"}
    assert out["continue"] == ["lead", "close"] and out["halved"] == ["keeps-old"]
    # still within its warmup transient: the test drops nothing, halving alone keeps the best half
    early = race_rung(rows, 0.05, ["lib"], 0.05, last=False, settled=False)
    assert early["dropped"] == {} and early["continue"] == ["lead", "close"]
    assert sorted(early["halved"]) == ["bad", "keeps-old"]


def test_the_job_re_warms_at_least_two_steps():
    """warmup_fraction 1% of a 40-step run rounds to 0: the full run still re-warms over 2 steps (probes over as
    many as fit their first rung); a long run gets its fraction; a run shorter than 2 steps warms over all of it."""
    from warmstart.config import AdaptConfig
    from warmstart.recipes.jobs import pipeline
    from warmstart.train.schedules import lr_at

    def cfg(tokens):
        return AdaptConfig.model_validate({"checkpoint": "x", "text": {"a": ["a.jsonl"]}, "tokens": tokens,
                                           "out": "o", "batch_tokens": 1024})

    assert [pipeline.warmup_steps(cfg(t)) for t in (1024, 40 * 1024, 400 * 1024)] == [1, 2, 4]
    recipe = pipeline.full_recipe(cfg(40 * 1024), pipeline.base_tree(cfg(40 * 1024), Path("d"), "x", {"a": 1.0},
                                                                     None), 3e-4, 0.0)
    assert recipe.schedule.warmup_steps == 2
    assert [lr_at(recipe.schedule, s, 40) for s in (0, 1)] == pytest.approx([1.5e-4, 3e-4], rel=1e-12)


def test_baseline_gives_the_report_its_compute_saved(job, job_checkpoint, job_texts, tmp_path, capsys):
    """--baseline RUN (here the same shape from a random init on the job's data, the same steps and evaluation):
    the report measures the job's run, deciding FLOPs included, against it; the job's own files are untouched; a
    directory that is not a finished run is one line before anything is read."""
    out, _ = job
    cfg = yaml.safe_load((out / "run" / "config.yaml").read_text())
    cfg.update({"name": "scratch", "out_dir": str(tmp_path), "init": {},
                "model": {"config": str(Path(job_checkpoint) / "config.json"), "tokenizer": str(job_checkpoint)}})
    cfg["data"].pop("replay", None)
    cfg["schedule"]["max_lr"] = 3e-3
    (tmp_path / "scratch.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "scratch.yaml")]) == 0
    capsys.readouterr()
    kept = {p: p.stat().st_mtime_ns for p in (out / "decision.json", out / "run" / "summary.json")}
    assert main([*args(job_checkpoint, job_texts, out), "--baseline", str(tmp_path / "scratch")]) == 0
    tail = capsys.readouterr().out.strip().splitlines()
    start = max(i for i, line in enumerate(tail) if line.startswith("adapt: "))
    assert len(tail) - start <= 12 and tail[-1].startswith("report: ")
    rep = json.loads((out / "report" / "summary.json").read_text())
    assert rep["baseline"] == "scratch"
    saved = next(r for r in rep["runs"] if r["name"] == "run")["compute_saved"]
    run_summary = json.loads((out / "run" / "summary.json").read_text())
    # the run's FLOPs to the baseline's final loss count what deciding cost: at least the charge at step 0
    assert saved["flops_to_target"] >= run_summary["init_flops"]
    line = next(x for x in tail[start:] if x.startswith("compute saved (marginal): "))
    frac = saved["flop_fraction"]
    said = "did not reach" if frac is None else (f"{1 - frac:.1%} of the FLOPs saved" if frac <= 1 else
                                                 f"{frac - 1:.1%} more FLOPs")
    assert said in line, line
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    # a baseline whose directory is named `run` like the job's (another job's run): told apart by path
    shutil.copytree(tmp_path / "scratch", tmp_path / "other" / "run")
    assert main([*args(job_checkpoint, job_texts, out), "--baseline", str(tmp_path / "other" / "run")]) == 0
    rep = json.loads((out / "report" / "summary.json").read_text())
    assert sorted(r["path"] for r in rep["runs"]) == sorted([str(out / "run"), str(tmp_path / "other" / "run")])
    assert any(x.startswith("compute saved (marginal): ") for x in capsys.readouterr().out.splitlines())
    # a baseline evaluated on other text (the checkpoint's own run: code and prose): not comparable, and said so
    assert main([*args(job_checkpoint, job_texts, out), "--baseline", str(Path(job_checkpoint).parent)]) == 0
    said = [x for x in capsys.readouterr().out.splitlines() if x.startswith("compute saved")]
    assert len(said) == 1 and said[0].startswith("compute saved: not comparable with the baseline (evaluates lib"), said
    # not a finished run the report can read, or the job's own run: one line, exit 2, the report as it was
    stale = tmp_path / "stale"  # finished once, then resumed with more steps and stopped: summary.json is old
    shutil.copytree(tmp_path / "scratch", stale)
    sc = yaml.safe_load((stale / "config.yaml").read_text())
    sc["train"]["steps"] = 640
    (stale / "config.yaml").write_text(yaml.safe_dump(sc))
    blind = tmp_path / "blind"  # its evaluations gone
    shutil.copytree(tmp_path / "scratch", blind)
    (blind / "metrics.jsonl").unlink()
    before = tree_digest(out)
    (tmp_path / "notes").mkdir()
    for base, why in ((tmp_path / "notes", "not a finished warmstart run with evaluations (no config.yaml)"),
                      (out / "run", "inside the job's own directory"), (out / "data", "inside the job's own directory"),
                      (stale, "summary.json is at step 64, not 640"), (blind, "no metrics.jsonl")):
        line = _bad([*args(job_checkpoint, job_texts, out), "--baseline", str(base)], capsys)
        assert line.startswith("warmstart: error: --baseline") and why in line, line
    assert tree_digest(out) == before
