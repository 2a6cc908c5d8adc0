"""Which blocks of a reference to inherit: the rule, and what it measured on a sample of the user's data.

Rules for keeping n of a reference's k blocks (the removed blocks are m = k - n):
- `first`: blocks 0..n-1 (Inheritune, Sanyal et al. 2024).
- `angular`: remove the contiguous run of m blocks that changes the hidden state least (Gromov et al. 2024, "The
  Unreasonable Ineffectiveness of the Deeper Layers", eq. 7): for each start l, the angular distance
  arccos(cos(x_l, x_{l+m})) / pi between the hidden state entering block l and the one entering block l+m,
  averaged over ALL scored tokens of the sample (Gromov et al. use the last token; every token of a document
  window uses the whole sample). Runs must leave the final `keep_last` blocks in place (ShortGPT and Gromov et al.
  find the final block indispensable); the run with the smallest distance is removed (ties: the earliest).
- `auto`: the `first` cut and the cuts removing the `candidates` runs of smallest angular distance are evaluated
  on the sample (step-0 loss, the same blockwise loss training reports); the lowest loss is taken. (The angular
  distance ranks runs well but not perfectly: on SmolLM2 the smallest distance is not the lowest loss.)
The sample is documents of the data directory's train split (each domain an equal share of `sample_tokens`), cut
to `seq_len + 1` tokens from each document's start, in the format the data was prepared in (BOS etc.).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from warmstart.data.shards import open_data_dir
from warmstart.errors import UserError
from warmstart.eval.perplexity import document_windows, evaluate, val_sequences
from warmstart.models.surgery import cut_view, find_blocks
from warmstart.runtime.distributed import Dist

RULES = ("first", "angular", "auto")


def removable_starts(k: int, n: int, keep_last: int) -> list[int]:
    """Start indices l of the contiguous run [l, l + k - n) that may be removed, leaving the last `keep_last`
    blocks in place. Raises UserError when no run fits."""
    m = k - n
    if keep_last < 1:
        raise UserError(f"keep_last: {keep_last}; keep at least the final block (1)")
    if not 1 <= n <= k - 1:
        raise UserError(f"--layers: {n} is outside 1..{k - 1} (the reference has {k} blocks)")
    last = k - keep_last - m
    if last < 0:
        raise UserError(
            f"--layers: keeping {n} blocks including the final {keep_last} leaves no room for a contiguous removed "
            f"run of {m}; inherit at least {keep_last} blocks or lower keep_last"
        )
    return list(range(last + 1))


def kept_blocks(k: int, start: int, m: int) -> list[int]:
    """Blocks 0..k-1 without the run [start, start + m)."""
    return [i for i in range(k) if not start <= i < start + m]


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., d), (..., d) -> (...): arccos(cosine similarity) / pi in [0, 1], computed in float32."""
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi


