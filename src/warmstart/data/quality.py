"""Quality rankings of a domain's documents and the high-quality subset as a new prepared domain (Guo et al. 2024).

A ranking directory (written by `warmstart quality score`, see warmstart.recipes.quality):

    RANKING/meta.json          what was scored (data dir, domain + its fingerprint, split, model, settings)
    RANKING/chunks/NNNNNN.npy  per chunk of documents: rows (nll_sum, scored_tokens), written atomically
    RANKING/scores.npy         per document (in corpus order): mean NLL per token = log perplexity
    RANKING/ranking.npy        document ids, lowest perplexity first (stable for ties)

`select_top_tokens` is a rank cut (no absolute threshold, as in the paper): documents in ranking order while the
running total of their tokens (the data's own tokens, EOS included) stays <= K. The new domain's train split holds
the chosen documents in corpus order; its val split is a copy of the source domain's val split, so the two are
evaluated on the same text. The domain is built beside its final place and swapped in, then manifest.json is
updated atomically. Re-running `warmstart prepare` with the original recipe keeps it listed while its source
domain is unchanged, and drops it (saying so) once the source has been rebuilt from different inputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from warmstart.atomic import build_dir, write_json
from warmstart.data.shards import FORMAT, DomainData, SplitWriter, open_data_dir, read_manifest
from warmstart.errors import UserError

RANKING_FORMAT = "warmstart-quality-ranking-v1"


def read_ranking(ranking_dir: str | Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(meta, scores per document, document ids best first) of a complete ranking."""
    r = Path(ranking_dir)
    meta_path = r / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{r}: not a quality ranking (no meta.json); run `warmstart quality score` first")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != RANKING_FORMAT:
        raise UserError(f"{meta_path}: unknown format {meta.get('format')!r} (expected {RANKING_FORMAT})")
    if not meta.get("complete") or not (r / "ranking.npy").is_file():
        raise UserError(f"{r}: ranking incomplete; run `warmstart quality score` again to finish it")
    return meta, np.load(r / "scores.npy"), np.load(r / "ranking.npy")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def choose_documents(ranking: np.ndarray, doc_tokens: np.ndarray, top_tokens: int) -> np.ndarray:
    """The rank cut: the longest prefix of `ranking` whose documents hold <= top_tokens tokens (sorted ids)."""
    cum = np.cumsum(doc_tokens[ranking])
    k = int(np.searchsorted(cum, top_tokens, side="right"))
    return np.sort(ranking[:k])


def select_top_tokens(
    data_dir: str | Path, ranking_dir: str | Path, top_tokens: int, out_domain: str, overwrite: bool = False
) -> dict:
    """Write the lowest-perplexity documents (up to `top_tokens` tokens) as prepared domain `out_domain`."""
    data_dir = Path(data_dir)
    if top_tokens <= 0:
        raise UserError(f"--top-tokens: must be > 0 (got {top_tokens})")
    if not out_domain or "/" in out_domain or out_domain.startswith("."):
        raise UserError(f"--out-domain: bad domain name {out_domain!r} (a plain directory name is needed)")
    meta, _scores, ranking = read_ranking(ranking_dir)
    domains = open_data_dir(data_dir)
    src_name = meta["domain"]
    if src_name not in domains:
        raise UserError(f"{ranking_dir}: ranks domain {src_name!r}, which {data_dir} does not have")
    if out_domain == src_name:
        raise UserError(f"--out-domain: {out_domain!r} is the ranked domain itself; choose a new name")
    src: DomainData = domains[src_name]
    if meta.get("domain_fingerprint") != src.index.get("fingerprint"):
        raise UserError(
            f"{ranking_dir}: scored a different version of domain {src_name!r} (re-prepared since); score it again"
        )
    if meta.get("split") != "train":
        raise UserError(
            f"{ranking_dir}: ranks the {meta.get('split')!r} split; selection needs a train ranking"
        )
    offs = src.doc_offsets("train")
    doc_tokens = np.diff(offs)
    chosen = choose_documents(ranking, doc_tokens, int(top_tokens))
    if not len(chosen):
        raise UserError(
            f"--top-tokens {top_tokens}: smaller than the best-ranked document ({int(doc_tokens[ranking[0]])} "
            "tokens); raise it"
        )
    fingerprint = _sha(
        {
            "format": FORMAT,
            "domain": out_domain,
            "source_fingerprint": src.index.get("fingerprint"),
            "ranking": meta.get("identity"),
            "top_tokens": int(top_tokens),
        }
    )
    final = data_dir / out_domain
    status = "built"
    existing = DomainData.open(final) if (final / "index.json").is_file() else None
    if existing is not None and existing.index.get("fingerprint") == fingerprint:
        status = "up to date"
        index = existing.index
    else:
        if final.exists() and not overwrite:
            raise UserError(
                f"{final}: domain {out_domain!r} exists with other content; use --overwrite to replace it"
            )
        toks = src.tokens("train")
        with build_dir(final, replace=True) as tmp:
            writers = {
                "train": SplitWriter(tmp, "train", len(chosen), src.dtype),
                "val": SplitWriter(tmp, "val", src.n_docs("val"), src.dtype),
            }
            try:
                for i in chosen:
                    a, b = int(offs[i]), int(offs[i + 1])
                    writers["train"].write(np.asarray(toks[a:b]), np.array([b - a], dtype=np.int64))
                if src.n_docs("val"):
                    voffs = src.doc_offsets("val")
                    writers["val"].write(np.asarray(src.tokens("val")), np.diff(voffs))
                splits = {s: w.finish() for s, w in writers.items()}
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
            index = {
                key: v
                for key, v in src.index.items()
                if key not in ("splits", "sources", "bad_records", "domain")
            }
            index.update(
                {
                    "domain": out_domain,
                    "fingerprint": fingerprint,
                    "splits": splits,
                    "sources": [],
                    "bad_records": 0,
                    "selected_from": {
                        "domain": src_name,
                        "fingerprint": src.index.get("fingerprint"),
                        "ranking": str(ranking_dir),
                        "model": meta.get("model"),
                        "top_tokens": int(top_tokens),
                        "docs": int(len(chosen)),
                        "of_docs": int(len(doc_tokens)),
                    },
                }
            )
            write_json(tmp / "index.json", index)
        if existing is not None:
            status = "rebuilt"
    manifest = read_manifest(data_dir)
    doms = list(manifest.get("domains", []))
    fps = dict(manifest.get("fingerprints", {}))
    if out_domain not in doms or fps.get(out_domain) != fingerprint:
        if out_domain not in doms:
            doms.append(out_domain)
        fps[out_domain] = fingerprint
        write_json(data_dir / "manifest.json", {**manifest, "domains": doms, "fingerprints": fps})
    return {
        "domain": out_domain,
        "status": status,
        "docs": int(index["splits"]["train"]["docs"]),
        "tokens": int(index["splits"]["train"]["tokens"]),
        "of_docs": int(len(doc_tokens)),
        "of_tokens": int(offs[-1]),
    }
