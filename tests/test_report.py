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
import yaml
from train_helpers import tiny_recipe, tiny_recipe_tree

from warmstart.cli import main
from warmstart.demo.steps import report_step as quickstart_step
from warmstart.errors import UserError
from warmstart.eval.gap import gap_metrics
from warmstart.report import make_report
from warmstart.report.page import fmt
from warmstart.runtime.metrics import read_metrics
from warmstart.train.loop import train

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
    rows = {r[0]: r for r in s["tables"]["saved"]["rows"]}
    cols = s["tables"]["saved"]["columns"]
    assert rows["slow"][cols.index("tokens to target")] == "not reached"
    assert rows["fast"][cols.index("tokens saved (marginal)")] == pytest.approx(0.375)
    runs = {r[0]: r for r in s["tables"]["runs"]["rows"]}
    assert runs["fast"][s["tables"]["runs"]["columns"].index("final val/a/loss")] == 1.5


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
    assert set(page.tables) == set(summary["tables"]) == {"runs", "saved", "gap"}
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
    assert "| fast | scratch | — | 4 | 400 |" in md and "not reached" in md


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


# ----------------------------------------------------------------------------------------------- like with like
def domain_index(root: Path, domains: dict[str, str], vocab_hash: str = "vocab-1") -> Path:
    """A data directory whose domains' index.json hold what the report reads (vocabulary hash, fingerprint)."""
    for dom, fp in domains.items():
        (root / dom).mkdir(parents=True)
        (root / dom / "index.json").write_text(json.dumps({"tokenizer": {"vocab_hash": vocab_hash}, "fingerprint": fp}))
    return root


