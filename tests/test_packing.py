"""`data.packing: documents`: attention and positions restart at every document of a window, per model family;
a window that begins mid-document gets the prefix; no scored target is a prefix token or a document's first
token; documents-packed windows aligned to documents score what `eval --windows documents` scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf

from warmstart.data.packing import add_prefix, document_packed, scored, window_positions
from warmstart.data.shards import FORMAT, DomainData
from warmstart.errors import UserError
from warmstart.eval.perplexity import document_windows, evaluate, packed_val_sets, val_sequences
from warmstart.models.loss import LossModel
from warmstart.models.packing import DocumentAttention, block_causal_mask
from warmstart.runtime.distributed import Dist

V = 97
SMALL = {"vocab_size": V, "max_position_embeddings": 64}
LLAMA_LIKE = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    **SMALL,
}
# every family docs/train.md names (data.packing); sliding windows of 4 tokens, shorter than document 2, so
# they matter
FAMILIES = {
    "gpt2": lambda: tf.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64, bos_token_id=0, eos_token_id=0
    ),
    "opt": lambda: tf.OPTConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        ffn_dim=64,
        word_embed_proj_dim=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        **SMALL,
    ),
    "gpt_neox": lambda: tf.GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        bos_token_id=0,
        eos_token_id=0,
        **SMALL,
    ),
    "llama": lambda: tf.LlamaConfig(**LLAMA_LIKE),
    "qwen2": lambda: tf.Qwen2Config(
        **LLAMA_LIKE, use_sliding_window=True, sliding_window=4, max_window_layers=0
    ),
    "mistral": lambda: tf.MistralConfig(**LLAMA_LIKE, sliding_window=4),
    "gemma3": lambda: tf.Gemma3TextConfig(
        **LLAMA_LIKE, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"]
    ),
}
A, B = 6, 10  # document 1 and document 2 of one 16-token window


def _model(family: str, attn: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(FAMILIES[family](), attn_implementation=attn)
    return model.eval()


def _window(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, V, (1, A + B), generator=g)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_document_two_does_not_see_document_one(family, attn):
    model = _model(family, attn)
    att = DocumentAttention(model)
    assert att.route == ("mask" if family == "opt" else "positions")  # OPT's own mask ignores position ids
    x = _window(1)
    y = x.clone()
    y[0, :A] = _window(2)[0, :A]  # every token of document 1 changed
    pos = torch.cat([torch.arange(A), torch.arange(B)])[None]
    with torch.no_grad():
        docs = [model(input_ids=w, **att.kwargs(pos)).logits[0, A:] for w in (x, y)]
        stream = [model(input_ids=w, use_cache=False).logits[0, A:] for w in (x, y)]
        alone = model(input_ids=x[:, A:], use_cache=False).logits[0]
    assert torch.equal(docs[0], docs[1])  # bit-identical: document 1 is invisible to document 2
    assert not torch.allclose(stream[0], stream[1], atol=1e-3)  # the stream attends across
    # positions restart and sliding windows stay inside the document: document 2 as if it were alone
    torch.testing.assert_close(docs[0], alone, rtol=0, atol=2e-5)
    # the loss the training loop takes (blockwise, through LossModel) is bit-identical on document 2 too
    lm = LossModel(model)
    labels = torch.cat([torch.full((1, A), -100), x[:, A + 1 :], torch.full((1, 1), -100)], dim=1)
    losses = [lm(w, labels, reduction="none", **att.kwargs(pos))[0] for w in (x, y)]
    assert torch.equal(losses[0], losses[1]) and losses[0][A:-1].gt(0).all()


def test_a_model_that_cannot_keep_documents_apart_is_refused_in_one_line(monkeypatch):
    model = _model("mistral")
    # a mask builder that ignores position ids, as OPT's does, on a sliding-window model: no route works
    import transformers.models.mistral.modeling_mistral as mm

    real = mm.create_sliding_window_causal_mask
    monkeypatch.setattr(
        mm, "create_sliding_window_causal_mask", lambda **kw: real(**{**kw, "position_ids": None})
    )
    with pytest.raises(
        UserError,
        match=r"^data.packing: documents cannot .* MistralForCausalLM .*set data.packing: "
        r"stream",
    ) as e:
        DocumentAttention(model)
    assert "\n" not in str(e.value)


def test_block_causal_mask_follows_position_restarts():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    m = block_causal_mask(pos)[0, 0]
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, want)
    add = block_causal_mask(pos, torch.float32)[0, 0]
    assert torch.equal(add == 0, want) and add.min() == torch.finfo(torch.float32).min


# ------------------------------------------------------------------------------------------------ the data side
def test_positions_prefix_and_scored_targets():
    # documents at 0, 5, 7, 15 (total 20); prefix [9] (a BOS)
    offs = np.array([0, 5, 7, 15, 20])
    toks = np.arange(100, 120)
    for d in offs[:-1]:
        toks[d] = 9
    starts = np.array([0, 3, 8])
    rows = np.stack([toks[s : s + 6] for s in starts])
    out, pos = document_packed(rows, starts, offs, [9])
    assert pos.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5]]
    # window 0 begins at a document start: unchanged; windows 1 and 2 begin mid-document: BOS in front
    assert out[0].tolist() == rows[0].tolist()
    assert out[1, 0] == 9 and out[1, 1:].tolist() == rows[1, 1:].tolist()
    assert out[2, 0] == 9 and out[2, 1:].tolist() == rows[2, 1:].tolist()
    keep = scored(pos, 1)
    assert keep.tolist() == [[1, 1, 1, 1, 0], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1]]
    assert not (out[:, 1:][keep] == 9).any()  # no scored target is a prefix token
    # no prefix (GPT-2, SmolLM): nothing replaced; a document's first token is still not a target
    plain, pos0 = document_packed(rows, starts, offs, [])
    assert plain.tolist() == rows.tolist() and scored(pos0, 0).tolist() == keep.tolist()
    # a two-token prefix on a fragment shorter than it: only the fragment's own tokens are replaced
    s2 = np.array([4, 8])  # a one-token fragment (token 4), and a long one
    rows2 = np.stack([toks[s : s + 6] for s in s2])
    two = add_prefix(np.array(rows2), window_positions(s2, 6, offs), s2, offs, [7, 8])
    assert two[0, :2].tolist() == [7, toks[5]] and two[1, :3].tolist() == [7, 8, toks[10]]


def _domain(tmp_path, lengths: list[int], prefix: list[int]) -> DomainData:
    """A hand-written prepared domain: documents of the given lengths, each `prefix + tokens`."""
    rng = np.random.default_rng(0)
    docs = [np.concatenate([prefix, rng.integers(2, V, n - len(prefix))]).astype(np.uint16) for n in lengths]
    toks = np.concatenate(docs)
    (tmp_path / "val.bin").write_bytes(toks.tobytes())
    np.save(tmp_path / "val.docs.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    index = {
        "format": FORMAT,
        "domain": "d",
        "dtype": "uint16",
        "tokenizer": {"vocab_size": V},
        "document": {"prefix": prefix, "suffix": []},
        "splits": {
            "val": {
                "file": "val.bin",
                "tokens": len(toks),
                "docs": len(lengths),
                "doc_offsets": "val.docs.npy",
                "max_token_id": int(toks.max()),
            }
        },
    }
    (tmp_path / "index.json").write_text(json.dumps(index))
    return DomainData.open(tmp_path)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_packed_windows_aligned_to_documents_equal_document_windows(family, tmp_path):
    """Windows of 8 holding two whole 4-token documents each: the same targets and the same loss as one
    window per document (eval --windows documents); the stream scores more targets and a different loss."""
    dom = _domain(tmp_path, [4] * 8, prefix=[1])
    packed = packed_val_sets(dom, 8, 24)
    docs = document_windows(dom, 8, 18)
    assert (packed[1] != -100).sum() == (docs[1] != -100).sum() == 18  # 6 documents x 3 targets
    model = LossModel(_model(family))
    d = Dist(device=torch.device("cpu"))
    got = evaluate(model, {"d": packed}, 2, d)["d"]
    want = evaluate(model, {"d": docs}, 2, d)["d"]
    stream = evaluate(model, {"d": val_sequences(dom, 8, 24)}, 2, d)["d"]
    assert got == pytest.approx(want, rel=1e-6)
    assert abs(stream - want) > 1e-3


def test_document_windows_score_exactly_max_tokens(tmp_path):
    dom = _domain(tmp_path, [5, 7, 6, 9], prefix=[1])
    for n in (3, 4, 10, 17, 23, 1000):
        assert (document_windows(dom, 8, n)[1] != -100).sum() == min(n, 4 + 6 + 5 + 8)


# ------------------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def bos_data(tmp_path_factory, tokenizer_dir):
    """The stdlib corpora prepared with a BOS in front of every document (`bos: true`; this tokenizer's BOS is
    its EOS, so `doc_end: none` keeps that id for document starts alone)."""
    from conftest import _stdlib_texts

    from warmstart.data import prepare

    root = tmp_path_factory.mktemp("bosdata")
    domains = {}
    for name, texts in _stdlib_texts().items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t[:400]}) + "\n" for t in texts))  # short documents
        domains[name] = [{"path": str(path)}]
    prepare(
        {
            "tokenizer": str(tokenizer_dir),
            "out": str(root / "shards"),
            "domains": domains,
            "val_docs": 10,
            "bos": True,
            "doc_end": "none",
        },
        progress=False,
    )
    return root / "shards"


def test_sampler_gives_a_mid_document_window_its_bos_and_keeps_every_count(bos_data):
    from warmstart.config import DataConfig
    from warmstart.data.sampler import MixtureSampler
    from warmstart.data.shards import open_data_dir

    domains = open_data_dir(bos_data)
    bos = domains["code"].document_format.prefix
    assert len(bos) == 1
    cfg = DataConfig(dir=str(bos_data), weights={"code": 0.5, "prose": 0.5}, seq_len=32)
    a, b = (MixtureSampler.from_config(cfg, domains, seed=0) for _ in range(2))
    idx = a.next_indices(64)
    assert np.array_equal(idx, b.next_indices(64))
    plain = a.read(idx)
    toks, pos, keep = b.read_packed(idx)
    assert a.counts == b.counts and a.state_dict() == b.state_dict()  # reading packed draws nothing more
    offsets = {n: domains[n].doc_offsets("train") for n in domains}
    names = a.domain_names
    mid = np.array([idx[i, 1] * 32 not in offsets[names[idx[i, 0]]] for i in range(len(idx))])
    assert mid.any()
    assert (toks[mid, 0] == bos[0]).all() and np.array_equal(toks[:, 1:], plain[:, 1:])
    assert np.array_equal(toks[~mid], plain[~mid])
    assert (pos[:, 0] == 0).all() and not (toks[:, 1:][keep] == bos[0]).any()  # no target is the BOS
    # every BOS inside a window starts a document: position 0, and the target before it is not scored
    inner = toks[:, 1:] == bos[0]
    assert (pos[:, 1:][inner] == 0).all() and not keep[inner].any()


def test_documents_run_records_its_packing_and_eval_repeats_it(bos_data, tokenizer_dir, tmp_path):
    import yaml
    from train_helpers import tiny_recipe

    from warmstart.eval.run_eval import eval_checkpoint, format_result
    from warmstart.runtime.metrics import read_metrics
    from warmstart.train.loop import train

    recipe = tiny_recipe(
        bos_data,
        tokenizer_dir,
        tmp_path,
        "docs",
        eval={"windows": "packed"},
        model={"preset": "opt-tiny", "tokenizer": str(tokenizer_dir)},
    )
    assert recipe.data.packing == "documents"  # the default
    run = train(recipe).run_dir
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["packing"] == "documents"
    evals = [e for e in read_metrics(run) if e["event"] == "eval"]
    assert {(e["windows"], e["packing"]) for e in evals} == {("packed", "documents")}
    res = eval_checkpoint(str(run), bos_data, out=tmp_path / "ev")
    assert res["windows"] == "packed" and res["packing"] == "documents"
    for name, v in res["val"].items():
        assert v["loss"] == pytest.approx(evals[-1][f"val/{name}/loss"], abs=1e-5)
        assert v["tokens"] == evals[-1][f"val/{name}/tokens"] < 256  # documents' first tokens are not scored
    assert "the run's own in-loop evaluation" in format_result(res)
    other = eval_checkpoint(str(run), bos_data, out=tmp_path / "ev2", packing="stream")
    assert "NOT the run's in-loop evaluation" in format_result(other)
    assert other["val"]["code"]["loss"] != pytest.approx(res["val"]["code"]["loss"], abs=1e-3)


def test_stream_run_is_the_plain_stream(data_dir, tokenizer_dir, tmp_path):
    """`stream`: step 0's packed in-loop loss is the plain next-token loss of consecutive windows, by hand."""
    from train_helpers import tiny_recipe

    from warmstart.data.shards import open_data_dir
    from warmstart.runtime.metrics import read_metrics
    from warmstart.train.loop import train

    recipe = tiny_recipe(
        data_dir,
        tokenizer_dir,
        tmp_path,
        "stream",
        data={"packing": "stream"},
        eval={"windows": "packed"},
        train={"steps": 2},
    )
    run = train(recipe).run_dir
    step0 = read_metrics(run)[0]
    assert step0["event"] == "eval" and step0["packing"] == "stream" and step0["step"] == 0
    # the weights at step 0 are the seeded init: rebuild them the same way
    from warmstart.models.build import build_model

    model = build_model(recipe.model, None, seed=recipe.seed, seq_len=32).model.eval()
    toks = np.asarray(open_data_dir(data_dir)["code"].tokens("val")[: 8 * 32 + 1], dtype=np.int64)
    x = torch.from_numpy(np.stack([toks[i * 32 : i * 32 + 33] for i in range(8)]))
    with torch.no_grad():
        logits = model(input_ids=x[:, :-1]).logits
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).item()
    assert step0["val/code/loss"] == pytest.approx(want, rel=1e-5) and step0["val/code/tokens"] == 256
