"""Which blocks `inherit` keeps: the angular-distance scores (Gromov et al. 2024), the `auto` choice, and the cut
each rule writes (a plain checkpoint that computes what the reference computes through the kept blocks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_inherit import FAMILIES, K, _make_ref, _moe_ref

from warmstart.errors import UserError
from warmstart.eval.block_choice import describe, load_sample, removable_starts
from warmstart.recipes.inheritune import inherit_by_rule

SEQ = 32
NAMES = ["llama-untied", "qwen2-sliding", "gpt2", "bert-mlm", "moe"]


@pytest.fixture(scope="module")
def refs(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("refs")
    out = {name: _make_ref(root, name, tokenizer_dir)[:2] for name in NAMES if name in FAMILIES}
    from transformers import AutoModelForCausalLM

    out["moe"] = (_moe_ref(root, tokenizer_dir, decoder_sparse_step=2)[0], AutoModelForCausalLM)
    return out


def _through_kept(ref, blocks_list, kept: list[int], **inputs) -> torch.Tensor:
    """REF's logits with every removed block made the identity (a forward hook returns the block's input)."""

    def skip(_mod, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handles = [
        b.register_forward_hook(skip, with_kwargs=True) for i, b in enumerate(blocks_list) if i not in kept
    ]
    try:
        with torch.no_grad():
            return ref(**inputs).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", ["llama-untied", "gpt2"])
def test_angular_scores_equal_a_direct_computation(refs, data_dir, name):
    from warmstart.eval.block_choice import angular_scores
    from warmstart.models.surgery import find_blocks

    ref_dir, auto = refs[name]
    model = auto.from_pretrained(str(ref_dir), dtype=torch.float32).eval()
    inputs, labels = load_sample(str(data_dir), SEQ, 400, causal=True)
    inputs[0, 5:], labels[0, 5:] = 0, -100  # a short document, right-padded: the padding must be left out
    scored = labels != -100
    n = 2
    m = K - n
    starts = removable_starts(K, n, keep_last=1)
    assert starts == [0, 1]
    _, _, blocks = find_blocks(model, K)
    got, positions = angular_scores(model, blocks, inputs, scored, m, starts, batch_size=3)
    # the positions the pass ran (its FLOPs are charged): each batch of 3 rows up to its last scored column
    want_positions = sum(len(scored[i : i + 3]) * (int(np.flatnonzero(scored[i : i + 3].any(0))[-1]) + 1)
                         for i in range(0, len(scored), 3))
    assert positions == want_positions
    with torch.no_grad():
        hs = model(
            input_ids=torch.from_numpy(inputs),
            attention_mask=torch.from_numpy(scored).long(),
            output_hidden_states=True,
        ).hidden_states
    for s in starts:  # hidden_states[i] is the state entering block i (i < K)
        a, b = hs[s].double().numpy()[scored], hs[s + m].double().numpy()[scored]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        want = float(np.mean(np.arccos(np.clip(cos, -1, 1)) / np.pi))
        assert got[s] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert got[0] != pytest.approx(got[1], rel=1e-3)  # the starts really differ


@pytest.mark.parametrize("rule", ["first", "angular", "auto"])
@pytest.mark.parametrize("name", NAMES)
def test_each_rule_writes_the_reference_through_its_kept_blocks(tmp_path, refs, data_dir, name, rule):
    from warmstart.eval.perplexity import evaluate
    from warmstart.models.surgery import find_blocks
    from warmstart.runtime.distributed import Dist

    ref_dir, auto = refs[name]
    lines: list[str] = []
    res = inherit_by_rule(
        ref_dir, tmp_path / "out", 2, rule, str(data_dir), sample_tokens=400, seq_len=SEQ, echo=lines.append
    )
    record = json.loads((res.out / "inherited.json").read_text())
    assert record["blocks"] == res.blocks and record["choice"]["rule"] == rule
    if rule == "first":
        assert res.blocks == [0, 1]
    else:
        dist = record["choice"]["angular"]["distance_by_start"]
        best = min(dist, key=lambda s: (dist[s], int(s)))
        angular = [i for i in range(K) if not int(best) <= i < int(best) + 2]
        assert angular[-1] == K - 1  # the final block is kept
        assert any("angular distance" in line for line in lines)
        if rule == "angular":
            assert res.blocks == angular
        else:
            step0 = record["choice"]["step0_loss"]
            # K = 4, n = 2: two removable runs (0-1, 1-2), both evaluated, and the first n
            assert set(step0) == {"first", "angular", f"remove {1 - int(best)}-{2 - int(best)}"}
            chosen = record["choice"]["chosen"]
            assert chosen == min(step0, key=step0.get)
            want = {"first": [0, 1], "angular": angular}.get(chosen)
            if want is None:
                a, b = (int(x) for x in chosen.split()[1].split("-"))
                want = [i for i in range(K) if not a <= i <= b]
            assert res.blocks == want
    small, info = auto.from_pretrained(str(res.out), dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    small.eval()
    ref = auto.from_pretrained(str(ref_dir), dtype=torch.float32).eval()
    _, _, blocks = find_blocks(ref, K)
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = small(input_ids=ids).logits
    want = _through_kept(ref, blocks, res.blocks, input_ids=ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if rule == "auto" and auto.__name__ == "AutoModelForCausalLM":  # the measured loss is the written model's
        chosen = record["choice"]["chosen"]
        w = record["choice"]["evaluated"][chosen]["windows"]  # the race may stop before the sample's end
        x, y = load_sample(str(data_dir), SEQ, 400, causal=True)
        loss = evaluate(small, {"s": (x[:w], y[:w])}, 8, Dist())["s"]
        assert record["choice"]["step0_loss"][chosen] == pytest.approx(loss, rel=1e-5)
        assert record["choice"]["evaluated"][chosen]["tokens"] == int((y[:w] != -100).sum())


def test_rules_refuse_what_they_cannot_do(tmp_path, refs, data_dir, capsys):
    from warmstart.cli import main

    ref_dir, _ = refs["llama-untied"]
    base = ["inherit", "--from", str(ref_dir), "--out", str(tmp_path / "o")]
    assert main([*base, "--layers", "2", "--rule", "angular"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "give --sample DATA_DIR" in err and err.startswith("warmstart: error: inherit:")
    # a sample prepared with another tokenizer: refused in one line, never measured on the wrong ids
    import shutil

    from warmstart.data.tokenizer_train import train_bpe

    other = tmp_path / "other-ref"
    shutil.copytree(ref_dir, other)
    for f in other.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    train_bpe(["a different corpus for a different vocabulary"] * 50, vocab_size=300, out=tmp_path / "tok2")
    for f in (tmp_path / "tok2").iterdir():
        shutil.copy(f, other / f.name)
    for rule in ("angular", "auto"):
        code = main(["inherit", "--from", str(other), "--out", str(tmp_path / "o"), "--layers", "2", "--rule", rule,
                     "--sample", str(data_dir)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0, err
        assert "--sample:" in err and "prepared with tokenizer" in err and "re-run `warmstart prepare`" in err
    assert main([*base, "--blocks", "0,3", "--rule", "auto", "--sample", str(data_dir)]) == 2
    assert "--rule auto chooses the blocks itself; give --layers N (how many), not --blocks" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"--keep-last: the final 2 blocks do not fit in a cut of 1 \(--layers 1\); give --keep-last 1 or less"):
        removable_starts(K, 1, keep_last=2)
    assert not (tmp_path / "o").exists()
    assert (
        main(
            [*base, "--layers", "3", "--rule", "auto", "--sample", str(data_dir), "--sample-domains", "nope"]
        )
        == 2
    )
    assert "--sample: no domain 'nope'" in capsys.readouterr().err
    sample = [
        "--sample",
        str(data_dir),
        "--sample-tokens",
        "300",
        "--seq-len",
        "16",
        "--sample-domains",
        "prose",
    ]
    assert main([*base, "--layers", "3", "--rule", "auto", *sample, "--auto-alpha", "0.7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "inherit: --auto-alpha: " in err and not (tmp_path / "o").exists()
    assert main([*base, "--layers", "3", "--rule", "auto", *sample, "--sample-tokens", "0"]) == 2
    assert "inherit: --sample-tokens: Input should be greater than 0 (got 0)" in capsys.readouterr().err
    assert main([*base, "--layers", "3", "--rule", "auto", *sample, "--auto-alpha", "nan"]) == 2
    assert "inherit: --auto-alpha: Input should be a finite number" in capsys.readouterr().err
    # more tokens than the data holds: said, with what gives more
    big = [*sample[:2], "--sample-tokens", str(10**8), *sample[4:]]
    assert main(["inherit", "--from", str(ref_dir), "--out", str(tmp_path / "big"), "--layers", "3", "--rule", "auto",
                 *big]) == 0
    got = json.loads((tmp_path / "big" / "inherited.json").read_text())["choice"]
    assert f"note: the sample gave {got['sample_tokens']:,} of the 100,000,000 --sample-tokens asked for" in \
        capsys.readouterr().out
    # `first` measures nothing: what only a measurement uses is said to be ignored, not silently dropped
    assert main(["inherit", "--from", str(ref_dir), "--out", str(tmp_path / "f"), "--layers", "3", *sample]) == 0
    err = capsys.readouterr().err
    assert ("warning: inherit: --rule first (the default) measures nothing; --sample, --sample-tokens, "
            "--sample-domains, --seq-len ignored") in err
    # ... and a --sample it will not read is not checked either
    assert main(["inherit", "--from", str(ref_dir), "--out", str(tmp_path / "f2"), "--layers", "3", "--rule", "first",
                 "--sample", str(tmp_path / "nowhere")]) == 0
    assert "--rule first measures nothing; --sample ignored" in capsys.readouterr().err
    assert main([*base, "--layers", "3", "--rule", "auto", "--sample", str(tmp_path / "nowhere")]) == 2
    assert "warmstart: error: --sample: " in capsys.readouterr().err
    # more candidates than removable runs (K = 4, keep 3: remove block 0, 1 or 2): all of them, and said so
    assert main([*base, "--layers", "3", "--rule", "auto", *sample, "--auto-alpha", "0", "--auto-candidates", "9"]) == 0
    out = capsys.readouterr().out
    assert ("note: only 3 contiguous runs of 1 of the 4 blocks can be removed (keeping the final 1), fewer than the 9 "
            "auto candidates: all were evaluated") in out
    assert "step-0 loss on the sample: first" in out and "rule auto: chose" in out
    assert "the search's forward passes:" in out and "charged to runs from this cut" in out
    choice = json.loads((tmp_path / "o" / "inherited.json").read_text())["choice"]
    assert choice["sample"]["domains"] == ["prose"]
    # --auto-alpha 0: no racing, every candidate is evaluated on the whole sample
    assert choice["race"]["alpha"] == 0 and len(choice["race"]["rounds"]) == 1
    assert {r: e["tokens"] for r, e in choice["evaluated"].items()} == dict.fromkeys(choice["step0_loss"],
                                                                                      choice["sample_tokens"])


# ----------------------------------------------------------------------------------------------- racing
def _window_fn(table: dict[str, np.ndarray], counts: np.ndarray, calls: list):
    def window_losses(name: str, a: int, b: int):
        calls.append((name, a, b))
        return table[name][a:b] * counts[a:b], counts[a:b]

    return window_losses


def test_race_drops_a_clear_loser_after_the_first_windows_and_keeps_close_ones():
    from warmstart.eval.block_choice import race

    n = 32
    counts = np.full(n, 10)
    base = 5.0 + 0.3 * np.sin(np.arange(n))  # per-window mean token loss of candidate "a"
    table = {
        "a": base,
        "loser": base + 3.0 + 0.1 * np.cos(np.arange(n)),  # 3 nats worse in every window
        "close": base + np.where(np.arange(n) % 2 == 0, 0.05, -0.04),  # 0.005 nats worse on average
    }
    calls: list = []
    got = race(list(table), n, _window_fn(table, counts, calls), first_windows=4, alpha=0.01)
    assert [r["windows"] for r in got.rounds] == [4, 8, 16, 32]
    assert got.rounds[0]["dropped"] == ["loser"] and all(not r["dropped"] for r in got.rounds[1:])
    assert got.windows == {"a": 32, "loser": 4, "close": 32}
    # what the loser lost to, on its own windows: what `inherit` prints beside its loss
    assert got.beaten_by == {"loser": ("a", pytest.approx(float(base[:4].mean()), rel=1e-12))}
    assert got.tokens == {"a": 320, "loser": 40, "close": 320}
    # each candidate sees consecutive windows, each window once
    for name in table:
        spans = [(a, b) for c, a, b in calls if c == name]
        assert spans[0][0] == 0 and all(x[1] == y[0] for x, y in zip(spans, spans[1:], strict=False))
    want = {k: float(v[: got.windows[k]].mean()) for k, v in table.items()}
    assert got.losses == pytest.approx(want, rel=1e-12)
    assert got.chosen == min(("a", "close"), key=want.get) == "a"


def test_race_stops_when_one_is_left_and_alpha_zero_evaluates_everything():
    from warmstart.eval.block_choice import race

    n = 40
    counts = np.arange(n) % 3 + 8  # windows of unequal length: the loss is per token, not per window
    rng = np.random.default_rng(0)
    table = {"first": 20 + rng.normal(0, 0.5, n), "b": 7 + rng.normal(0, 0.3, n), "c": 9 + rng.normal(0, 0.3, n)}
    calls: list = []
    got = race(list(table), n, _window_fn(table, counts, calls), first_windows=4, alpha=0.01)
    assert len(got.rounds) == 1 and got.chosen == "b" and set(got.rounds[0]["dropped"]) == {"first", "c"}
    assert got.windows == dict.fromkeys(table, 4)
    full = race(list(table), n, _window_fn(table, counts, []), first_windows=4, alpha=0.0)
    assert full.windows == dict.fromkeys(table, n) and len(full.rounds) == 1
    want = {k: float((v * counts).sum() / counts.sum()) for k, v in table.items()}
    assert full.losses == pytest.approx(want, rel=1e-12) and full.chosen == "b"
    # ties go to the earlier name
    tie = race(["x", "y"], 8, _window_fn({"x": np.ones(8), "y": np.ones(8)}, np.full(8, 5), []), alpha=0.01)
    assert tie.chosen == "x" and tie.windows == {"x": 8, "y": 8}


def test_search_flops_are_the_forward_passes_it_ran(refs, data_dir):
    """angular: the reference's backbone (no output layer) over the sample; race: each cut with its head over
    the windows it was evaluated on; both as positions run x forward FLOPs per token."""
    from warmstart.eval.block_choice import choose_blocks
    from warmstart.models.build import flops_per_token, forward_flops_per_token
    from warmstart.models.surgery import cut_view

    ref_dir, auto = refs["llama-untied"]
    model = auto.from_pretrained(str(ref_dir), dtype=torch.float32).eval()
    sample = load_sample(str(data_dir), SEQ, 600, causal=True)
    inputs, labels = sample
    scored = labels != -100

    def positions(a: int, b: int, bs: int = 3) -> int:
        return sum(len(scored[i : min(i + bs, b)]) * (int(np.flatnonzero(scored[i : min(i + bs, b)].any(0))[-1]) + 1)
                   for i in range(a, b, bs))

    kept, rec = choose_blocks(model, K, 2, "auto", sample, batch_size=3, first_windows=2)
    head = model.get_output_embeddings().weight
    fwd_ref = flops_per_token(model, SEQ) / 3 - 2 * head.numel()
    assert forward_flops_per_token(model, SEQ, head=False) == pytest.approx(fwd_ref)
    assert rec["angular"]["positions"] == positions(0, len(inputs))
    assert rec["angular"]["flops"] == pytest.approx(positions(0, len(inputs)) * fwd_ref)
    ends = [0] + [r["windows"] for r in rec["race"]["rounds"]]
    cuts = {"first": [0, 1]}
    for name in rec["step0_loss"]:
        if name != "first":
            start = int(rec["angular"]["removed"][0]) if name == "angular" else int(name.split()[1].split("-")[0])
            cuts[name] = [i for i in range(K) if not start <= i < start + 2]
    total = rec["angular"]["flops"]
    for name, blocks in cuts.items():
        w = rec["evaluated"][name]["windows"]
        ran = sum(positions(a, b) for a, b in zip(ends, ends[1:], strict=False) if b <= w)
        with cut_view(model, K, blocks):
            fwd = flops_per_token(model, SEQ) / 3
        assert rec["candidate_flops"][name] == pytest.approx(ran * fwd)
        total += ran * fwd
    assert rec["search_flops"] == pytest.approx(total) and kept == cuts[rec["chosen"]]
    with cut_view(model, K, kept):  # the search in training tokens of the chosen cut, as `inherit` prints it
        train_fpt = flops_per_token(model, SEQ)
    assert rec["chosen_train_flops_per_token"] == pytest.approx(train_fpt)
    assert (f"training the cut on {rec['search_flops'] / train_fpt:,.0f} tokens in {SEQ}-token sequences"
            in describe(rec, K)[-1])


def test_inherit_never_overwrites_the_reference_the_sample_or_unrelated_files(tmp_path, refs, data_dir, capsys):
    import shutil

    from warmstart.cli import main

    ref = tmp_path / "ref"
    shutil.copytree(refs["llama-untied"][0], ref)
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")

    def snapshot() -> dict:
        return {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    before = snapshot()
    for extra, msg in [
        (["--out", str(ref), "--overwrite"], "is the reference --from"),
        (["--out", str(tmp_path), "--overwrite"], "holds the reference --from"),
        (["--out", str(ref / "sub")], "is inside the reference --from"),
        (["--out", str(data), "--overwrite", "--rule", "auto", "--sample", str(data)], "is the sample data --sample"),
        (["--out", str(data / "prose"), "--rule", "auto", "--sample", str(data)], "is inside the sample data"),
        (["--out", str(mine), "--overwrite"], "is not an earlier `warmstart inherit` output"),
    ]:
        code = main(["inherit", "--from", str(ref), "--layers", "2", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and msg in err and err.count("\n") == 0, err
    assert snapshot() == before
    out = tmp_path / "cut"  # an earlier inherit output is what --overwrite replaces
    assert main(["inherit", "--from", str(ref), "--layers", "2", "--out", str(out)]) == 0
    assert main(["inherit", "--from", str(ref), "--layers", "3", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "inherited.json").read_text())["blocks"] == [0, 1, 2]


def test_a_sample_window_longer_than_the_positions_is_refused(tmp_path, refs, data_dir, capsys):
    from transformers import AutoConfig

    from warmstart.cli import main

    ref_dir, _ = refs["gpt2"]
    limit = AutoConfig.from_pretrained(str(ref_dir)).n_positions
    code = main(["inherit", "--from", str(ref_dir), "--layers", "2", "--rule", "auto", "--sample", str(data_dir),
                 "--seq-len", str(limit + 1), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and f"--seq-len: {limit + 1} is longer than the model's {limit}" in err
    assert not (tmp_path / "o").exists()
