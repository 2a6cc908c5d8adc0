"""`warmstart quality score`: rank a domain's documents by perplexity under a reference HF causal LM, or under
a Kneser-Ney n-gram model of reference domains (`score_domain_ngram`, the paper's KenLM route; see
warmstart.models.ngram).

Per document: the tokens it is scored on are the data's own tokens (in its recorded document format: BOS, text,
document end) when the model shares the data's tokenizer (same vocab hash) and that format is the model's, else
the text decoded and re-encoded in the model's own format (data/doc_format.py). The document-end token is put in
front, as in the training stream where every document follows the previous one's end, so every token after it
is predicted (with neither a BOS nor a document end, the first token is context only). Score = mean token NLL (log
perplexity). Documents longer than the model's context are scored in windows of `context` tokens that overlap by
one token (each window predicts its tokens from the window's start; every token is predicted exactly once); with
`max_doc_tokens` only a document's first that many tokens are scored (cheaper on very long documents).

Batched: windows are length-sorted within a chunk and run `batch_size` at a time, right-padded with an attention
mask. Resumable: every `chunk_docs` documents the chunk's (nll_sum, tokens) rows are written atomically; a re-run
with the same settings skips finished chunks. The ranking is then written as scores.npy / ranking.npy (see
warmstart.data.quality for the layout).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from warmstart import atomic
from warmstart.data.quality import RANKING_FORMAT
from warmstart.errors import UserError, warn


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic.write_bytes(path, buf.getvalue())


def _context_length(model, requested: int | None) -> int:
    """The scoring window: --context if given (refused above the model's positions), else the model's own."""
    from warmstart.models.build import check_seq_len, context_length

    limit = context_length(model.config)
    if requested is not None:
        check_seq_len(model.config, requested, "--context", "give a smaller --context (or leave it out)")
    n = requested or limit or 1024
    if n < 2:
        raise UserError(f"--context: must be >= 2 (got {n})")
    return int(n)


def windows(ids: list[int] | np.ndarray, context: int) -> list[np.ndarray]:
    """Cut [ctx token] + document into windows of <= `context` tokens overlapping by one token."""
    ids = np.asarray(ids, dtype=np.int64)
    step = context - 1
    return [ids[j : j + context] for j in range(0, len(ids) - 1, step)]


def _doc_encoder(model_tok, domain, rows: int, allow_format_mismatch: bool = False):
    """A function doc tokens -> ids the model reads: the previous document's end token first (as in the packed
    stream), then the document in the model's own format. Ids past the model's `rows` embedding rows are refused
    (UserError) before they reach it."""
    from warmstart.data.doc_format import encode_texts, resolve_format
    from warmstart.data.tokenizer import load_tokenizer, vocab_hash
    from warmstart.models.build import check_data_format, check_token_ids

    data_tok_info = domain.tokenizer
    fmt = domain.document_format
    if vocab_hash(model_tok) == data_tok_info.get("vocab_hash"):
        check_data_format(model_tok, {domain.name: domain}, str(domain.path.parent), allow_format_mismatch,
                          "--allow-format-mismatch")
        max_id = max(int(s.get("max_token_id") or 0) for s in domain.index["splits"].values())
        check_token_ids(max_id, rows, f"--data {domain.path.parent} ({domain.name})")
        first = np.asarray(fmt.suffix[-1:], dtype=np.int64)
        return lambda doc: np.concatenate((first, np.asarray(doc, dtype=np.int64)))
    name = data_tok_info.get("name")
    try:
        data_tok = load_tokenizer(name)
    except UserError as e:
        raise UserError(
            f"the reference model's tokenizer differs from the data's and the data's tokenizer {name!r} cannot be "
            f"loaded to decode the documents ({e})"
        ) from None
    model_fmt = resolve_format(model_tok)
    head, tail = len(fmt.prefix), len(fmt.suffix)

    for i in [*model_fmt.prefix, *model_fmt.suffix]:  # in every document: refused before any scoring
        check_token_ids(int(i), rows, "--model", f" (the tokenizer's {model_tok.convert_ids_to_tokens(int(i))!r})")

    def encode(doc):
        text = data_tok.decode(np.asarray(doc[head : len(doc) - tail]).tolist())
        ids = encode_texts(model_tok, [text])[0]
        out = np.asarray([*model_fmt.suffix[-1:], *model_fmt.prefix, *ids, *model_fmt.suffix], dtype=np.int64)
        check_token_ids(int(out.max()), rows, "--model", " (in a re-encoded document)")
        return out

    return encode


def _score_chunk(
    loss_model,
    docs: list[np.ndarray],
    encode,
    context: int,
    max_doc_tokens: int | None,
    batch_size: int,
    device,
    bar,
) -> np.ndarray:
    import torch

    from warmstart.models.loss import IGNORE

    rows = np.zeros((len(docs), 2), dtype=np.float64)
    pieces: list[tuple[int, np.ndarray]] = []
    for i, doc in enumerate(docs):
        ids = encode(doc)
        if max_doc_tokens is not None:
            ids = ids[: max_doc_tokens + 1]
        pieces.extend((i, w) for w in windows(ids, context))
    pieces.sort(key=lambda p: -len(p[1]))
    with torch.no_grad():
        for b in range(0, len(pieces), batch_size):
            batch = pieces[b : b + batch_size]
            width = max(len(w) for _, w in batch)
            x = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, (_, w) in enumerate(batch):
                x[j, : len(w)] = torch.from_numpy(w)
                mask[j, : len(w)] = 1
            x, mask = x.to(device), mask.to(device)
            labels = torch.full_like(x, IGNORE)  # position t predicts token t + 1; padding predicts nothing
            labels[:, :-1] = torch.where(mask[:, 1:] == 1, x[:, 1:], IGNORE)
            nll, _ = loss_model(x, labels, attention_mask=mask, reduction="none")  # blockwise, no full logits
            nll = nll.double().sum(1).cpu().numpy()
            for j, (i, w) in enumerate(batch):
                rows[i, 0] += nll[j]
                rows[i, 1] += len(w) - 1
    bar.update(len(docs))
    return rows


def _check_memory(resolved, longest: int, context: int | None, batch_size: int) -> None:
    """quality score's memory forecast (models/memory.py): batches of the longest document's windows (at most
    `context`, default the model's positions)."""
    from transformers import AutoConfig

    from warmstart.models import memory
    from warmstart.models.build import context_length

    try:
        config = AutoConfig.from_pretrained(str(resolved))
    except Exception:  # unreadable: the load that follows says so
        return
    import torch

    ctx = min(longest, context or int(context_length(config) or 1024))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    memory.check_forward("quality score", resolved, batch_size, ctx, ["--batch-size", "--context"], device=device)


def score_domain(
    model_spec: str,
    data_dir: str | Path,
    domain: str,
    out: str | Path,
    split: str = "train",
    batch_size: int = 16,
    chunk_docs: int = 1024,
    context: int | None = None,
    max_doc_tokens: int | None = None,
    progress: bool = True,
    allow_format_mismatch: bool = False,
) -> dict:
    """Score every document of `domain` (resumable) and write the ranking directory `out`; returns meta.json.
    Data prepared with the model's tokenizer must be in its document format (`allow_format_mismatch` to skip)."""
    import torch
    from transformers import AutoModelForCausalLM

    from warmstart.data.shards import open_data_dir
    from warmstart.data.tokenizer import load_tokenizer
    from warmstart.models.build import embedding_rows
    from warmstart.models.locate import resolve_checkpoint
    from warmstart.models.loss import LossModel

    domains = open_data_dir(data_dir)
    if batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1 (got {batch_size})")
    dom = _check_request(domains, data_dir, domain, split, chunk_docs)
    resolved = resolve_checkpoint(model_spec, "--model")
    offsets = dom.doc_offsets(split)
    longest = int(np.diff(offsets).max()) + 1 if len(offsets) > 1 else 2  # + the context token
    _check_memory(resolved, min(longest, max_doc_tokens or longest), context, batch_size)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(resolved), dtype=torch.float32)
    except Exception as e:  # transformers raises many types for unreadable checkpoints
        from warmstart.models.locate import load_failure

        raise UserError(f"--model {model_spec}: cannot load as a causal LM ({load_failure(e)})") from None
    model_tok = load_tokenizer(str(resolved))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from warmstart.models.build import no_kv_cache

    no_kv_cache(model).to(device).eval()
    loss_model = LossModel(model)
    ctx = _context_length(model, context)
    encode = _doc_encoder(model_tok, dom, embedding_rows(model), allow_format_mismatch)
    identity = {
        "model": str(Path(resolved).resolve()) if Path(str(resolved)).exists() else str(resolved),
        "domain": domain,
        "domain_fingerprint": dom.index.get("fingerprint"),
        "split": split,
        "context": ctx,
        "max_doc_tokens": max_doc_tokens,
        "chunk_docs": chunk_docs,
    }

    def score(docs, bar):
        return _score_chunk(loss_model, docs, encode, ctx, max_doc_tokens, batch_size, device, bar)

    return _write_ranking(out, data_dir, dom, split, identity, score, chunk_docs, progress)


