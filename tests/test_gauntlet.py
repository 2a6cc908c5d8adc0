"""Bad input to every subcommand, as a hostile new user would give it: each case runs `python -m warmstart ...` as a
real process and must exit 2 with exactly one line on stderr (no traceback) and leave every file that was there
byte-identical (and no new file behind).

The cases share module-scoped fixtures (a tokenizer, a prepared data dir, a finished tiny run, rankings, mixture
files, damaged checkpoints); each case runs in its own hard-linked copy of them, so the check of "nothing changed"
is per case. All cases run once, in parallel, in one fixture; each parametrised test checks its own result.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

SRC = Path(__file__).resolve().parents[1] / "src"
READ_ONLY = "/sys/warmstart-gauntlet"  # not writable even for root (tests may run as root, where chmod is moot)
WORKERS = 3


@dataclass
class Case:
    id: str
    argv: list[str]
    setup: object = None  # callable(case_dir) making the case's own bad files, before the snapshot
    expect: str = ""  # a fragment the one error line must contain (case-insensitive)
    env: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- helpers
def _write(rel: str, text: str):
    def setup(d: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")

    return setup


def _both(*fns):
    def setup(d: Path) -> None:
        for f in fns:
            f(d)

    return setup


def _yaml(rel: str, tree: dict):
    return _write(rel, yaml.safe_dump(tree, sort_keys=False))


def _metrics_run(rel: str, lines: list[str]):
    return _write(f"{rel}/metrics.jsonl", "".join(line + "\n" for line in lines))


GOOD_EVAL = json.dumps({"event": "eval", "step": 0, "tokens": 0, "flops": 0.0, "val/a/loss": 5.0})
TRAIN_TREE = {
    "name": "new",
    "out_dir": "runs",
    "data": {"dir": "data", "weights": {"code": 0.5, "prose": 0.5}, "seq_len": 32},
    "model": {"preset": "llama-tiny", "tokenizer": "tok"},
    "schedule": {"kind": "cosine", "max_lr": 3e-3, "warmup_steps": 1},
    "train": {"steps": 2, "batch_tokens": 256, "micro_batch_size": 4, "progress": False},
    "eval": {"every": 2, "max_tokens": 256, "batch_size": 8},
}


def _train_tree(**changes) -> dict:
    tree = json.loads(json.dumps(TRAIN_TREE))
    for key, value in changes.items():
        node = tree
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return tree


def _cut_zstd(rel: str, fraction: float = 0.6):
    """A zstd file of many lines of src/good.jsonl's records (JSONL or its texts), cut inside its frame."""

    def setup(d: Path) -> None:
        import zstandard

        raw = (d / "src" / "good.jsonl").read_bytes() * 20
        if not rel.endswith(".jsonl.zst"):
            raw = b"".join(json.loads(line)["text"].encode() + b"\n" for line in raw.splitlines())
        data = zstandard.ZstdCompressor().compress(raw)
        (d / rel).write_bytes(data[: int(len(data) * fraction)])

    return setup


def _cut_gzip(rel: str):
    def setup(d: Path) -> None:
        import gzip

        data = gzip.compress((d / "src" / "good.jsonl").read_bytes() * 20)
        (d / rel).write_bytes(data[: int(len(data) * 0.6)])

    return setup