def load_sample(
    data_dir: str, seq_len: int, max_tokens: int, causal: bool, domains: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) (N, seq_len) int64 from the train split of `domains` (default: all); labels -100 where
    nothing is scored. Causal: one window per document from its start (`document_windows`); masked LM: packed
    windows (the caller masks them). Raises UserError for an unknown domain or no tokens."""
    everything = open_data_dir(data_dir)
    unknown = [d for d in domains or [] if d not in everything]
    if unknown:
        raise UserError(f"--sample: no domain {unknown[0]!r} in {data_dir} (have: {', '.join(everything)})")
    domains = {d: everything[d] for d in domains} if domains else everything
    share = max(1, max_tokens // max(1, len(domains)))
    parts = []
    for dom in domains.values():
        if dom.n_tokens("train") < 2:
            continue
        if causal:
            parts.append(document_windows(dom, seq_len, share, split="train"))
        else:
            w = val_sequences(dom, seq_len, share, split="train")
            if w.shape[1] == seq_len + 1:
                parts.append((w[:, :-1], w[:, 1:]))
    if not parts:
        raise UserError(f"--sample: {data_dir} has no training tokens to measure the blocks on")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@torch.no_grad()
def angular_scores(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    inputs: np.ndarray,
    scored: np.ndarray,
    m: int,
    starts: list[int],
    batch_size: int = 8,
) -> dict[int, float]:
    """{start l: mean over scored tokens of angular_distance(x_l, x_{l+m})}, x_i the hidden state entering block i
    (taken by a forward pre-hook on each block, so it is the block's input in every family); `scored` (N, T) bool
    marks the tokens averaged over (padding excluded). Needs l + m < len(blocks)."""
    states: dict[int, torch.Tensor] = {}

    def hook(i):
        def grab(_mod, args, kwargs):
            states[i] = args[0] if args else kwargs["hidden_states"]

        return grab

    wanted = sorted({i for s in starts for i in (s, s + m)})
    handles = [blocks[i].register_forward_pre_hook(hook(i), with_kwargs=True) for i in wanted]
    device = next(model.parameters()).device
    sums = torch.zeros(len(starts), dtype=torch.float64)
    count = 0
    was = model.training
    model.eval()
    try:
        for a in range(0, len(inputs), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(inputs[a : a + batch_size])).to(device)
            keep = torch.from_numpy(np.ascontiguousarray(scored[a : a + batch_size])).to(device)
            states.clear()
            model(input_ids=x, attention_mask=keep.long())
            for j, s in enumerate(starts):
                sums[j] += angular_distance(states[s], states[s + m])[keep].double().sum().cpu()
            count += int(keep.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if not count:
        raise UserError("--sample: no scored tokens in the sample")
    return {s: float(sums[j] / count) for j, s in enumerate(starts)}


def choose_blocks(
    model: torch.nn.Module,
    k: int,
    n: int,
    rule: str,
    sample: tuple[np.ndarray, np.ndarray] | None,
    keep_last: int = 1,
    batch_size: int = 8,
    causal: bool = True,
    candidates: int = 3,
) -> tuple[list[int], dict]:
    """(the n kept blocks, a record of what was measured and chosen) for `rule` (see the module docstring).
    `sample` = (inputs, labels) as `load_sample` gives (masked LM: already masked); not needed for `first`.
    `candidates` (auto): how many removable runs, smallest angular distance first, are evaluated besides `first`
    (named "angular" for the smallest, "remove A-B" for the others)."""
    if rule not in RULES:
        raise UserError(f"rule: {rule!r} is not a block rule (have: {', '.join(RULES)})")
    first = list(range(n))
    if rule == "first":
        return first, {"rule": "first", "chosen": "first"}
    if sample is None:
        raise UserError(f"rule: {rule} measures the blocks on a sample of your data; give --sample DATA_DIR")
    inputs, labels = sample
    m = k - n
    starts = removable_starts(k, n, keep_last)
    scored = labels != -100 if causal else np.ones(inputs.shape, dtype=bool)
    _, _, blocks = find_blocks(model, k)
    scores = angular_scores(model, blocks, inputs, scored, m, starts, batch_size)
    best = min(starts, key=lambda s: (scores[s], s))
    record: dict = {
        "rule": rule,
        "sample_tokens": int(scored.sum()),
        "angular": {
            "removed_run_length": m,
            "keep_last": keep_last,
            "tokens": "all scored tokens of each sample window",
            "distance_by_start": {str(s): round(scores[s], 6) for s in starts},
            "removed": [best, best + m - 1],
        },
    }
    if rule == "angular":
        record["chosen"] = "angular"
        return kept_blocks(k, best, m), record
    ranked = sorted(starts, key=lambda s: (scores[s], s))[: max(1, candidates)]
    cuts = {"first": first, "angular": kept_blocks(k, best, m)}
    cuts.update({f"remove {s}-{s + m - 1}": kept_blocks(k, s, m) for s in ranked[1:]})
    losses = {}
    sets = {"sample": (inputs, labels)}
    for name, kept in cuts.items():
        with cut_view(model, k, kept):
            losses[name] = evaluate(
                model, sets, batch_size, Dist(device=next(model.parameters()).device), causal=causal
            )["sample"]
    names = list(cuts)
    chosen = min(names, key=lambda r: (losses[r], names.index(r)))
    record["step0_loss"] = {r: round(v, 6) for r, v in losses.items()}
    record["chosen"] = chosen
    return cuts[chosen], record


def describe(record: dict, k: int) -> list[str]:
    """Human lines for a `choose_blocks` record (what `warmstart inherit` prints)."""
    lines = []
    ang = record.get("angular")
    if ang:
        d = ang["distance_by_start"]
        best = min(d, key=lambda s: (d[s], int(s)))
        lines.append(
            f"angular distance of removing {ang['removed_run_length']} contiguous blocks (of {k}, keeping the final "
            f"{ang['keep_last']}), mean over {record['sample_tokens']} sample tokens: "
            + ", ".join(f"{s}-{int(s) + ang['removed_run_length'] - 1}: {v:.4f}" for s, v in d.items())
            + f" -> remove {best}-{int(best) + ang['removed_run_length'] - 1}"
        )
    if "step0_loss" in record:
        lines.append(
            "step-0 loss on the sample: " + ", ".join(f"{r} {v:.4f}" for r, v in record["step0_loss"].items())
        )
    lines.append(f"rule {record['rule']}: chose {record['chosen']}")
    return lines