def score_domain_ngram(
    reference: list[str],
    data_dir: str | Path,
    domain: str,
    out: str | Path,
    order: int = 3,
    split: str = "train",
    chunk_docs: int = 1024,
    max_doc_tokens: int | None = None,
    reference_max_tokens: int = 50_000_000,
    progress: bool = True,
) -> dict:
    """Score `domain`'s documents under a Kneser-Ney n-gram model fitted on the train split of the `reference`
    domains of the same data directory (the paper's KenLM route; no neural model), then rank as `score_domain`.
    At most `reference_max_tokens` reference tokens are counted (the first ones of each domain, in turn), which
    bounds memory at roughly 40 bytes per counted token."""
    from warmstart.data.shards import open_data_dir
    from warmstart.models.ngram import NgramLM

    domains = open_data_dir(data_dir)
    dom = _check_request(domains, data_dir, domain, split, chunk_docs)
    missing = [r for r in reference if r not in domains]
    if not reference or missing:
        raise UserError(
            f"--ngram-reference: no domain {', '.join(missing) or '(none given)'} in {data_dir} "
            f"(have: {', '.join(domains)})"
        )
    if reference_max_tokens < 1:
        raise UserError(f"--reference-max-tokens: must be >= 1 (got {reference_max_tokens})")
    parts, left = [], reference_max_tokens  # memmap slices: nothing is read until the model is fitted
    for name in reference:
        toks = domains[name].tokens("train")
        take = min(left, len(toks))
        parts.append(toks[:take])
        left -= take
        if left == 0:
            break
    tok = dom.tokenizer
    NgramLM.check_order(order, int(tok["vocab_size"]))
    lm: list[NgramLM] = []  # fitted on the first chunk that needs scoring (a finished ranking needs none)
    identity = {
        "model": f"ngram:order={order}:reference={','.join(reference)}",
        "reference_fingerprints": {r: domains[r].index.get("fingerprint") for r in reference},
        "reference_tokens": int(sum(len(p) for p in parts)),
        "domain": domain,
        "domain_fingerprint": dom.index.get("fingerprint"),
        "split": split,
        "max_doc_tokens": max_doc_tokens,
        "chunk_docs": chunk_docs,
    }

    def score(docs, bar):
        if not lm:
            stream = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
            lm.append(NgramLM.fit(stream, order, int(tok["vocab_size"]), int(tok["eos_id"])))
        rows = lm[0].doc_nll([d[:max_doc_tokens] if max_doc_tokens is not None else d for d in docs])
        bar.update(len(docs))
        return rows

    return _write_ranking(out, data_dir, dom, split, identity, score, chunk_docs, progress)