def _damaged_parquet(rel: str):
    """A Parquet file whose second row group's page data is garbage."""

    def setup(d: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        docs = [f"row {i} " + "text " * 20 for i in range(300)]
        path = d / rel
        pq.write_table(pa.table({"text": docs}), path, row_group_size=100, compression="snappy",
                       use_dictionary=False)
        chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
        raw = bytearray(path.read_bytes())
        for k in range(chunk.data_page_offset + chunk.total_compressed_size // 2,
                       chunk.data_page_offset + chunk.total_compressed_size):
            raw[k] ^= 0x5A
        path.write_bytes(bytes(raw))

    return setup


def _recipe(tree: dict, rel: str = "bad.yaml"):
    return _yaml(rel, tree)


# ----------------------------------------------------------------------------------------------- the cases
def _cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    T = ["train", "bad.yaml"]

    # argument parsing (every command): one line, not usage + error
    add(Case("argparse-no-command", [], expect="required"))
    add(Case("argparse-unknown-command", ["frobnicate"], expect="invalid choice"))
    add(Case("argparse-inherit-missing-out", ["inherit", "--from", "runs/up", "--layers", "1"], expect="--out"))
    add(Case("argparse-prepare-workers-not-int", ["prepare", "prep.yaml", "--workers", "x"], expect="invalid int"))
    add(Case("argparse-eval-device", ["eval", "runs/up", "--device", "tpu"], expect="invalid choice"))
    add(Case("argparse-unknown-flag", ["gap", "runs/up", "--frob"], expect="unrecognized"))

    # prepare
    add(Case("prepare-recipe-missing", ["prepare", "nope.yaml"], expect="not found"))
    add(Case("prepare-recipe-not-yaml", ["prepare", "bad.yaml"], _write("bad.yaml", "a: [1,\n"), "yaml"))
    add(Case("prepare-recipe-a-list", ["prepare", "bad.yaml"], _write("bad.yaml", "- 1\n- 2\n"), "mapping"))
    add(Case("prepare-unknown-key", ["prepare", "prep.yaml", "--set", "frob=1"], expect="unknown key"))
    add(Case("prepare-set-without-equals", ["prepare", "prep.yaml", "--set", "val_docs"], expect="key=value"))
    add(Case("prepare-negative-val-docs", ["prepare", "prep.yaml", "--val-docs", "-1"], expect="val_docs"))
    add(Case("prepare-zero-workers", ["prepare", "prep.yaml", "--workers", "0"], expect="workers"))
    add(Case("prepare-val-docs-and-fraction", ["prepare", "prep.yaml", "--val-docs", "1", "--val-fraction", "0.1"],
             expect="not both"))
    add(Case("prepare-bad-domain-name", ["prepare", "bad.yaml"],
             _yaml("bad.yaml", {"tokenizer": "tok", "out": "p", "domains": {"a/b": [{"path": "src/good.jsonl"}]}}),
             "domain name"))
    add(Case("prepare-source-missing", ["prepare", "prep.yaml", "--set", "domains.a=[{path: src/nope.jsonl}]"],
             expect="no such file"))
    add(Case("prepare-empty-source", ["prepare", "prep.yaml", "--set", "domains.a=[{path: src/empty.jsonl}]"],
             expect="no documents"))
    add(Case("prepare-bad-json-line", ["prepare", "prep.yaml", "--set", "domains.a=[{path: src/badjson.jsonl}]"],
             expect="badjson.jsonl:2"))
    add(Case("prepare-lone-surrogate", ["prepare", "prep.yaml", "--set", "domains.a=[{path: src/surrogate.jsonl}]"],
             expect="surrogate.jsonl:2"))
    add(Case("prepare-out-is-a-file", ["prepare", "prep.yaml", "--set", "out=afile"], expect="is a file"))
    add(Case("prepare-out-below-a-file", ["prepare", "prep.yaml", "--set", "out=afile/x"], expect="is a file"))
    add(Case("prepare-out-read-only", ["prepare", "prep.yaml", "--set", f"out={READ_ONLY}"], expect="cannot write"))
    add(Case("prepare-tokenizer-missing", ["prepare", "prep.yaml", "--set", "tokenizer=./no-tok"], expect="no-tok"))
    add(Case("prepare-out-foreign-dir", ["prepare", "prep.yaml", "--set", "out=src"], expect="not a warmstart"))

    # tokenizer train
    tt = ["tokenizer", "train", "prep.yaml", "--vocab-size", "300"]
    add(Case("tokenizer-out-is-a-file", [*tt, "--out", "afile"], expect="is a file"))
    add(Case("tokenizer-out-is-a-file-overwrite", [*tt, "--out", "afile", "--overwrite"], expect="is a file"))
    add(Case("tokenizer-out-holds-other-files", [*tt, "--out", "src"], expect="not a tokenizer"))
    add(Case("tokenizer-out-holds-other-files-overwrite", [*tt, "--out", "src", "--overwrite"],
             expect="not a tokenizer"))
    add(Case("tokenizer-out-existing-tokenizer", [*tt, "--out", "tok"], expect="--overwrite"))
    add(Case("tokenizer-out-read-only", [*tt, "--out", READ_ONLY], expect="cannot write"))
    add(Case("tokenizer-empty-domain", [*tt, "--out", "newtok", "--set", "domains.a=[{path: src/empty.jsonl}]"],
             expect="no documents"))
    add(Case("tokenizer-vocab-too-small", ["tokenizer", "train", "prep.yaml", "--vocab-size", "100", "--out", "t2"],
             expect="260"))
    add(Case("tokenizer-no-domains", ["tokenizer", "train", "bad.yaml", "--out", "t2"], _write("bad.yaml", "out: x\n"),
             "domains"))
    add(Case("tokenizer-source-missing", [*tt, "--out", "t2", "--set", "domains.a=[{path: src/nope.jsonl}]"],
             expect="no such file"))
    add(Case("tokenizer-lone-surrogate", [*tt, "--out", "t2", "--set", "domains.a=[{path: src/surrogate.jsonl}]"],
             expect="surrogate.jsonl:2"))

    # corpus demo
    add(Case("corpus-demo-out-is-a-file", ["corpus", "demo", "afile"], expect="is a file"))
    add(Case("corpus-demo-out-not-empty", ["corpus", "demo", "src"], expect="not empty"))
    add(Case("corpus-demo-read-only", ["corpus", "demo", READ_ONLY], expect="cannot write"))

    # train: recipe errors (before torch), then model/data errors
    add(Case("train-recipe-missing", ["train", "nope.yaml"], expect="not found"))
    add(Case("train-unknown-key", T, _recipe(_train_tree(train__frob=1)), "unknown key"))
    add(Case("train-tokens-and-steps", T, _recipe(_train_tree(train__tokens=512)), "exactly one"))
    add(Case("train-batch-not-multiple", T, _recipe(_train_tree(train__batch_tokens=100)), "multiple"))
    add(Case("train-set-not-a-number", [*T, "--set", "train.steps=abc"], _recipe(_train_tree()), "train.steps"))
    add(Case("train-set-value-not-section", [*T, "--set", "model.preset.x=1"], _recipe(_train_tree()),
             "not a section"))
    add(Case("train-warmup-both", T, _recipe(_train_tree(schedule__warmup_fraction=0.1)), "not both"))
    add(Case("train-no-architecture", T, _recipe(_train_tree(model__preset=None)), "model"))
    add(Case("train-keep-optimizer-without-from", T, _recipe(_train_tree(init={"keep_optimizer": True})),
             "keep_optimizer"))
    add(Case("train-out-dir-is-a-file", T, _recipe(_train_tree(out_dir="afile")), "is a file"))
    add(Case("train-out-dir-read-only", T, _recipe(_train_tree(out_dir=READ_ONLY)), "cannot write"))
    add(Case("train-run-exists", T, _recipe(_train_tree(name="up")), "exists"))
    add(Case("train-resume-nothing", [*T, "--resume"], _recipe(_train_tree()), "nothing to resume"))
    add(Case("train-data-dir-missing", T, _recipe(_train_tree(data__dir="nodata")), "nodata"))
    add(Case("train-weights-unknown-domain", T, _recipe(_train_tree(data__weights={"nope": 1.0})), "nope"))
    add(Case("train-weights-from-missing", T, _recipe(_train_tree(data__weights={}, data__weights_from="m.json")),
             "m.json"))
    add(Case("train-eval-domain-unknown", T, _recipe(_train_tree(eval__domains=["nope"])), "nope"))
    add(Case("train-unknown-preset", T, _recipe(_train_tree(model__preset="llama-huge")), "unknown preset"))
    add(Case("train-tokenizer-missing", T, _recipe(_train_tree(model__tokenizer="./no-tok")), "no-tok"))
    add(Case("train-model-config-missing", T, _recipe(_train_tree(model__preset=None, model__config="no.json")),
             "no.json"))
    add(Case("train-heads-do-not-split-hidden", [*T, "--set", "model.sizes.heads=5"], _recipe(_train_tree()),
             "heads"))
    add(Case("train-kv-heads-do-not-divide", [*T, "--set", "model.sizes.kv_heads=3"], _recipe(_train_tree()),
             "kv_heads"))
    add(Case("train-zero-layers", [*T, "--set", "model.sizes.layers=0"], _recipe(_train_tree()), "layers"))
    add(Case("train-gpt2-heads", T, _recipe(_train_tree(model__preset="gpt2-tiny", model__sizes={"heads": 7})),
             "heads"))
    add(Case("train-seq-len-above-positions", T,
             _recipe(_train_tree(data__seq_len=1024, train__batch_tokens=2048)), "512 positions"))
    add(Case("train-init-from-missing-local", T,
             _recipe(_train_tree(model__preset=None, init={"from": "runs/upstrem"})), "runs/upstrem"))
    add(Case("train-init-from-hub-offline", T,
             _recipe(_train_tree(model__preset=None, init={"from": "someone/no-such-model"})), "offline"))
    add(Case("train-init-from-unfinished", T,
             _recipe(_train_tree(model__preset=None, init={"from": "runs/unfinished"})), "unfinished"))
    add(Case("train-init-from-seq-len-above-positions", T,
             _recipe(_train_tree(model__preset=None, init={"from": "runs/up"}, data__seq_len=1024,
                                 train__batch_tokens=2048)), "512 positions"))
    add(Case("train-init-from-other-sizes", T,
             _recipe(_train_tree(model__preset=None, init={"from": "runs/up"}, model__sizes={"layers": 3})),
             "architecture comes from init.from"))
    add(Case("train-init-from-pickled-weights", T,
             _recipe(_train_tree(model__preset=None, init={"from": "pickled"})), "cannot load"))
    add(Case("train-all-domains-without-validation", T, _recipe(_train_tree(data__dir="data0")),
             "no domain has validation"))
    add(Case("train-eval-domain-without-validation", T,
             _recipe(_train_tree(data__dir="data0", eval__domains=["code"])), "no validation"))

    # inherit
    add(Case("inherit-from-missing-local", ["inherit", "--from", "runs/upstrem", "--layers", "1", "--out", "o"],
             expect="runs/upstrem"))
    add(Case("inherit-from-hub-offline", ["inherit", "--from", "someone/no-such-model", "--layers", "1", "--out", "o"],
             expect="offline"))
    add(Case("inherit-from-bad-hub-name", ["inherit", "--from", "a b", "--layers", "1", "--out", "o"],
             expect="hub name"))
    add(Case("inherit-from-a-file", ["inherit", "--from", "afile", "--layers", "1", "--out", "o"], expect="is a file"))
    add(Case("inherit-from-unfinished-run", ["inherit", "--from", "runs/unfinished", "--layers", "1", "--out", "o"],
             expect="unfinished"))
    add(Case("inherit-from-no-config", ["inherit", "--from", "src", "--layers", "1", "--out", "o"],
             expect="no config.json"))
    add(Case("inherit-out-is-a-file", ["inherit", "--from", "runs/up", "--layers", "1", "--out", "afile"],
             expect="is a file"))
    add(Case("inherit-out-not-empty", ["inherit", "--from", "runs/up", "--layers", "1", "--out", "src"],
             expect="not empty"))
    add(Case("inherit-out-read-only", ["inherit", "--from", "runs/up", "--layers", "1", "--out", READ_ONLY],
             expect="cannot write"))
    add(Case("inherit-layers-zero", ["inherit", "--from", "runs/up", "--layers", "0", "--out", "o"],
             expect="--layers"))
    add(Case("inherit-blocks-twice", ["inherit", "--from", "runs/up", "--blocks", "0,0", "--out", "o"],
             expect="twice"))
    add(Case("inherit-blocks-out-of-range", ["inherit", "--from", "runs/up", "--blocks", "5", "--out", "o"],
             expect="out of range"))
    add(Case("inherit-pickled-weights", ["inherit", "--from", "pickled", "--layers", "1", "--out", "o"],
             expect="cannot load"))

    # grow
    grow_tree = {"name": "g", "reference": {"from": "runs/up"}, "data": TRAIN_TREE["data"],
                 "train": TRAIN_TREE["train"], "eval": TRAIN_TREE["eval"]}
    add(Case("grow-recipe-missing", ["grow", "nope.yaml"], expect="not found"))
    add(Case("grow-unknown-key", ["grow", "bad.yaml"], _recipe({**grow_tree, "frob": 1}), "unknown key"))
    add(Case("grow-empty-target", ["grow", "bad.yaml"], _recipe({**grow_tree, "grow": {"target": []}}), "target"))
    add(Case("grow-out-dir-is-a-file", ["grow", "bad.yaml"], _recipe({**grow_tree, "out_dir": "afile"}), "is a file"))
    add(Case("grow-reference-missing", ["grow", "bad.yaml"], _recipe({**grow_tree, "reference": {"from": "runs/nope"}}),
             "runs/nope"))

    # sweep
    sw = ["sweep", "bad.yaml"]
    add(Case("sweep-recipe-missing", ["sweep", "nope.yaml", "--grid", "seed=1,2"], expect="not found"))
    add(Case("sweep-grid-without-equals", [*sw, "--grid", "seed"], _recipe(_train_tree()), "--grid"))
    add(Case("sweep-grid-no-values", [*sw, "--grid", "seed="], _recipe(_train_tree()), "--grid"))
    add(Case("sweep-grid-unknown-key", [*sw, "--grid", "frob=1,2"], _recipe(_train_tree()), "unknown key"))
    add(Case("sweep-no-name", [*sw, "--grid", "seed=1,2"], _recipe(_train_tree(name=None)), "name"))
    add(Case("sweep-window-zero", [*sw, "--grid", "seed=1,2", "--window", "0"], _recipe(_train_tree()), "--window"))
    add(Case("sweep-out-dir-is-a-file", [*sw, "--grid", "seed=1,2"], _recipe(_train_tree(out_dir="afile")),
             "is a file"))

    # gap
    add(Case("gap-run-missing", ["gap", "runs/nope"], expect="no metrics.jsonl"))
    add(Case("gap-no-metrics", ["gap", "src"], expect="no metrics.jsonl"))
    add(Case("gap-truncated-line", ["gap", "runs/cut"], _metrics_run("runs/cut", [GOOD_EVAL, GOOD_EVAL[:30]]),
             "metrics.jsonl:2"))
    add(Case("gap-list-line", ["gap", "runs/lst"], _metrics_run("runs/lst", [GOOD_EVAL, "[1, 2]"]), "metrics.jsonl:2"))
    add(Case("gap-string-line", ["gap", "runs/str"], _metrics_run("runs/str", ['"x"', GOOD_EVAL]), "metrics.jsonl:1"))
    add(Case("gap-no-step", ["gap", "runs/ns"], _metrics_run("runs/ns", ['{"event": "eval"}']), "metrics.jsonl:1"))
    add(Case("gap-no-evals", ["gap", "runs/ne"], _metrics_run("runs/ne", ['{"event": "train", "step": 1}']),
             "no evaluation"))
    add(Case("gap-window-zero", ["gap", "runs/up", "--window", "0"], expect="--window"))
    add(Case("gap-baseline-after-end", ["gap", "runs/up", "--baseline-step", "1000000"], expect="no evaluation"))

    # report
    add(Case("report-run-missing", ["report", "runs/nope", "--out", "rep"], expect="runs/nope"))
    add(Case("report-out-is-a-file", ["report", "runs/up", "--out", "afile"], expect="is a file"))
    add(Case("report-out-read-only", ["report", "runs/up", "--out", READ_ONLY], expect="cannot write"))
    add(Case("report-truncated-line", ["report", "runs/cut", "--out", "rep"],
             _metrics_run("runs/cut", [GOOD_EVAL, GOOD_EVAL[:30]]), "metrics.jsonl:2"))
    add(Case("report-list-line", ["report", "runs/lst", "--out", "rep"], _metrics_run("runs/lst", ["[1]", GOOD_EVAL]),
             "metrics.jsonl:1"))
    add(Case("report-baseline-unknown", ["report", "runs/up", "--out", "rep", "--baseline", "runs/zzz"],
             expect="--baseline"))
    add(Case("report-gap-window-zero", ["report", "runs/up", "--out", "rep", "--gap-window", "0"],
             expect="--gap-window"))
    add(Case("report-no-evals", ["report", "runs/ne", "--out", "rep"],
             _metrics_run("runs/ne", ['{"event": "train", "step": 1}']), "no evaluation"))
    add(Case("report-damaged-summary", ["report", "runs/ds", "--out", "rep"],
             _both(_metrics_run("runs/ds", [GOOD_EVAL]), _write("runs/ds/summary.json", "{")), "summary.json"))

    # quality score / select
    qs = ["quality", "score", "--data", "data", "--domain", "prose", "--out", "qout"]
    add(Case("quality-score-no-model", qs, expect="exactly one"))
    add(Case("quality-score-both", [*qs, "--model", "runs/up", "--ngram-reference", "code"], expect="exactly one"))
    add(Case("quality-score-data-missing", ["quality", "score", "--data", "nodata", "--domain", "prose", "--out", "q",
                                            "--ngram-reference", "code"], expect="nodata"))
    add(Case("quality-score-domain-unknown", ["quality", "score", "--data", "data", "--domain", "nope", "--out", "q",
                                              "--ngram-reference", "code"], expect="--domain"))
    add(Case("quality-score-reference-unknown", [*qs, "--ngram-reference", "nope"], expect="--ngram-reference"))
    add(Case("quality-score-order-zero", [*qs, "--ngram-reference", "code", "--order", "0"], expect="--order"))
    add(Case("quality-score-chunk-docs-zero", [*qs, "--ngram-reference", "code", "--chunk-docs", "0"],
             expect="--chunk-docs"))
    add(Case("quality-score-model-missing", [*qs, "--model", "runs/upstrem"], expect="runs/upstrem"))
    add(Case("quality-score-model-hub-offline", [*qs, "--model", "someone/no-such-model"], expect="offline"))
    add(Case("quality-score-out-is-a-file", ["quality", "score", "--data", "data", "--domain", "prose", "--out",
                                             "afile", "--ngram-reference", "code"], expect="is a file"))
    add(Case("quality-score-out-read-only", ["quality", "score", "--data", "data", "--domain", "prose", "--out",
                                             READ_ONLY, "--ngram-reference", "code"], expect="cannot write"))
    add(Case("quality-score-out-foreign", ["quality", "score", "--data", "data", "--domain", "prose", "--out",
                                           "src", "--ngram-reference", "code"], expect="not a quality ranking"))
    add(Case("quality-score-context-above-positions", [*qs, "--model", "runs/up", "--context", "4096"],
             expect="512 positions"))
    qe = ["quality", "select", "--ranking", "rank", "--data", "data"]
    add(Case("quality-select-ranking-missing", ["quality", "select", "--ranking", "norank", "--top-tokens", "100",
                                                "--out-domain", "best"], expect="norank"))
    add(Case("quality-select-top-tokens-zero", [*qe, "--top-tokens", "0", "--out-domain", "best"],
             expect="--top-tokens"))
    add(Case("quality-select-bad-domain-name", [*qe, "--top-tokens", "1000", "--out-domain", "a/b"],
             expect="out-domain"))
    add(Case("quality-select-domain-exists", [*qe, "--top-tokens", "1000", "--out-domain", "code"],
             expect="exists"))
    add(Case("quality-select-data-not-prepared", ["quality", "select", "--ranking", "rank", "--data", "src",
                                                  "--top-tokens", "1000", "--out-domain", "best"], expect="src"))
    add(Case("quality-select-data-read-only", ["quality", "select", "--ranking", "rank", "--data", READ_ONLY,
                                               "--top-tokens", "1000", "--out-domain", "best"], expect="cannot write"))

    # mixture ddo / predict
    ddo = {"name": "mix", "proxy": _train_tree()}
    add(Case("ddo-recipe-missing", ["mixture", "ddo", "nope.yaml"], expect="not found"))
    add(Case("ddo-multiplier-one", ["mixture", "ddo", "bad.yaml"],
             _recipe({**ddo, "proxy": _train_tree(data__weights={}), "multipliers": [1, 2]}), "multipliers"))
    add(Case("ddo-proxy-weights", ["mixture", "ddo", "bad.yaml"], _recipe(ddo), "proxy.data.weights"))
    add(Case("ddo-bad-bounds", ["mixture", "ddo", "bad.yaml"],
             _recipe({**ddo, "proxy": _train_tree(data__weights={}), "bounds": {"code": [0.9, 0.1]}}), "bounds"))
    add(Case("ddo-out-dir-is-a-file", ["mixture", "ddo", "bad.yaml"],
             _recipe({**ddo, "proxy": _train_tree(data__weights={}), "out_dir": "afile"}), "is a file"))
    mp = ["mixture", "predict", "--from", "m1.json", "--from", "m2.json"]
    add(Case("predict-source-missing", ["mixture", "predict", "--from", "nope.json", "--from", "m2.json",
                                        "--budget", "1e6"], expect="nope.json"))
    add(Case("predict-source-not-mixture", ["mixture", "predict", "--from", "prep.yaml", "--from", "m2.json",
                                            "--budget", "1e6"], expect="not a mixture"))
    add(Case("predict-budget-not-number", [*mp, "--budget", "lots"], expect="--budget"))
    add(Case("predict-budget-negative", [*mp, "--budget", "-5"], expect="--budget"))
    add(Case("predict-out-is-other-file", [*mp, "--budget", "1e6", "--out", "afile"], expect="not a mixture"))
    add(Case("predict-out-below-a-file", [*mp, "--budget", "1e6", "--out", "afile/m.json"], expect="is a file"))
    add(Case("predict-out-read-only", [*mp, "--budget", "1e6", "--out", f"{READ_ONLY}/m.json"], expect="cannot write"))

    # eval
    add(Case("eval-typo-local", ["eval", "runs/typo", "--data", "data"], expect="runs/typo"))
    add(Case("eval-hub-offline", ["eval", "someone/no-such-model", "--data", "data", "--out", "e"], expect="offline"))
    add(Case("eval-nothing-to-do", ["eval", "runs/up"], expect="nothing to do"))
    add(Case("eval-hf-dir-without-out", ["eval", "tok", "--data", "data"], expect="no config.json"))
    add(Case("eval-not-a-run-without-out", ["eval", "pickled", "--data", "data"], expect="--out"))
    add(Case("eval-out-is-a-file", ["eval", "runs/up", "--data", "data", "--out", "afile"], expect="is a file"))
    add(Case("eval-out-read-only", ["eval", "runs/up", "--data", "data", "--out", READ_ONLY], expect="cannot write"))
    add(Case("eval-seq-len-above-positions", ["eval", "runs/up", "--data", "data", "--seq-len", "100000"],
             expect="512 positions"))
    add(Case("eval-seq-len-zero", ["eval", "runs/up", "--data", "data", "--seq-len", "0"], expect="--seq-len"))
    add(Case("eval-batch-size-zero", ["eval", "runs/up", "--data", "data", "--batch-size", "0"],
             expect="--batch-size"))
    add(Case("eval-data-missing", ["eval", "runs/up", "--data", "nodata"], expect="nodata"))
    add(Case("eval-domains-unknown", ["eval", "runs/up", "--data", "data", "--domains", "nope"], expect="nope"))
    add(Case("eval-num-fewshot-negative", ["eval", "runs/up", "--tasks", "x", "--num-fewshot", "-1"],
             expect="--num-fewshot"))
    add(Case("eval-limit-zero", ["eval", "runs/up", "--tasks", "x", "--limit", "0"], expect="--limit"))
    add(Case("eval-unfinished-run", ["eval", "runs/unfinished", "--data", "data"], expect="checkpoint"))
    add(Case("eval-data-without-validation", ["eval", "runs/up", "--data", "data0"], expect="no domain has validation"))
    add(Case("eval-domain-without-validation", ["eval", "runs/up", "--data", "data0", "--domains", "code"],
             expect="no validation"))

    # format show / probe
    add(Case("format-show-missing", ["format", "show", "nodata"], expect="nodata"))
    add(Case("format-show-not-prepared", ["format", "show", "src"], expect="src"))
    add(Case("format-probe-missing-local", ["format", "probe", "runs/upstrem", "--data", "data", "--domain", "code"],
             expect="runs/upstrem"))
    add(Case("format-probe-hub-offline", ["format", "probe", "someone/no-such-model", "--data", "data", "--domain",
                                          "code"], expect="offline"))
    add(Case("format-probe-json-is-a-dir", ["format", "probe", "runs/up", "--data", "data", "--domain", "code",
                                            "--json", "src"], expect="is a directory"))

    # checkpoint from-gguf
    add(Case("from-gguf-missing", ["checkpoint", "from-gguf", "nope.gguf", "ckpt"], expect="not found"))
    add(Case("from-gguf-out-is-a-file", ["checkpoint", "from-gguf", "junk.gguf", "afile"],
             _write("junk.gguf", "not a gguf file"), "is not a conversion"))
    add(Case("from-gguf-not-gguf", ["checkpoint", "from-gguf", "junk.gguf", "ckpt"],
             _write("junk.gguf", "not a gguf file"), "is not a GGUF file (it does not start with"))

    # quickstart
    add(Case("quickstart-out-is-a-file", ["quickstart", "--out", "afile"], expect="is a file"))
    add(Case("quickstart-out-read-only", ["quickstart", "--out", READ_ONLY], expect="cannot write"))
    # damaged inputs of every source format: refused naming the file (issue 22 (a))
    pa = ["prepare", "prep.yaml", "--set"]
    add(Case("prepare-zstd-jsonl-cut", [*pa, "domains.a=[{path: cut.jsonl.zst}]"], _cut_zstd("cut.jsonl.zst"),
             "cut.jsonl.zst: corrupt or truncated after line"))
    add(Case("prepare-zstd-text-cut", [*pa, "domains.a=[{path: cut.txt.zst}]"], _cut_zstd("cut.txt.zst"),
             "inside a zstd frame"))
    add(Case("prepare-gzip-jsonl-cut", [*pa, "domains.a=[{path: cut.jsonl.gz}]"], _cut_gzip("cut.jsonl.gz"),
             "cut.jsonl.gz: corrupt or truncated"))
    add(Case("prepare-parquet-damaged-page", [*pa, "domains.a=[{path: bad.parquet}]"], _damaged_parquet("bad.parquet"),
             "bad.parquet: row group 1 (rows 101-200): damaged"))
    add(Case("tokenizer-zstd-jsonl-cut", [*tt, "--out", "t2", "--set", "domains.a=[{path: cut.jsonl.zst}]"],
             _cut_zstd("cut.jsonl.zst"), "inside a zstd frame"))
    add(Case("tokenizer-parquet-damaged-page", [*tt, "--out", "t2", "--set", "domains.a=[{path: bad.parquet}]"],
             _damaged_parquet("bad.parquet"), "row group 1"))

    # ambiguous recipes, overrides and data files: refused, never last-one-wins (issue 22 (b))
    add(Case("prepare-domain-twice", ["prepare", "bad.yaml"], _write("bad.yaml", (
        "tokenizer: tok\nout: p\ndomains:\n  a: [{path: src/good.jsonl}]\n  b: [{path: src/good.jsonl}]\n"
        "  a: [{path: src/empty.jsonl}]\n")), "bad.yaml: key 'domains.a' written twice (lines 4 and 6)"))
    add(Case("prepare-flag-and-set", ["prepare", "prep.yaml", "--val-docs", "1", "--set", "val_docs=2"],
             expect="--set val_docs: given twice"))
    add(Case("tokenizer-domain-twice", ["tokenizer", "train", "bad.yaml", "--vocab-size", "300", "--out", "t2"],
             _write("bad.yaml", "domains: {a: [{path: src/good.jsonl}], a: [{path: src/empty.jsonl}]}\n"),
             "written twice"))
    train_text = yaml.safe_dump(_train_tree(), sort_keys=False)
    add(Case("train-section-twice", T, _write("bad.yaml", train_text + "train: {steps: 4, batch_tokens: 256}\n"),
             "key 'train' written twice"))
    add(Case("train-weight-twice", T, _write("bad.yaml", train_text.replace(
        "weights:\n    code: 0.5\n    prose: 0.5\n", "weights: {prose: 0.9, code: 0.1, prose: 0.0}\n")),
        "key 'data.weights.prose' written twice"))
    add(Case("train-set-twice", [*T, "--set", "train.steps=2", "--set", "train.steps=4"], _recipe(_train_tree()),
             "--set train.steps: given twice ('2' and '4'); keep one"))
    add(Case("train-set-value-key-twice", [*T, "--set", "data.weights={code: 1, code: 0}"], _recipe(_train_tree()),
             "key 'code' written twice"))
    add(Case("train-weights-from-key-twice", T,
             _both(_recipe(_train_tree(data__weights={}, data__weights_from="mdup.json")),
                   _write("mdup.json", '{"weights": {"code": 0.5, "prose": 0.5, "code": 0.0}}')),
             "mdup.json: key 'code' written twice"))
    add(Case("grow-key-twice", ["grow", "bad.yaml"],
             _write("bad.yaml", yaml.safe_dump(grow_tree, sort_keys=False) + "name: h\n"), "key 'name' written twice"))
    add(Case("sweep-key-twice", ["sweep", "bad.yaml", "--grid", "seed=1,2"],
             _write("bad.yaml", train_text + "seed: 3\nseed: 4\n"), "key 'seed' written twice"))
    add(Case("sweep-set-of-a-grid-key", ["sweep", "bad.yaml", "--grid", "seed=1,2", "--set", "seed=3"],
             _recipe(_train_tree()), "--set seed: also a --grid key"))
    add(Case("ddo-key-twice", ["mixture", "ddo", "bad.yaml"],
             _write("bad.yaml", "proxy: {name: p}\nproxy: {name: q}\n"), "key 'proxy' written twice"))
    add(Case("predict-mixture-key-twice", ["mixture", "predict", "--from", "mdup.json", "--from", "m2.json",
                                           "--budget", "1e6"],
             _write("mdup.json", '{"format": "warmstart-mixture-v1", "budget": 1e5, '
                                 '"tokens": {"code": 4e4, "prose": 6e4, "code": 0}}'),
             "mdup.json: key 'code' written twice"))
    add(Case("report-run-config-key-twice", ["report", "runs/dk", "--out", "rep"],
             _both(_metrics_run("runs/dk", [GOOD_EVAL]), _write("runs/dk/config.yaml", "name: dk\nname: dk2\n")),
             "key 'name' written twice"))
    add(Case("format-probe-write-recipe-key-twice", ["format", "probe", "runs/up", "--data", "data", "--domain",
                                                     "code", "--write-recipe", "bad.yaml"],
             _write("bad.yaml", "tokenizer: tok\nout: p\nout: q\ndomains: {a: [{path: src/good.jsonl}]}\n"),
             "key 'out' written twice"))

    # a resume may not recount the steps taken (issue 22 (c))
    add(Case("train-resume-batch-tokens-changed", [*T, "--resume", "--allow-config-change", "--set",
                                                   "train.steps=4", "--set", "train.batch_tokens=512"],
             _recipe(_train_tree(name="up")), "cannot change train.batch_tokens (256 -> 512)"))

    # a validation domain with nothing to score is never a NaN average; named, it is refused (issue 22 (d))
    add(Case("train-eval-domain-of-empty-documents", T,
             _recipe(_train_tree(data__dir="dataE", data__weights={"code": 1.0}, eval__domains=["blank"],
                                 eval__windows="documents")), "no validation document of 2 or more tokens"))
    add(Case("eval-domain-of-empty-documents", ["eval", "runs/up", "--data", "dataE", "--domains", "blank",
                                                "--windows", "documents"],
             expect="no validation document of 2 or more tokens"))
    return c


CASES = _cases()


# ----------------------------------------------------------------------------------------------- fixtures
def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _unsafe_pickle(path: Path) -> None:
    """A pickle that torch.load(weights_only=True) refuses (it names a callable); it is never unpickled."""
    path.write_bytes(pickle.dumps({"state": {}, "param_groups": [], "x": shutil.rmtree}))


def _build_world(root: Path, tokenizer_dir: Path, data_dir: Path) -> Path:
    from conftest import SAMPLE_TEXTS
    from train_helpers import tiny_recipe

    from warmstart.data import prepare
    from warmstart.recipes.quality import score_domain_ngram
    from warmstart.train.loop import train

    base = root / "base"
    base.mkdir()
    shutil.copytree(tokenizer_dir, base / "tok")
    shutil.copytree(data_dir, base / "data")
    src = base / "src"
    src.mkdir()
    (src / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in SAMPLE_TEXTS))
    (src / "empty.jsonl").write_text("")
    (src / "badjson.jsonl").write_text('{"text": "fine"}\n{"text": "cut\n')
    (src / "surrogate.jsonl").write_text('{"text": "fine"}\n{"text": "truncated emoji \\ud83d here"}\n')
    (base / "afile").write_text("a user's file\n")
    (base / "prep.yaml").write_text(yaml.safe_dump(
        {"tokenizer": "tok", "out": "prepared", "domains": {"a": [{"path": "src/good.jsonl"}]}}))
    # a data directory whose domains have no validation split
    prepare({"tokenizer": str(base / "tok"), "out": str(base / "data0"), "val_docs": 0,
             "domains": {"code": [{"path": str(src / "good.jsonl")}]}}, progress=False)
    # a data directory with a domain of empty documents: nothing to score with windows: documents
    (src / "blank.jsonl").write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(20)))
    prepare({"tokenizer": str(base / "tok"), "out": str(base / "dataE"), "val_docs": 4,
             "domains": {"code": [{"path": str(src / "good.jsonl")}], "blank": [{"path": str(src / "blank.jsonl")}]}},
            progress=False)
    # a finished tiny run (2 blocks, 512 positions) with a checkpoint
    train(tiny_recipe(base / "data", base / "tok", base / "runs", name="up",
                      overrides=["train.steps=2", "eval.every=2"]))
    unfinished = base / "runs" / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("name: unfinished\n")
    # a HF checkpoint directory whose weights are an unsafe pickle
    pickled = base / "pickled"
    pickled.mkdir()
    for f in (base / "runs" / "up" / "final").iterdir():
        if f.name != "model.safetensors":
            shutil.copy2(f, pickled / f.name)
    _unsafe_pickle(pickled / "pytorch_model.bin")
    # an n-gram ranking of prose, two mixture files
    score_domain_ngram(["code"], base / "data", "prose", base / "rank", order=2, progress=False)
    for i, budget in enumerate((1e5, 4e5), 1):
        tokens = {"code": budget * 0.4 * i, "prose": budget * (1 - 0.4 * i)}
        total = sum(tokens.values())
        (base / f"m{i}.json").write_text(json.dumps({"format": "warmstart-mixture-v1", "budget": total,
                                                     "tokens": tokens,
                                                     "weights": {k: v / total for k, v in tokens.items()}}))
    return base


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WARMSTART_DEBUG", "PYTHONPATH")}
    env.update({"PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def _run_case(case: Case, base: Path, root: Path) -> dict:
    d = root / "cases" / case.id
    shutil.copytree(base, d, copy_function=os.link)  # hard links: cheap, and any in-place write shows
    if case.setup is not None:
        case.setup(d)
    before = _snapshot(d)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "warmstart", *case.argv], cwd=d, env={**_env(), **case.env},
                          capture_output=True, text=True, timeout=300)
    after = _snapshot(d)
    return {"rc": proc.returncode, "stderr": proc.stderr, "stdout": proc.stdout, "seconds": time.perf_counter() - t0,
            "changed": sorted(k for k in before if after.get(k) != before[k]),
            "new": sorted(k for k in after if k not in before)}


