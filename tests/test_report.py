"""`warmstart report`: compute saved on curves with known crossings, gap numbers, and the HTML page read back
(every image a decodable PNG, every table cell equal to summary.json)."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from train_helpers import tiny_recipe

from warmstart.cli import main
from warmstart.errors import UserError
from warmstart.eval.gap import gap_metrics
from warmstart.report import make_report, quickstart_step
from warmstart.report.page import fmt
from warmstart.train.loop import train
from warmstart.train.metrics import read_metrics

TOKENS = [0, 100, 200, 300, 400]


def write_run(
    root: Path, name: str, losses: dict[str, list[float]], fpt: float = 10.0, lr: float = 1e-3
) -> Path:
    """A run directory whose metrics.jsonl holds the given per-domain eval curves (data, written like train())."""
    run = root / name
    run.mkdir(parents=True)
    lines = []
    for i, t in enumerate(TOKENS):
        ev = {"event": "eval", "step": i, "tokens": t, "flops": fpt * t, "lr": lr}
        for d, vals in losses.items():
            ev[f"val/{d}/loss"] = vals[i]
        ev["val/avg/loss"] = sum(v[i] for v in losses.values()) / len(losses)
        if i:
            lines.append(
                {
                    "event": "train",
                    "step": i,
                    "tokens": t,
                    "flops": fpt * t,
                    "lr": lr,
                    "train/loss": ev["val/avg/loss"] + 0.1,
                }
            )
        lines.append(ev)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (run / "summary.json").write_text(json.dumps({"steps": 4, "tokens": 400, "flops": fpt * 400}))
    return run


@pytest.fixture
def synthetic(tmp_path):
    base = write_run(tmp_path, "base", {"a": [10, 6, 4, 3, 2.5], "b": [10, 6, 4, 3, 2.5]})
    fast = write_run(tmp_path, "fast", {"a": [10, 5, 3, 2, 1.5], "b": [10, 5, 3, 2, 1.5]}, fpt=20.0)
    slow = write_run(tmp_path, "slow", {"a": [10, 8, 7, 6, 5], "b": [10, 8, 7, 6, 5]})
    dip = write_run(tmp_path, "dip", {"a": [2.0, 3.0, 2.5, 1.9, 1.8], "b": [3, 4, 3.5, 2.9, 2.8]})
    return [base, fast, slow, dip]


def test_compute_saved_on_known_curves(synthetic, tmp_path):
    s = make_report(synthetic, tmp_path / "rep", baseline=synthetic[0])
    saved = {r["name"]: r["compute_saved"] for r in s["runs"]}
    assert s["target"] == 2.5
    assert saved["base"]["tokens_to_target"] == 400 and saved["base"]["token_fraction"] == 1.0
    # fast: 3 at 200 tokens, 2 at 300 -> 2.5 at 250; twice the FLOPs per token
    assert saved["fast"]["tokens_to_target"] == pytest.approx(250.0)
    assert saved["fast"]["token_fraction"] == pytest.approx(0.625)
    assert saved["fast"]["tokens_saved"] == pytest.approx(0.375)
    assert saved["fast"]["flops_to_target"] == pytest.approx(5000.0)
    assert saved["fast"]["flop_fraction"] == pytest.approx(1.25)
    assert not saved["slow"]["reached"] and saved["slow"]["tokens_to_target"] is None
    # dip starts below the target: reached at its first point
    assert saved["dip"]["tokens_to_target"] == 0.0
    gap = {r["name"]: r["gap"] for r in s["runs"]}["dip"]["b"]
    assert gap == gap_metrics(
        [(i, t, v) for i, (t, v) in enumerate(zip(TOKENS, [3, 4, 3.5, 2.9, 2.8], strict=True))]
    )
    assert gap["worst"] == 4 and gap["recover_tokens"] == 300
    rows = {r[0]: r for r in s["tables"]["runs"]["rows"]}
    cols = s["tables"]["runs"]["columns"]
    assert rows["slow"][cols.index("tokens to target")] == "not reached"
    assert rows["fast"][cols.index("final val/a/loss")] == 1.5


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables, self._cell = [], {}, None
        self._table = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "table":
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag == "td":
            self._cell = [a["data-value"], ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self.tables[self._table][-1].append(tuple(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None


def test_html_page_images_and_tables_equal_summary(synthetic, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", *map(str, synthetic), "--out", str(out), "--baseline", str(synthetic[0])]) == 0
    summary = json.loads((out / "summary.json").read_text())
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert len(page.images) == len(summary["images"]) >= 5
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpimg.imread(io.BytesIO(png), format="png").shape[0] > 100
    for name in summary["images"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert set(page.tables) == set(summary["tables"]) == {"runs", "gap"}
    for key, table in summary["tables"].items():
        body = [r for r in page.tables[key] if r]  # the header row has no td cells
        assert len(body) == len(table["rows"])
        for (
            cells,
            row,
        ) in zip(body, table["rows"], strict=True):
            assert [json.loads(v) for v, _ in cells] == row
            assert [text for _, text in cells] == [
                fmt(v, f) for v, f in zip(row, table["formats"], strict=True)
            ]
    md = (out / "report.md").read_text()
    assert "| fast | 4 | 400 |" in md and "not reached" in md


def test_mixture_and_grow_dirs(tmp_path, synthetic):
    for budget, w in ((1e6, 0.3), (1e7, 0.5)):
        d = tmp_path / f"mix-{int(budget)}"
        d.mkdir()
        (d / "mixture.json").write_text(json.dumps({"weights": {"a": w, "b": 1 - w}, "budget": budget}))
    g = tmp_path / "grow"
    g.mkdir()
    rounds = [  # the layout `warmstart grow` writes
        {"kind": "inheritune", "layers": 2, "params": 1e6, "val_loss": 3.2, "tokens": 1e5, "flops": 1e12},
        {"kind": "inheritune", "layers": 4, "params": 2e6, "val_loss": 2.9, "tokens": 1e5, "flops": 2e12},
    ]
    base = {"kind": "random-init", "layers": 4, "val_loss": 3.4, "tokens": 1e5, "flops": 2e12}
    ref = {"layers": 8, "val_loss": 3.0}
    (g / "grow_summary.json").write_text(json.dumps({"rounds": rounds, "reference": ref, "baseline": base}))
    bad = tmp_path / "grow-bad"
    bad.mkdir()
    (bad / "grow_summary.json").write_text(json.dumps({"something": 1}))
    s = make_report(
        [synthetic[0], tmp_path / "mix-1000000", tmp_path / "mix-10000000", g, bad], tmp_path / "r"
    )
    assert {"mixture_weights.png", "grow_rounds.png"} <= set(s["images"])
    assert [m["budget"] for m in s["mixtures"]] == [1e6, 1e7]
    assert s["grow"][0]["baseline"] == {"n_layers": 4, "val_loss": 3.4}
    assert s["grow"][0]["reference_loss"] == 3.0 and [r["val_loss"] for r in s["grow"][0]["rounds"]] == [
        3.2,
        2.9,
    ]
    assert any("grow-bad" in n for n in s["notes"])
    with pytest.raises(UserError, match="is not a run, mixture or grow directory"):
        make_report([tmp_path], tmp_path / "r2")
    with pytest.raises(UserError, match="--baseline"):
        make_report([synthetic[0]], tmp_path / "r3", baseline=tmp_path / "nope")


def test_report_of_real_runs(data_dir, tokenizer_dir, tmp_path):
    base = train(tiny_recipe(data_dir, tokenizer_dir, tmp_path / "runs", "base")).run_dir
    longer = train(
        tiny_recipe(
            data_dir, tokenizer_dir, tmp_path / "runs", "longer", train={"steps": 12}, eval={"every": 2}
        )
    ).run_dir
    html = quickstart_step(tmp_path, [base, longer], baseline=base)
    assert html == tmp_path / "report" / "report.html" and html.is_file()
    s = json.loads((tmp_path / "report" / "summary.json").read_text())
    final = json.loads((base / "summary.json").read_text())["final_eval"]
    runs = {r["name"]: r for r in s["runs"]}
    assert runs["base"]["final"]["val/code/loss"] == final["val/code/loss"]
    assert runs["base"]["compute_saved"]["token_fraction"] == 1.0
    assert runs["longer"]["tokens"] == 12 * 256
    # the baseline's final average loss, found on the longer run's curve by hand: linear between eval points
    target = s["target"]
    pts = [(m["tokens"], m["val/avg/loss"]) for m in read_metrics(longer) if m["event"] == "eval"]
    i = next((k for k, (_, v) in enumerate(pts) if v <= target), None)
    c = runs["longer"]["compute_saved"]
    assert c["reached"] == (i is not None)
    if i is not None:
        (t0, v0), (t1, v1) = pts[i - 1], pts[i]
        assert c["tokens_to_target"] == pytest.approx(t0 + (v0 - target) / (v0 - v1) * (t1 - t0))
        assert c["token_fraction"] == pytest.approx(c["tokens_to_target"] / runs["base"]["tokens"])