def _check_request(domains: dict, data_dir, domain: str, split: str, chunk_docs: int):
    """The domain to rank, after the checks both scorers share."""
    if domain not in domains:
        raise UserError(f"--domain: no domain {domain!r} in {data_dir} (have: {', '.join(domains)})")
    if split not in ("train", "val"):
        raise UserError(f"--split: expected train or val (got {split!r})")
    if chunk_docs < 1:
        raise UserError(f"--chunk-docs: must be >= 1 (got {chunk_docs})")
    return domains[domain]


def _say_unranked(rows: np.ndarray, scores: np.ndarray, domain: str) -> None:
    """Documents without a score go last in the ranking as if they were the worst: said once, not silently."""
    nan = int(np.isnan(scores).sum())
    unscored = int((rows[:, 1] <= 0).sum()) if len(rows) else 0
    if nan:
        warn(f"{domain}: {nan} of {len(scores)} documents have a loss that is not a number (the model overflowed on "
             "them?); they are ranked last, as if worst")
    if unscored:
        warn(f"{domain}: {unscored} of {len(scores)} documents have no token to score (shorter than 2 tokens with "
             "the document start); they are ranked last")


def _write_ranking(out, data_dir, dom, split: str, identity: dict, score, chunk_docs: int, progress: bool) -> dict:
    """Score every document chunk by chunk (finished chunks of an identical earlier run are reused), then write
    scores.npy, ranking.npy and a complete meta.json."""
    from warmstart.progress import bar as progress_bar

    out = Path(out)
    domain = identity["domain"]
    offs = dom.doc_offsets(split)
    n_docs = len(offs) - 1
    meta = {
        "format": RANKING_FORMAT,
        "data_dir": str(Path(data_dir).resolve()),
        "model": identity["model"],
        "domain": domain,
        "domain_fingerprint": identity["domain_fingerprint"],
        "split": split,
        "docs": n_docs,
        "identity": identity,
        "complete": False,
    }
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("identity") != identity:
            raise UserError(
                f"{out}: holds a ranking made with other settings ({old.get('identity')}); choose another --out"
            )
        if old.get("complete"):
            return old
    else:
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out}: exists and is not a quality ranking; choose another --out")
        atomic.write_json(meta_path, meta)
    chunks = out / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    toks = dom.tokens(split)
    n_chunks = (n_docs + chunk_docs - 1) // chunk_docs
    parts = []
    with progress_bar(n_docs, desc=f"scoring {domain}", unit=" doc", enabled=progress) as bar:
        for c in range(n_chunks):
            path = chunks / f"{c:06d}.npy"
            a, b = c * chunk_docs, min((c + 1) * chunk_docs, n_docs)
            if path.is_file():
                rows = np.load(path)
                if rows.shape != (b - a, 2):
                    raise UserError(f"{path}: damaged chunk; delete it and run again")
                bar.update(b - a)
            else:
                docs = [np.asarray(toks[offs[i] : offs[i + 1]]) for i in range(a, b)]
                rows = score(docs, bar)
                _save_npy(path, rows)
            parts.append(rows)
    rows = np.concatenate(parts) if parts else np.zeros((0, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(rows[:, 1] > 0, rows[:, 0] / np.maximum(rows[:, 1], 1), np.inf)
    _say_unranked(rows, scores, domain)
    ranking = np.argsort(scores, kind="stable").astype(np.int64)
    _save_npy(out / "scores.npy", scores)
    _save_npy(out / "ranking.npy", ranking)
    finite = scores[np.isfinite(scores)]
    meta.update(
        {
            "complete": True,
            "scored_tokens": int(rows[:, 1].sum()),
            "ppl_median": float(np.exp(np.median(finite))) if len(finite) else None,
            "ppl_best": float(np.exp(finite.min())) if len(finite) else None,
            "ppl_worst": float(np.exp(finite.max())) if len(finite) else None,
        }
    )
    atomic.write_json(meta_path, meta)
    return meta