@pytest.fixture(scope="module")
def results(tmp_path_factory, tokenizer_dir, data_dir):
    root = tmp_path_factory.mktemp("gauntlet")
    t0 = time.perf_counter()
    base = _build_world(root, tokenizer_dir, data_dir)
    base_before = _snapshot(base)
    t1 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {c.id: pool.submit(_run_case, c, base, root) for c in CASES}
        out = {k: f.result() for k, f in futures.items()}
    out["__base__"] = {"changed": sorted(k for k, v in _snapshot(base).items() if base_before.get(k) != v),
                       "fixtures_s": t1 - t0, "cases_s": time.perf_counter() - t1}
    if os.environ.get("WARMSTART_GAUNTLET_DUMP"):  # for looking at timings and messages by hand
        Path(os.environ["WARMSTART_GAUNTLET_DUMP"]).write_text(json.dumps(out, indent=1))
    return out


# ----------------------------------------------------------------------------------------------- the tests
def test_case_count():
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {" ".join(c.argv[:2]) if c.argv[:1] in (["tokenizer"], ["corpus"], ["quality"], ["mixture"], ["format"])
                else (c.argv[0] if c.argv else "") for c in CASES}
    assert commands >= {"prepare", "tokenizer train", "train", "eval", "inherit", "grow", "sweep", "gap", "report",
                        "quality score", "quality select", "mixture ddo", "mixture predict", "corpus demo",
                        "quickstart", "format show", "format probe", "checkpoint"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, results):
    r = results[case.id]
    lines = [line for line in r["stderr"].splitlines() if line.strip()]
    assert r["rc"] == 2, (r["rc"], r["stderr"][-2000:])
    assert "Traceback" not in r["stderr"], r["stderr"][-2000:]
    assert len(lines) == 1 and r["stderr"].strip() == lines[0], r["stderr"]
    assert case.expect.lower() in lines[0].lower(), lines[0]
    assert not r["changed"], f"files changed: {r['changed']}"
    assert not r["new"], f"files left behind: {r['new']}"


def test_shared_fixtures_untouched(results):
    assert not results["__base__"]["changed"]