def like_run(
    root: Path,
    name: str,
    losses: dict[str, list[float]],
    data: Path,
    init_from: str | None = None,
    params: int = 1000,
    seq_len: int = 64,
    tokens: list[int] = TOKENS,
    weights: dict[str, float] | None = None,
    fpt: float = 10.0,
) -> Path:
    """A run directory as train() writes it: eval curves, summary.json and config.yaml with the checked facts."""
    run = root / name
    run.mkdir(parents=True)
    lines = []
    for i, t in enumerate(tokens):
        ev = {"event": "eval", "step": i, "tokens": t, "flops": fpt * t}
        ev.update({f"val/{d}/loss": v[i] for d, v in losses.items()})
        ev["val/avg/loss"] = sum(v[i] for v in losses.values()) / len(losses)
        lines.append(ev)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    summary = {"tokens": tokens[-1], "flops": fpt * tokens[-1], "params": params, "weights": weights or {"new": 1.0}}
    (run / "summary.json").write_text(json.dumps(summary))
    config = {
        "name": name,
        "data": {"dir": str(data), "seq_len": seq_len},
        "init": {"from": init_from, "keep_optimizer": False},
        "eval": {"max_tokens": 4096, "windows": "packed"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "final").mkdir()
    return run


@pytest.fixture
def lineage(tmp_path):
    """An upstream run, the from-scratch baseline on the new domain, and runs continued from the upstream."""
    data = domain_index(tmp_path / "data", {"new": "fp-new", "old": "fp-old"})
    up = like_run(tmp_path, "up", {"new": [9, 8, 7, 6, 5]}, data, tokens=[0, 250, 500, 750, 1000],
                  weights={"old": 1.0})
    scratch = like_run(tmp_path, "scratch", {"new": [10, 6, 4, 3, 2.5]}, data)
    cont = like_run(tmp_path, "cont", {"new": [3, 2.8, 2.5, 2.2, 2.0]}, data, init_from=str(up))
    cont2 = like_run(tmp_path, "cont2", {"new": [2.4, 2.3, 2.2, 2.1, 2.0]}, data, init_from=str(cont / "final"))
    hub = like_run(tmp_path, "hub", {"new": [4, 3, 2.75, 2.0, 1.9]}, data, init_from="org/some-model")
    return tmp_path, data, {"up": up, "scratch": scratch, "cont": cont, "cont2": cont2, "hub": hub}


def test_continued_run_against_its_scratch_baseline(lineage, capsys):
    tmp_path, _, r = lineage
    runs = [r["scratch"], r["cont"], r["cont2"], r["hub"]]
    s = make_report(runs, tmp_path / "rep", baseline=r["scratch"], metric="val/new/loss")
    saved = {x["name"]: x["compute_saved"] for x in s["runs"]}
    assert s["target"] == 2.5
    # the scratch baseline needs all its 400 tokens; the continued run reaches 2.5 at 200 of its own tokens
    c = saved["cont"]
    assert c["comparable"] and c["compared_as"] == "continued from up vs from scratch; same data"
    assert c["tokens_to_target"] == 200 and c["tokens_saved"] == pytest.approx(0.5)
    assert c["flops_to_target"] == 2000 and c["flops_saved"] == pytest.approx(0.5)
    # total: the upstream's 1000 tokens (10,000 FLOPs) are charged: (1000 + 200) / 400 = 3
    assert c["upstream_tokens"] == 1000 and c["upstream_flops"] == 10000
    assert c["total_tokens_to_target"] == 1200 and c["total_tokens_saved"] == pytest.approx(-2.0)
    assert c["total_flops_to_target"] == 12000 and c["total_flops_saved"] == pytest.approx(-2.0)
    # a chain: cont2 started from cont's final/, which started from up: 400 + 1000 upstream tokens
    c2 = saved["cont2"]
    assert c2["upstream_tokens"] == 1400 and c2["tokens_to_target"] == 0 and c2["tokens_saved"] == 1.0
    assert c2["total_tokens_saved"] == pytest.approx(1 - 1400 / 400)
    assert saved["scratch"]["compared_as"] == "baseline" and saved["scratch"]["total_tokens_saved"] == 0.0
    # a hub checkpoint's pre-training is unknown: marginal computed (2.75 at 200, 2.0 at 300 -> 2.5 at 233.3)
    h = saved["hub"]
    assert h["tokens_to_target"] == pytest.approx(200 + 100 / 3) and h["upstream_tokens"] is None
    assert h["total_tokens_saved"] is None
    row = {x[0]: x for x in s["tables"]["saved"]["rows"]}["hub"]
    assert row[s["tables"]["saved"]["columns"].index("tokens saved (total)")] is None
    # ... unless given, by run name (or path) on the command line
    out = tmp_path / "rep2"
    assert main(["report", *map(str, runs), "--out", str(out), "--baseline", str(r["scratch"]),
                 "--metric", "val/new/loss", "--upstream-tokens", "hub=2e3", "--upstream-flops",
                 f"{r['hub']}=4e4"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("hub:"))
    assert "(marginal); total tokens " in line and ", FLOPs " in line.split("; total ")[1]  # both totals printed
    h = {x["name"]: x["compute_saved"] for x in json.loads((out / "summary.json").read_text())["runs"]}["hub"]
    assert h["upstream_tokens"] == 2000 and h["upstream_flops"] == 40000
    assert h["total_tokens_saved"] == pytest.approx(1 - (2000 + 200 + 100 / 3) / 400)
    assert h["total_flops_saved"] == pytest.approx(1 - (40000 + 2000 + 1000 / 3) / 4000)
    assert main(["report", str(r["hub"]), "--out", str(tmp_path / "rep4"), "--upstream-tokens", "hub=lots"]) == 2
    assert not (tmp_path / "rep4").exists()
    with pytest.raises(UserError, match="is a run from scratch"):
        make_report(runs, tmp_path / "rep3", baseline=r["scratch"], upstream_tokens={"scratch": 5.0})
    assert not (tmp_path / "rep3").exists()
    capsys.readouterr()
    # impossible values and names that match nothing: one line, exit 2, nothing written
    base = ["report", *map(str, runs), "--out", str(tmp_path / "rep5"), "--baseline", str(r["scratch"]),
            "--metric", "val/new/loss"]
    for flags, said in ((["--upstream-flops", "hub=-1"], "--upstream-flops hub=-1: not a finite number >= 0"),
                        (["--upstream-tokens", "hub=nan"], "--upstream-tokens hub=nan: not a finite number >= 0"),
                        (["--upstream-flops", "hub=inf"], "not a finite number >= 0"),
                        (["--upstream-tokens", "nosuch=1e6"], "nosuch is none of the runs reported")):
        assert main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert said in err and err.count("\n") == 0, err
        assert not (tmp_path / "rep5").exists()
    # one of the pair given: the other as recorded, not dropped (cont's upstream: up's 1000 tokens, 10000 FLOPs)
    assert main([*base, "--upstream-flops", "cont=5e4"]) == 0
    c = {x["name"]: x["compute_saved"] for x in json.loads((tmp_path / "rep5" / "summary.json").read_text())["runs"]}
    assert c["cont"]["upstream_flops"] == 50000 and c["cont"]["upstream_tokens"] == 1000
    assert "FLOPs given, the rest from up" in c["cont"]["upstream"]
    # the checkpoint a run started from, however it is spelled (trailing /., the run or its final/): one key
    (r["up"] / "final" / "config.json").write_text("{}")
    for key in (f"{r['up']}/.", str(r["up"] / "final")):
        assert main(["report", *map(str, runs), "--out", str(tmp_path / "rep6"), "--baseline", str(r["scratch"]),
                     "--metric", "val/new/loss", "--upstream-tokens", f"{key}=7e3"]) == 0
        c = {x["name"]: x["compute_saved"] for x in json.loads((tmp_path / "rep6" / "summary.json").read_text())["runs"]}
        assert c["cont"]["upstream_tokens"] == 7000 and c["cont2"]["upstream_tokens"] == 7000 + 400, key
    # two names for one checkpoint with two values: refused, not one silently kept
    capsys.readouterr()
    assert main([*base, "--upstream-tokens", "cont=5", "--upstream-tokens", f"{r['up']}=6"]) == 2
    assert "name the same upstream checkpoint with different values" in capsys.readouterr().err


def test_report_never_overwrites_a_run_or_unrelated_files(lineage, capsys):
    """--out may be new, empty or an earlier report; never a reported run (its summary.json) or a folder of
    other files. A new folder inside a run is fine."""
    from warmstart.cli import main

    tmp_path, _, r = lineage
    before = (r["cont"] / "summary.json").read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    (other / "summary.json").write_text("mine")
    for out, said in ((r["cont"], "is the reported directory"), (r["up"], "it holds config.yaml"),
                      (other, "holds no earlier report (report.html)")):
        assert main(["report", str(r["scratch"]), str(r["cont"]), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and err.count("\n") == 0 and err.startswith("warmstart: error: --out: "), err
    assert (r["cont"] / "summary.json").read_bytes() == before and (other / "summary.json").read_text() == "mine"
    assert not (r["cont"] / "report.html").exists() and not (other / "report.html").exists()
    loop = tmp_path / "loop1"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for out, said in ((loop, "cannot be resolved"), (dangling, "is a symbolic link to nothing")):
        assert main(["report", str(r["scratch"]), str(r["cont"]), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and err.count("\n") == 0 and "--out" in err, err
    inside = r["cont"] / "report"
    assert main(["report", str(r["scratch"]), str(r["cont"]), "--out", str(inside)]) == 0
    assert main(["report", str(r["scratch"]), str(r["cont"]), "--out", str(inside)]) == 0  # an earlier report
    assert (inside / "report.html").is_file() and (r["cont"] / "summary.json").read_bytes() == before


def test_unlike_comparisons_are_flagged_not_computed(lineage):
    tmp_path, data, r = lineage
    other_tok = domain_index(tmp_path / "data-other", {"new": "fp-new"}, vocab_hash="vocab-2")
    other_text = domain_index(tmp_path / "data-text", {"new": "fp-other"})
    curve = {"new": [3, 2.8, 2.5, 2.2, 2.0]}
    bigger = like_run(tmp_path, "bigger", curve, data, init_from=str(r["up"]), params=2000)
    seq = like_run(tmp_path, "seq", curve, data, seq_len=128)
    tok = like_run(tmp_path, "tok", curve, other_tok)
    text = like_run(tmp_path, "text", curve, other_text)
    doms = like_run(tmp_path, "doms", {"new": curve["new"], "old": [3, 3, 3, 3, 3]}, data)
    wide = like_run(tmp_path, "wide", curve, data, params=2000)
    replay = like_run(tmp_path, "replay", curve, data, init_from=str(r["up"]), weights={"new": 0.75, "old": 0.25})
    runs = [r["scratch"], bigger, seq, tok, text, doms, wide, replay]
    s = make_report(runs, tmp_path / "rep", baseline=r["scratch"])
    saved = {x["name"]: x["compute_saved"] for x in s["runs"]}
    reasons = {n: saved[n]["not_comparable"] for n in saved}
    assert "2,000 vs 1,000 parameters" in reasons["bigger"]
    assert reasons["seq"] == "seq_len 128 vs 64"
    assert reasons["tok"] == "a different tokenizer (vocabulary hash)"
    assert reasons["text"] == "different eval data for 'new' (prepared fingerprint)"
    assert reasons["doms"].startswith("evaluates new, old, the baseline new")
    for n in ("bigger", "seq", "tok", "text", "doms"):
        assert not saved[n]["comparable"] and saved[n]["tokens_to_target"] is None
        assert saved[n]["tokens_saved"] is None and saved[n]["total_tokens_saved"] is None
    rows = {x[0]: x for x in s["tables"]["saved"]["rows"]}
    col = s["tables"]["saved"]["columns"].index("tokens saved (marginal)")
    assert rows["seq"][col] == "not comparable: seq_len 128 vs 64"
    assert "not comparable: seq_len 128 vs 64" in (tmp_path / "rep" / "report.md").read_text()
    # computed, but said: two scratch runs of different size; a continued run on other data than the baseline's
    assert saved["wide"]["comparable"] and "different size (2,000 vs 1,000 params)" in saved["wide"]["compared_as"]
    assert saved["wide"]["tokens_saved"] == pytest.approx(0.5)
    assert saved["replay"]["comparable"]
    assert "data differ: new 0.75 + old 0.25 vs new 1.00" in saved["replay"]["compared_as"]
    # the metric missing from a run: per-domain metric of a domain it does not evaluate
    old_only = like_run(tmp_path, "old-only", {"old": [3, 3, 3, 3, 3]}, data)
    s = make_report([r["scratch"], old_only], tmp_path / "rep2", baseline=r["scratch"], metric="val/new/loss")
    assert s["runs"][1]["compute_saved"]["not_comparable"].startswith("no val/new/loss in its evaluations")


def test_total_compute_of_real_continued_and_inherited_runs(data_dir, tokenizer_dir, tmp_path):
    from warmstart.config import Recipe, validate
    from warmstart.models.surgery import inherit
    from warmstart.recipes.inheritune import random_init_model

    runs = tmp_path / "runs"

    def started(name: str, **section) -> Recipe:  # the tiny recipe with `model` or `init` replaced
        tree = tiny_recipe_tree(data_dir, tokenizer_dir, runs, name)
        tree.pop("model")
        return validate(Recipe, {**tree, **section})

    up = train(tiny_recipe(data_dir, tokenizer_dir, runs, "up")).run_dir
    scratch = train(tiny_recipe(data_dir, tokenizer_dir, runs, "scratch", seed=1)).run_dir
    cont = train(started("cont", init={"from": str(up)})).run_dir
    s = make_report([scratch, cont], tmp_path / "rep", baseline=scratch)
    c = s["runs"][1]["compute_saved"]
    assert c["compared_as"] == "continued from up vs from scratch; same data"
    assert c["upstream_tokens"] == 8 * 256  # up's summary.json tokens
    assert c["upstream_flops"] == json.loads((up / "summary.json").read_text())["flops"]
    if c["reached"]:
        assert c["total_tokens_to_target"] == 8 * 256 + c["tokens_to_target"]
    # an inherited checkpoint records what it was cut from; its runs are charged the reference's compute
    cut = inherit(up, tmp_path / "cut", layers=1).out
    assert json.loads((cut / "inherited.json").read_text())["from"] == str(up.resolve())
    inh = train(started("inh", init={"from": str(cut)})).run_dir
    rnd = train(started("rnd", model=random_init_model(cut))).run_dir
    s = make_report([rnd, inh, cont], tmp_path / "rep2", baseline=rnd)
    by = {x["name"]: x["compute_saved"] for x in s["runs"]}
    assert by["inh"]["compared_as"] == "inherited from cut vs same-shape random init; same data"
    assert by["inh"]["upstream_tokens"] == 8 * 256 and by["inh"]["upstream"] == "cut from up"
    assert "parameters" in by["cont"]["not_comparable"]  # the full-size continued run vs a 1-block init


@pytest.mark.parametrize("saved, text", [
    (0.25, "+25.0%"),
    (1.0, "+100.0%"),
    (-1.0, "-100.0%"),  # twice the baseline's compute: still a percentage
    (-1.6276e8, "none: 1.63e+08x the baseline"),  # a total charging a checkpoint's whole pre-training
])
def test_saved_cells_read_as_a_percentage_or_as_the_multiple(saved, text):
    from warmstart.tables import fmt

    assert fmt(saved, "saved") == text


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff\xfe garbage", b'{"steps": 3'])
def test_a_damaged_upstream_summary_is_one_line_naming_it(tmp_path, content):
    """The total column follows init.from into a parent run: a damaged summary.json there is named, not a
    traceback or a silent 'unknown'."""
    from warmstart.report.saved import upstream_compute

    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "config.yaml").write_text("name: parent\n")
    (parent / "summary.json").write_bytes(content)
    with pytest.raises(UserError, match=r"parent/summary\.json"):
        upstream_compute(str(parent), {})
    assert (parent / "summary.json").read_bytes() == content


@pytest.mark.parametrize("content", [b"- a\n- b\n", b"\xff\xfe\x00", b"key: [unclosed\n"])
def test_a_damaged_config_yaml_stops_the_report_in_one_line(tmp_path, content):
    from warmstart.report.data import load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"event": "eval", "step": 0, "tokens": 0, "val/a/loss": 1.0}) + "\n")
    (run / "config.yaml").write_bytes(content)
    with pytest.raises(UserError, match=r"run/config\.yaml"):
        load_run(run, "run")


# ----------------------------------------------------------------------------------------------- what a page shows
def test_report_without_baseline_has_no_compute_saved(synthetic, tmp_path, capsys):
    """No --baseline: no compute-saved table (a lone run would be compared with itself), and a note says why."""
    out = tmp_path / "rep"
    assert main(["report", str(synthetic[0]), "--out", str(out)]) == 0
    assert "note: no baseline given: no compute-saved table" in capsys.readouterr().out
    s = make_report([synthetic[0]], tmp_path / "nb2", upstream_tokens={"x": 1.0})
    assert any("--upstream-tokens/--upstream-flops not used" in n for n in s["notes"])
    s = json.loads((out / "summary.json").read_text())
    assert set(s["tables"]) == {"runs", "gap"} and "baseline" not in s and s["runs"][0]["compute_saved"] is None
    md = (out / "report.md").read_text()
    assert "Compute saved" not in md and "baseline:" not in md and "no baseline given" in md


def test_ten_step_run_has_a_training_loss_curve(data_dir, tokenizer_dir, tmp_path):
    """The default log interval gives a 10-step run ten training-loss points, and the plot draws them."""
    import warmstart.report.plots as plots
    from warmstart.config import Recipe, validate
    from warmstart.report.data import load_run

    tree = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path / "runs", "ten", train={"steps": 10})
    del tree["train"]["log_every"]
    run_dir = train(validate(Recipe, tree)).run_dir
    assert [m["step"] for m in read_metrics(run_dir) if m["event"] == "train"] == list(range(1, 11))
    out = tmp_path / "rep"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    img = mpimg.imread(out / "train_loss.png")[..., :3]
    from matplotlib.colors import to_rgb

    blue = to_rgb(plots.plt.rcParams["axes.prop_cycle"].by_key()["color"][0])
    drawn = (abs(img - blue).max(axis=-1) < 0.1).sum()  # the run's colour: its line and markers
    assert drawn > 200, drawn
    fig = plots.line_figure([load_run(run_dir, "ten")], "train/loss", "t")
    assert len(fig.axes[0].lines[0].get_xdata()) == 10 and fig.axes[0].lines[0].get_marker() == "."
    plots.plt.close(fig)


def test_identical_curves_both_visible_and_tick_labels_apart(synthetic):
    """Two runs with the same LR curve: different line styles and a legend that says so; token ticks compact and
    not overlapping on a narrow axis."""
    import warmstart.report.plots as plots
    from warmstart.report.data import load_run

    runs = [load_run(p, p.name) for p in synthetic[:2]]
    fig = plots.line_figure(runs, "lr", "lr")
    a, b = fig.axes[0].lines
    assert list(a.get_ydata()) == list(b.get_ydata()) and a.get_linestyle() != b.get_linestyle()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["base", "fast (same as base)"]
    plots.plt.close(fig)

    assert [plots.compact(x) for x in (0, 950, 150_000, 2_500_000, 1.6e18)] == ["0", "950", "150k", "2.5M", "1.6e+18"]
    fig, ax = plots.plt.subplots(figsize=(4.2, 3.0))
    ax.plot([100_000, 230_000], [1, 2])
    plots._count_axis(ax)
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
    boxes = [bb for bb in boxes if ax.get_window_extent().x0 - 1 <= bb.x0 and bb.x1 <= ax.get_window_extent().x1 + 30]
    assert len(boxes) >= 2 and all(p.x1 < q.x0 for p, q in zip(boxes, boxes[1:], strict=False))
    plots.plt.close(fig)


def test_extra_tables_and_mixtures_on_the_page(synthetic, tmp_path):
    """The quickstart's Inheritune and AutoScale tables (and its mixture directories) are in report.html."""
    mix = tmp_path / "mix"
    mix.mkdir()
    (mix / "mixture.json").write_text(json.dumps({"weights": {"a": 0.25, "b": 0.75}, "budget": 1e6}))
    inh = {"title": "Inheritune: 2 of 4 blocks", "columns": ["model", "val loss"], "formats": ["str", "loss"],
           "rows": [["inherited", 3.25], ["random init", 4.5]]}
    html = quickstart_step(tmp_path, [synthetic[0], mix], baseline=synthetic[0], extra_tables={"inheritune": inh})
    page = _Page()
    page.feed(html.read_text())
    assert [[json.loads(v) for v, _ in r] for r in page.tables["inheritune"] if r] == inh["rows"]
    assert "Inheritune: 2 of 4 blocks" in html.read_text() and "mixture_weights.png" in html.read_text()
    with pytest.raises(ValueError, match="'runs' is one of the report's own tables"):
        make_report([synthetic[0]], tmp_path / "r2", extra_tables={"runs": inh})


def test_quickstart_terminal_says_compute_saved_as_the_report_does():
    from warmstart.demo.quickstart import _saved_lines

    c = {"comparable": True, "reached": True, "tokens_to_target": 1000.0, "tokens_saved": 0.25,
         "total_tokens_saved": -1.21}
    s = {"baseline": "scratch", "metric": "val/code/loss", "target": 3.0,
         "runs": [{"name": "scratch", "compute_saved": {}}, {"name": "rewarm", "compute_saved": c}]}
    line = _saved_lines(s).splitlines()[1]
    assert line.endswith("1,000 tokens: +25.0% own, none: 2.21x the baseline counting the upstream runs"), line
    assert fmt(-1.21, "saved") in line and fmt(0.25, "saved") in line


def test_runs_evaluated_differently_are_flagged_without_a_baseline(lineage, capsys):
    """Side by side without --baseline (curves, finals, gap table): a run evaluated with another seq_len, or one
    whose final evaluation scored another number of targets, is named loudly at the top of the page and first on
    the terminal; runs evaluated alike get no such line."""
    tmp_path, data, r = lineage
    curve = {"new": [3, 2.8, 2.5, 2.2, 2.0]}
    alike = like_run(tmp_path, "alike", curve, data)
    seq = like_run(tmp_path, "seq", curve, data, seq_len=128)
    fewer = like_run(tmp_path, "fewer", curve, data)
    for run, n in ((r["scratch"], 2048), (alike, 2048), (fewer, 1024)):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for m in lines:
            m["val/new/tokens"] = n
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    s = make_report([r["scratch"], alike], tmp_path / "same")
    assert "not_the_same_quantity" not in s
    assert "NOT THE SAME" not in (tmp_path / "same" / "report.md").read_text()
    assert s["tables"]["runs"]["rows"][1][s["tables"]["runs"]["columns"].index("val targets (final eval)")] == (
        "new 2,048")
    out = tmp_path / "differ"
    assert main(["report", str(r["scratch"]), str(alike), str(seq), str(fewer), "--out", str(out)]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == (
        "warning: NOT THE SAME QUANTITY: these runs' validation losses are measured differently from scratch's, so "
        "the curves, finals and stability-gap numbers side by side do not compare (seq: seq_len 128 vs 64 | fewer: "
        "1,024 vs 2,048 'new' targets scored); evaluate them alike (`warmstart eval RUN "
        "--seq-len/--max-tokens/--windows`) to compare")
    md = (out / "report.md").read_text().splitlines()
    assert md[3] == f"**{said[0].removeprefix('warning: ')}**"


def test_lr_curve_is_the_lr_each_step_used(tmp_path):
    """The LR plot draws the training steps' LRs; an eval event's `lr` (the next step's, logged at step 0 before
    any step) adds no point of its own."""
    import warmstart.report.plots as plots
    from warmstart.report.data import load_run

    run = write_run(tmp_path, "r", {"a": [5, 4, 3, 2, 1]})
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        m["lr"] = 1e-3 * m["step"] if m["event"] == "train" else 0.5  # evals: a different, wrong value
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    fig = plots.line_figure([load_run(run, "r")], "lr", "lr")
    (line,) = fig.axes[0].lines
    assert list(line.get_xdata()) == TOKENS[1:] and list(line.get_ydata()) == [1e-3 * s for s in (1, 2, 3, 4)]
    plots.plt.close(fig)
