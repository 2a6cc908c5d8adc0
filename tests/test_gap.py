"""Stability-gap metrics on synthetic curves whose dip, recovery and final values are known."""

from __future__ import annotations

import json

import pytest

from warmstart.errors import UserError
from warmstart.eval.gap import gap_metrics, run_gap


def curve(values, tokens_per_step=100, steps=None):
    steps = steps or list(range(len(values)))
    return [(s, s * tokens_per_step, v) for s, v in zip(steps, values, strict=True)]


def test_dip_then_recovery():
    g = gap_metrics(curve([2.0, 2.5, 3.0, 2.4, 1.9, 1.5]))
    assert g["start"] == 2.0
    assert g["worst"] == 3.0 and g["worst_step"] == 2 and g["worst_tokens"] == 200
    assert g["depth"] == pytest.approx(1.0)
    assert g["recovered"] and g["recover_step"] == 4 and g["recover_tokens"] == 400
    assert g["final"] == 1.5 and g["change"] == pytest.approx(-0.5)


def test_recovery_counts_equal_to_start():
    g = gap_metrics(curve([2.0, 2.2, 2.0, 1.0]))
    assert g["recover_step"] == 2


def test_never_recovered():
    g = gap_metrics(curve([1.0, 1.8, 1.6, 1.4, 1.3]))
    assert g["depth"] == pytest.approx(0.8) and g["worst_step"] == 1
    assert not g["recovered"] and g["recover_step"] is None and g["recover_tokens"] is None
    assert g["change"] == pytest.approx(0.3)


def test_no_dip():
    g = gap_metrics(curve([3.0, 2.5, 2.0, 1.5]))
    assert g["depth"] == 0.0 and g["worst"] == 3.0 and g["worst_step"] == 0
    assert g["recovered"] and g["recover_step"] == 0 and g["recover_tokens"] == 0
    # the table a user reads says "no dip", not "recovered yes at 0 tokens"; a dip keeps its numbers
    from warmstart.eval.gap import GAP_COLUMNS, gap_table

    dip = gap_metrics(curve([3.0, 3.5, 2.9, 2.5]))
    rows = gap_table({"r": {"val/a/loss": g, "val/b/loss": dip}})["rows"]
    at = GAP_COLUMNS.index("recovered")
    assert [row[at : at + 2] for row in rows] == [["no dip", "—"], [True, dip["recover_tokens"]]]


def test_accuracy_higher_is_better():
    g = gap_metrics(curve([0.40, 0.35, 0.30, 0.38, 0.41, 0.45]), higher_is_better=True)
    assert g["worst"] == 0.30 and g["worst_step"] == 2
    assert g["depth"] == pytest.approx(0.10)
    assert g["recover_step"] == 4
    assert g["change"] == pytest.approx(0.05)


def test_baseline_step_and_uneven_steps():
    pts = curve([5.0, 2.0, 2.6, 2.1, 1.9], steps=[0, 10, 12, 20, 40])
    g = gap_metrics(pts, baseline_step=10)
    assert g["start"] == 2.0 and g["worst_step"] == 12 and g["worst_tokens"] == 1200
    assert g["recover_step"] == 40 and g["recover_tokens"] == 4000


def test_window_median_removes_a_single_noisy_point():
    # a one-point spike at step 2 is noise; the real dip is the plateau at steps 5-7
    values = [2.0, 1.9, 3.5, 1.9, 2.0, 2.4, 2.5, 2.4, 2.1, 1.8, 1.7]
    raw = gap_metrics(curve(values))
    assert raw["worst_step"] == 2 and raw["depth"] == pytest.approx(1.5)
    g = gap_metrics(curve(values), window=3)
    # smoothed: median over (prev, self, next); point 6 = median(2.4, 2.5, 2.4) = 2.4
    assert g["worst_step"] == 5 and g["worst"] == pytest.approx(2.4)
    assert g["depth"] == pytest.approx(0.4)
    # smoothed point 9 = median(2.1, 1.8, 1.7) = 1.8 <= 2.0: the first recovered point
    assert g["recover_step"] == 9 and g["recover_tokens"] == 900
    assert g["final"] == 1.7  # the final value is the raw one


def test_window_keeps_start_unsmoothed():
    g = gap_metrics(curve([2.0, 5.0, 5.0, 5.0]), window=5)
    assert g["start"] == 2.0 and g["depth"] == pytest.approx(3.0)


def test_bad_inputs():
    with pytest.raises(UserError, match="window"):
        gap_metrics(curve([1.0, 2.0]), window=0)
    with pytest.raises(UserError, match="no evaluation"):
        gap_metrics(curve([1.0, 2.0]), baseline_step=5)
    with pytest.raises(UserError, match="sorted"):
        gap_metrics([(2, 0, 1.0), (1, 0, 2.0)])


def test_run_gap_reads_metrics_and_writes_json(tmp_path):
    rows = [{"event": "train", "step": 1, "tokens": 10, "train/loss": 9.0}]
    vals = {"code": [3.0, 3.4, 2.9, 2.5], "prose": [2.0, 2.6, 2.7, 2.4]}
    acc = [0.5, 0.4, 0.6, 0.7]
    for s in range(4):
        row = {"event": "eval", "step": s, "tokens": s * 10, "val/avg/loss": 0.0, "task/arc/acc_norm": acc[s]}
        row.update({f"val/{d}/loss": v[s] for d, v in vals.items()})
        row.update({f"val/{d}/ppl": 1.0 for d in vals})
        rows.append(row)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gaps = run_gap(tmp_path)
    assert set(gaps) == {"val/code/loss", "val/prose/loss", "task/arc/acc_norm"}
    assert gaps["val/code/loss"]["recover_step"] == 2
    assert not gaps["val/prose/loss"]["recovered"] and gaps["val/prose/loss"]["worst_step"] == 2
    assert gaps["task/arc/acc_norm"]["higher_is_better"] and gaps["task/arc/acc_norm"]["worst"] == 0.4
    saved = json.loads((tmp_path / "gap.json").read_text())
    assert saved["metrics"] == gaps


def test_run_gap_needs_metrics(tmp_path):
    with pytest.raises(UserError, match="metrics.jsonl"):
        run_gap(tmp_path)
