"""Documents in the checkpoint's own format: the shards equal each family's direct encoding (BOS where its
tokenizer adds one, special-token strings as text, one document-end token); the choice is recorded, fingerprinted
and checked where data meets a model; old data stays readable; the format probe and document-aligned evaluation
equal direct `transformers` computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conventions import CONVENTIONS, build_tokenizer

from warmstart.cli import main
from warmstart.data import prepare
from warmstart.data.doc_format import check_format, resolve_format
from warmstart.data.shards import open_data_dir
from warmstart.data.tokenizer import load_tokenizer
from warmstart.errors import UserError

# literal special-token strings of every convention inside ordinary text: all must stay text
HOSTILE = "A page with <s> and </s>, a README on <|endoftext|>, <|im_end|>, <bos>, <eos> and [SEP] [CLS]."
DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    HOSTILE,
    "def add(a, b):\n    return a + b\n",
    "Language models predict the next token. " * 3,
    "Replay mixes in old data.",
    "",
]


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conventions")
    return {name: build_tokenizer(name, root / name) for name in CONVENTIONS}


def _jsonl(path: Path, texts) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _prepare(tok_dir: Path, root: Path, texts=DOCS, **settings):
    root.mkdir(parents=True, exist_ok=True)
    src = _jsonl(root / "docs.jsonl", texts)
    cfg = {"tokenizer": str(tok_dir), "out": str(root / "shards"), "domains": {"web": [{"path": str(src)}]},
           "val_docs": 2, **settings}
    return prepare(cfg, progress=False)


def _all_docs(data_dir: Path) -> list[list[int]]:
    dom = open_data_dir(data_dir)["web"]
    return [np.asarray(d).tolist() for split in ("train", "val") for d in dom.documents(split)]


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_shards_equal_each_conventions_direct_encoding(convention, toks, tmp_path):
    tok = load_tokenizer(str(toks[convention]))
    spec = CONVENTIONS[convention]
    res = _prepare(toks[convention], tmp_path)
    end = tok.convert_tokens_to_ids(spec["expect_suffix"])
    pre = tok.convert_tokens_to_ids(spec["expect_prefix"])
    # the definition, written out per convention: its own template (BOS where it adds one), specials as text
    want = []
    for t in DOCS:
        body = tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        with_template = tok(t, split_special_tokens=True)["input_ids"]
        if spec["template"] == "bert":
            assert with_template == pre + body + end
        elif spec["template"]:
            assert with_template == pre + body
        else:
            assert with_template == body
        want.append(pre + body + end)
    got = _all_docs(tmp_path / "shards")
    assert sorted(got) == sorted(want)
    special = set(tok.all_special_ids)
    for doc in got:  # no control token inside a document: literal <s>, <|endoftext|>, [SEP] ... stayed text
        inner = doc[len(pre) : len(doc) - len(end)]
        assert not special & set(inner)
    hostile = tok(HOSTILE, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert tok.decode(hostile) == HOSTILE
    # recorded, shown, and in the printed summary
    index = json.loads((tmp_path / "shards/web/index.json").read_text())
    assert index["format"] == "warmstart-shards-v2"
    assert index["document"]["prefix"] == pre and index["document"]["suffix"] == end
    assert index["document"]["prefix_tokens"] == spec["expect_prefix"]
    assert index["document"]["suffix_tokens"] == spec["expect_suffix"]
    assert index["document"]["specials_as_text"] is True
    assert index["settings"]["bos"] == "auto" and index["settings"]["doc_end"] == "auto"
    assert "documents: " in res.summary()


def test_chat_eos_is_said_and_document_token_used(toks):
    fmt = resolve_format(load_tokenizer(str(toks["qwen"])))
    assert fmt.suffix_tokens == ["<|endoftext|>"]
    assert "<|im_end|> ends a chat turn" in fmt.rule and "format probe" in fmt.rule
    assert "document token" in resolve_format(load_tokenizer(str(toks["gpt2"]))).rule


def test_settings_are_recorded_and_fingerprinted(toks, tmp_path):
    tok = load_tokenizer(str(toks["llama"]))
    _prepare(toks["llama"], tmp_path, bos=False, doc_end="none")
    body = [tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] for t in DOCS]
    assert sorted(_all_docs(tmp_path / "shards")) == sorted(body)
    index = json.loads((tmp_path / "shards/web/index.json").read_text())
    assert index["document"]["prefix"] == [] and index["document"]["suffix"] == []
    assert (index["settings"]["bos"], index["settings"]["doc_end"]) == ("false", "none")
    before = (tmp_path / "shards/web/train.bin").read_bytes()
    with pytest.raises(UserError, match="different inputs; use --overwrite"):
        _prepare(toks["llama"], tmp_path)  # the default format differs: refused, nothing touched
    assert (tmp_path / "shards/web/train.bin").read_bytes() == before
    _prepare(toks["llama"], tmp_path, doc_end="<unk>", overwrite=True)
    assert json.loads((tmp_path / "shards/web/index.json").read_text())["document"]["suffix_tokens"] == ["<unk>"]
    with pytest.raises(UserError, match="not in the tokenizer's vocabulary"):
        _prepare(toks["llama"], tmp_path / "x", doc_end="<nope>")
    with pytest.raises(UserError, match="no BOS token"):
        _prepare(toks["qwen"], tmp_path / "y", bos=True)
    # eos_token, the older name, still works and means doc_end
    _prepare(toks["qwen"], tmp_path / "z", eos_token="<|im_end|>")
    assert json.loads((tmp_path / "z/shards/web/index.json").read_text())["document"]["suffix_tokens"] == ["<|im_end|>"]


def test_format_show_prints_every_domain(toks, tmp_path, capsys):
    _prepare(toks["gemma"], tmp_path)
    assert main(["format", "show", str(tmp_path / "shards")]) == 0
    out = capsys.readouterr().out
    assert "web" in out and "<bos> (2) + text + <eos> (1)" in out and "bos: auto, doc_end: auto" in out


def _make_legacy(data_dir: Path) -> None:
    """Rewrite a prepared directory as the previous version wrote it (v1 index, no recorded format)."""
    for p in [data_dir / "manifest.json", *data_dir.glob("*/index.json")]:
        d = json.loads(p.read_text())
        d["format"] = "warmstart-shards-v1"
        d.pop("document", None)
        p.write_text(json.dumps(d))


def test_old_format_is_recognised_warned_or_refused(toks, tmp_path, capsys):
    # GPT-2-style data of the old version is text + EOS, i.e. the right tokens: used, with a warning
    _prepare(toks["gpt2"], tmp_path / "g")
    _make_legacy(tmp_path / "g/shards")
    dom = open_data_dir(tmp_path / "g/shards")["web"]
    assert dom.document_format.legacy and dom.document_format.suffix == [dom.tokenizer["eos_id"]]
    msg = check_format(dom.document_format, load_tokenizer(str(toks["gpt2"])), "d")
    assert "older warmstart" in msg and "--overwrite" in msg
    # Llama-style data of the old version lacks BOS: refused with the command that rebuilds it
    _prepare(toks["llama"], tmp_path / "l", bos=False, doc_end="</s>")
    _make_legacy(tmp_path / "l/shards")
    dom = open_data_dir(tmp_path / "l/shards")["web"]
    with pytest.raises(UserError, match=r"start with no BOS.*<s>.*warmstart prepare RECIPE --overwrite"):
        check_format(dom.document_format, load_tokenizer(str(toks["llama"])), "d")
    # re-preparing over it without --overwrite says why
    with pytest.raises(UserError, match="older warmstart"):
        _prepare(toks["llama"], tmp_path / "l")


def _tiny_llama(tok_dir: Path, out: Path, layers: int = 2) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(str(tok_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a less uniform next-token distribution than the default init
        model.lm_head.weight.normal_(0, 0.5)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_mismatch_refused_in_train_eval_quality_and_after_inherit(toks, tmp_path):
    from train_helpers import tiny_recipe

    from warmstart.eval.run_eval import eval_checkpoint
    from warmstart.models.surgery import inherit
    from warmstart.recipes.quality import score_domain
    from warmstart.train.loop import train

    # same vocabulary, but saved without the BOS template: its data has no BOS (auto), the checkpoint adds one
    plain = build_tokenizer("llama", tmp_path / "plain-tok", template=False)
    _prepare(plain, tmp_path)
    data = tmp_path / "shards"
    ckpt = _tiny_llama(toks["llama"], tmp_path / "ckpt", layers=2)
    with pytest.raises(UserError, match=r"documents start with no BOS.*<s>.*--allow-format-mismatch"):
        eval_checkpoint(str(ckpt), data, seq_len=16, out=tmp_path / "ev")
    assert not (tmp_path / "ev").exists()
    res = eval_checkpoint(str(ckpt), data, seq_len=16, out=tmp_path / "ev", allow_format_mismatch=True)
    assert res["val"]["web"]["tokens"] > 0
    with pytest.raises(UserError, match="--allow-format-mismatch"):
        score_domain(str(ckpt), data, "web", tmp_path / "rank", progress=False)
    small = tmp_path / "inherited"
    inherit(str(ckpt), small, layers=1)
    recipe = tiny_recipe(data, None, tmp_path / "runs", "cont", data={"weights": {"web": 1.0}, "seq_len": 8},
                         model={"tokenizer": None, "preset": None}, init={"from": str(small)},
                         train={"steps": 1, "batch_tokens": 16, "micro_batch_size": 2},
                         schedule={"warmup_steps": 0})
    with pytest.raises(UserError, match=r"data\.allow_format_mismatch=true"):
        train(recipe)
    assert not (tmp_path / "runs/cont").exists()
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"allow_format_mismatch": True})})
    assert train(recipe).step == 1


def test_format_probe_equals_direct_transformers_computation(toks, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from warmstart.eval.format_probe import candidates, probe, text_documents

    ckpt = _tiny_llama(toks["qwen"], tmp_path / "ckpt")
    tok = load_tokenizer(str(ckpt))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    docs = text_documents(tok, DOCS, n_docs=4, tokens=12)
    assert len(docs) == 4 and all(2 <= len(d) <= 13 for d in docs)
    cands = candidates(tok)
    labels = {(c.bos, c.end) for c in cands}
    assert labels == {(False, "<|im_end|>"), (False, "<|endoftext|>"), (False, None)}  # qwen-style: no BOS
    rows = probe(model, docs, cands, batch_size=3)
    assert [r.loss for r in rows] == sorted(r.loss for r in rows)
    for r in rows:
        ctx = r.candidate.end_ids + r.candidate.prefix
        total, n = 0.0, 0
        for d in docs:  # one document at a time, no padding: the by-hand number
            x = torch.tensor([ctx + d])
            with torch.no_grad():
                logits = model(input_ids=x).logits[0]
            start = len(ctx)  # logits at position p predict token p + 1; targets are the text tokens 2..
            total += F.cross_entropy(logits[start : len(ctx) + len(d) - 1], x[0, start + 1 :], reduction="sum").item()
            n += len(d) - 1
        assert r.tokens == n
        assert r.loss == pytest.approx(total / n, abs=1e-5)
    # the CLI prints the table and writes the winner into a prepare recipe, which then validates and prepares
    texts = _jsonl(tmp_path / "t.jsonl", DOCS)
    recipe = tmp_path / "prepare.yaml"
    recipe.write_text(yaml.safe_dump({"tokenizer": str(ckpt), "out": str(tmp_path / "out"),
                                      "domains": {"web": [{"path": str(texts)}]}, "val_docs": 1}))
    assert main(["format", "probe", str(ckpt), "--text", str(texts), "--docs", "4", "--tokens", "12",
                 "--write-recipe", str(recipe), "--json", str(tmp_path / "probe.json")]) == 0
    out = capsys.readouterr().out
    assert "over 4 documents" in out and "vs default" in out
    # what is measured is said before the minutes of scoring (and a progress bar, lines in a log, runs over it)
    assert out.index(f"format probe: {len(cands)} candidate formats x 4 documents") < out.index("vs default")
    from warmstart.eval.format_probe import decide

    chosen, _ = decide(rows)
    tree = yaml.safe_load(recipe.read_text())
    if chosen.default:
        assert tree["bos"] == "auto" and tree["doc_end"] == "auto"
    else:
        assert tree["bos"] is chosen.candidate.bos and tree["doc_end"] == (chosen.candidate.end or "none")
    assert json.loads((tmp_path / "probe.json").read_text())["winner"]["default"] == chosen.default
    assert main(["prepare", str(recipe)]) == 0
    assert (cands[0].bos, cands[0].end) == (False, "<|endoftext|>")  # the default first: ties go to it
    # GPT-2 style: <|endoftext|> is BOS and EOS; "BOS, after nothing" is the same context as "after EOS": one row
    gpt2 = candidates(load_tokenizer(str(toks["gpt2"])))
    contexts = [tuple(c.end_ids + c.prefix) for c in gpt2]
    assert len(contexts) == len(set(contexts)) and (gpt2[0].bos, gpt2[0].end) == (False, "<|endoftext|>")
    # a bad --write-recipe is refused before any scoring
    with pytest.raises(UserError, match="--write-recipe: .* not found"):
        from warmstart.eval.format_probe import run_probe

        run_probe(str(ckpt), texts=[str(texts)], write_recipe=str(tmp_path / "nope.yaml"))
    # Llama-style tokenizers get BOS candidates too
    llama = {(c.bos, c.end) for c in candidates(load_tokenizer(str(toks["llama"])))}
    assert (True, "</s>") in llama and (False, None) in llama and (True, None) in llama


def test_document_windows_equal_direct_loss_and_step0_of_a_continued_run(toks, tmp_path):
    from train_helpers import tiny_recipe
    from transformers import AutoModelForCausalLM

    from warmstart.eval.run_eval import eval_checkpoint
    from warmstart.runtime.metrics import read_metrics
    from warmstart.train.loop import train

    ckpt = _tiny_llama(toks["llama"], tmp_path / "ckpt")
    texts = [f"Document {i}: " + DOCS[i % 5] * (1 + i % 3) for i in range(12)]
    src = _jsonl(tmp_path / "docs.jsonl", texts)
    prepare({"tokenizer": str(ckpt), "out": str(tmp_path / "shards"), "domains": {"web": [{"path": str(src)}]},
             "val_docs": 6}, progress=False)
    data = tmp_path / "shards"
    res = eval_checkpoint(str(ckpt), data, seq_len=24, max_tokens=10_000, batch_size=4, out=tmp_path / "ev")
    assert res["windows"] == "documents"  # the default on a plain checkpoint
    # by hand: every val document as its tokenizer writes it (<s> + text + </s>), first 25 tokens, one at a time
    tok = load_tokenizer(str(ckpt))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    val_texts = [texts[i] for i in _val_positions(data, texts, tok)]
    total, n = 0.0, 0
    for t in val_texts:
        ids = (tok(t, split_special_tokens=True)["input_ids"] + [tok.eos_token_id])[:25]
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x[:, :-1]).logits[0]
        total += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        n += len(ids) - 1
    assert res["val"]["web"]["tokens"] == n
    assert res["val"]["web"]["loss"] == pytest.approx(total / n, abs=1e-5)
    # a continued run evaluating document windows starts (step 0) from exactly that number
    recipe = tiny_recipe(data, None, tmp_path / "runs", "cont", data={"weights": {"web": 1.0}, "seq_len": 24},
                         model={"tokenizer": None, "preset": None}, init={"from": str(ckpt)},
                         train={"steps": 1, "batch_tokens": 48, "micro_batch_size": 2}, schedule={"warmup_steps": 0},
                         eval={"windows": "documents", "max_tokens": 10_000})
    run = train(recipe)
    step0 = next(r for r in read_metrics(run.run_dir) if r["event"] == "eval" and r["step"] == 0)
    assert step0["val/web/loss"] == pytest.approx(total / n, abs=1e-5)
    packed = eval_checkpoint(str(ckpt), data, seq_len=24, max_tokens=10_000, out=tmp_path / "ev2", windows="packed")
    assert packed["windows"] == "packed" and packed["val"]["web"]["loss"] != pytest.approx(total / n, abs=1e-3)


def _val_positions(data: Path, texts: list[str], tok) -> list[int]:
    """Which input documents went to the val split: matched by their tokens."""
    dom = open_data_dir(data)["web"]
    val = [np.asarray(d).tolist() for d in dom.documents("val")]
    out = []
    for i, t in enumerate(texts):
        ids = tok(t, split_special_tokens=True)["input_ids"] + [tok.eos_token_id]
        if ids in val:
            out.append(i)
    assert len(out) == len(val)
    return out


@pytest.mark.parametrize("what,content", [
    ("manifest.json", "{x"), ("manifest.json", "null"), ("manifest.json", '{"domains": 3}'),
    ("web/index.json", "[1, 2]"), ("web/index.json", "BADJSON"), ("web/index.json", "DOCUMENT"),
])
def test_corrupt_data_files_are_one_line(toks, tmp_path, capsys, what, content):
    _prepare(toks["gpt2"], tmp_path)
    path = tmp_path / "shards" / what
    if content == "DOCUMENT":  # valid JSON, a current-format index whose document format is garbage
        d = json.loads(path.read_text())
        d["document"] = "x"
        content = json.dumps(d)
    elif content == "BADJSON":
        content = path.read_text()[:-5]
    path.write_text(content)
    assert main(["format", "show", str(tmp_path / "shards")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0] and str(path) in err[0]


# ----------------------------------------------------------------------------------------------- long documents
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _long_text() -> str:
    from conftest import _stdlib_texts

    texts = _stdlib_texts()
    return "\n\n".join(texts["prose"] + texts["code"])[:200_000]


def _pretokenizer_kinds(texts: list[str]):
    """Tokenizers of the pre-tokenizer families in use: GPT-2 byte-level, Llama-3's split regex, BERT's
    WordPiece with lowercasing, and a Metaspace that prepends its marker to every text."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def bpe(pre, normalizer=None, model=None, trainer=None):
        tok = Tokenizer(model or models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre
        if normalizer is not None:
            tok.normalizer = normalizer
        trainer = trainer or trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]"], show_progress=False,
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")

    yield "gpt2", bpe(pre_tokenizers.ByteLevel(add_prefix_space=False))
    yield "llama3", bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    yield "wordpiece", bpe(pre_tokenizers.BertPreTokenizer(), normalizers.BertNormalizer(lowercase=True),
                           models.WordPiece(unk_token="[UNK]"),
                           trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[UNK]"], show_progress=False))
    yield "metaspace", bpe(pre_tokenizers.Metaspace(prepend_scheme="always"))


def test_a_long_text_in_pieces_gives_the_tokens_of_the_whole():
    """One huge document is encoded a piece at a time (the tokenizer's memory on one text grows far faster than
    its length); every cut is checked, so the tokens are those of encoding it whole, for every pre-tokenizer
    family. Where a piece's start would change (Metaspace prepends its marker to a piece opening on a newline),
    the check refuses the cut."""
    from warmstart.data.doc_format import piece_bounds

    text = _long_text()
    for name, tok in _pretokenizer_kinds([text]):
        bounds = piece_bounds(tok, text, 2000)
        whole = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        pieces = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            pieces += tok(text[a:b], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert pieces == whole, name
        assert bounds[0] == 0 and bounds[-1] == len(text) and bounds == sorted(set(bounds)), name
        # about one cut per 2,000 characters (a cut may be checked and refused: then the piece grows)
        assert len(bounds) - 1 >= len(text) // 2000 * 0.9, (name, len(bounds))
        if name == "metaspace":  # "\nword" alone becomes "▁\nword": every cut before a newline was refused
            assert {text[q] for q in bounds[1:-1]} == {" "}
        else:
            assert {text[q] for q in bounds[1:-1]} == {" ", "\n"}, name


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_writes_a_huge_document_as_its_whole_encoding(tokenizer_dir, tmp_path, workers):
    from warmstart.data.doc_format import PIECE_CHARS

    tok = load_tokenizer(str(tokenizer_dir))
    text = _long_text()
    assert len(text) > PIECE_CHARS  # encoded in pieces
    texts = ["a short one", text, "another short one"]
    _prepare(tokenizer_dir, tmp_path, texts=texts, val_docs=0, workers=workers)
    fmt = json.loads((tmp_path / "shards/web/index.json").read_text())["document"]
    want = [fmt["prefix"] + tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            + fmt["suffix"] for t in texts]
    assert _all_docs(tmp_path / "shards") == want


def test_format_probe_keeps_the_default_unless_a_candidate_wins_clearly():
    from warmstart.eval.format_probe import Candidate, ProbeRow, decide, format_table, paired_difference

    rng = np.random.default_rng(0)
    m, n = 12, np.full(12, 100)
    base = rng.normal(3.0, 0.5, m) * n  # per-document summed losses of the default
    # equal document lengths: the SE is the plain standard error of the per-document mean differences
    noisy = base + rng.normal(-0.003, 0.05, m) * n
    d, se = paired_difference(noisy, base, n)
    assert d == pytest.approx(np.mean((noisy - base) / n))
    assert se == pytest.approx(np.std((noisy - base) / n, ddof=1) / np.sqrt(m))

    def rows(cand_loss):
        default = ProbeRow(Candidate(False, "<|endoftext|>", [], [0]), float(base.sum() / n.sum()), int(n.sum()),
                           base, n, default=True)
        other = ProbeRow(Candidate(True, "<|endoftext|>", [1], [0]), float(cand_loss.sum() / n.sum()), int(n.sum()),
                         cand_loss, n)
        other.diff, other.se = paired_difference(cand_loss, base, n)
        return sorted([default, other], key=lambda r: r.loss)

    # lower mean loss, but by less than its error (the 0.003 nats on 12 documents): the default stays
    e = rng.normal(0, 0.05, m)
    small = rows(base + (e - e.mean() - 0.003) * n)
    assert not small[0].default and small[0].diff == pytest.approx(-0.003) and small[0].se > 0.0015
    chosen, why = decide(small)
    assert chosen.default and "cannot tell them apart" in why and "--docs" in why
    table = format_table(small, m)
    assert "(default)" in table and "+- s.e." in table and "bos: auto, doc_end: auto" in table
    # better on every document by 0.2 nats: it wins
    chosen, why = decide(rows(base - 0.2 * n + rng.normal(0, 0.01, m) * n))
    assert not chosen.default and "standard errors" in why


def test_format_probe_names_a_missing_text_path_before_loading_anything(tmp_path):
    from warmstart.eval.format_probe import run_probe

    with pytest.raises(UserError, match=r"^format probe: --text .*nope: not found$"):
        run_probe(str(tmp_path / "no-checkpoint-either"), texts=[str(tmp_path / "nope")])
