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
  on the sample (step-0 loss, the same blockwise loss training reports); the lowest loss is taken (a sample of
  fewer than `MIN_WINDOWS` windows decides nothing: `first` is kept, and the record says so). (The angular
  distance ranks runs well but not perfectly: on SmolLM2 the smallest distance is not the lowest loss.) The
  candidates are raced (`race`): each is dropped once a paired t-test over the sample's windows shows it worse
  than the leader, so a clear loser costs a few windows, not the whole sample.
What the choice costs is counted (`search_flops`: forward passes over the sample) and charged to every run that
starts from the cut: at a small training budget the search is not free, and a saving that hides it is not one.
The sample is documents of the data directory's train split (each domain an equal share of `sample_tokens`), cut
to `seq_len + 1` tokens from each document's start, in the format the data was prepared in (BOS etc.).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import t as student_t

from warmstart.data.shards import open_data_dir
from warmstart.errors import UserError
from warmstart.eval.perplexity import document_windows, scored_width, val_sequences
from warmstart.models.surgery import cut_view, find_blocks

RULES = ("first", "angular", "auto")
# the fewest windows a paired t-test may drop a candidate on, and auto may choose on: the spread of 2 or 3
# per-window differences says almost nothing about the next window (two equal differences have none at all, and
# any mean then looks significant); below it the race goes on, and a sample this small keeps the `first` cut
MIN_WINDOWS = 4


def removable_starts(k: int, n: int, keep_last: int) -> list[int]:
    """Start indices l of the contiguous run [l, l + k - n) that may be removed, leaving the last `keep_last`
    blocks in place. Raises UserError when no run fits."""
    m = k - n
    if keep_last < 1:
        raise UserError(f"--keep-last: {keep_last}; keep at least the final block (1)")
    if not 1 <= n <= k - 1:
        raise UserError(f"--layers: {n} is outside 1..{k - 1} (the reference has {k} blocks)")
    last = k - keep_last - m
    if last < 0:
        raise UserError(
            f"--keep-last: the final {keep_last} blocks do not fit in a cut of {n} (--layers {n}); give --keep-last "
            f"{n} or less, or more --layers"
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
    """(inputs, labels) (N, seq_len) int64 from the train split of `domains` (default: all), the domains' windows
    taking turns; labels -100 where nothing is scored. Causal: one window per document from its start
    (`document_windows`); masked LM: packed windows (the caller masks them). Raises UserError for an unknown
    domain or no tokens."""
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
    # the domains' windows interleaved (one of each in turn), so every prefix `race` stops at mixes the domains
    order = sorted(((j, d) for d, p in enumerate(parts) for j in range(len(p[0]))))
    x = np.stack([parts[d][0][j] for j, d in order])
    y = np.stack([parts[d][1][j] for j, d in order])
    return x, y


def _batches(inputs: np.ndarray, scored: np.ndarray, a: int, b: int, batch_size: int):
    """Rows a..b in batches, each cut after its last scored column (`scored_width`, as `evaluate` does; padding
    after it is masked anyway): (first row, inputs, scored) numpy slices."""
    for i in range(a, b, batch_size):
        keep = scored[i : min(i + batch_size, b)]
        width = scored_width(keep)
        yield i, inputs[i : i + len(keep), :width], keep[:, :width]


@torch.no_grad()
def angular_scores(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    inputs: np.ndarray,
    scored: np.ndarray,
    m: int,
    starts: list[int],
    batch_size: int = 8,
) -> tuple[dict[int, float], int]:
    """({start l: mean over scored tokens of angular_distance(x_l, x_{l+m})}, positions computed), x_i the hidden
    state entering block i (taken by a forward pre-hook on each block, so it is the block's input in every
    family); `scored` (N, T) bool marks the tokens averaged over (padding excluded). The pass runs the model's
    backbone only (`base_model`: no output layer, so no (B, T, vocab) logits at any vocabulary size); positions
    computed = the rows x columns run, each batch cut after its last scored column. Needs l + m < len(blocks).
    Raises UserError when nothing is scored."""
    states: dict[int, torch.Tensor] = {}

    def hook(i):
        def grab(_mod, args, kwargs):
            states[i] = args[0] if args else kwargs["hidden_states"]

        return grab

    wanted = sorted({i for s in starts for i in (s, s + m)})
    handles = [blocks[i].register_forward_pre_hook(hook(i), with_kwargs=True) for i in wanted]
    device = next(model.parameters()).device
    backbone = getattr(model, "base_model", model)
    sums = torch.zeros(len(starts), dtype=torch.float64)
    count = positions = 0
    was = model.training
    model.eval()
    try:
        for _, bx, bk in _batches(inputs, scored, 0, len(inputs), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(bx)).to(device)
            keep = torch.from_numpy(np.ascontiguousarray(bk)).to(device)
            states.clear()
            backbone(input_ids=x, attention_mask=keep.long())
            for j, s in enumerate(starts):
                sums[j] += angular_distance(states[s], states[s + m])[keep].double().sum().cpu()
            count += int(keep.sum())
            positions += x.numel()
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if not count:
        raise UserError("--sample: no scored tokens in the sample")
    return {s: float(sums[j] / count) for j, s in enumerate(starts)}, positions


def shown_worse(diffs: np.ndarray, alpha: float) -> bool:
    """A one-sided paired t-test over windows: is the mean of `diffs` (a candidate's per-window loss minus the
    leader's, the same windows) above 0 at level `alpha`? Never on fewer than `MIN_WINDOWS` windows, nor at
    alpha <= 0 (no test: nothing is dropped)."""
    d = np.asarray(diffs, dtype=np.float64)
    w = len(d)
    if alpha <= 0 or w < MIN_WINDOWS:
        return False
    crit = float(student_t.ppf(1.0 - alpha, w - 1))
    return bool(d.mean() - crit * d.std(ddof=1) / math.sqrt(w) > 0)


@dataclass
class Race:
    """What `race` measured: per candidate, the mean token loss over the windows it was evaluated on (all
    survivors share the same windows), the windows and scored tokens it saw, the chosen name, and per round the
    windows seen so far and who was dropped."""

    losses: dict[str, float]
    windows: dict[str, int]
    tokens: dict[str, int]
    chosen: str
    rounds: list[dict] = field(default_factory=list)
    beaten_by: dict[str, tuple[str, float]] = field(default_factory=dict)  # dropped -> (leader, its loss there)


def race(
    names: list[str],
    n_windows: int,
    window_losses: Callable[[str, int, int], tuple[np.ndarray, np.ndarray]],
    first_windows: int = 4,
    alpha: float = 0.01,
) -> Race:
    """Evaluate candidates on growing prefixes of the sample's windows (first_windows, then doubling) and drop a
    candidate as soon as it is shown worse than the current leader: a one-sided paired t-test over windows
    (unit = one window, whose tokens are correlated) of its per-window mean loss minus the leader's, at level
    `alpha` (the racing of Maron & Moore 1994 / successive halving, with a paired test). The test is repeated
    every round against the current leader with no multiplicity correction, so `alpha` is the level of each
    test, not the chance over the whole race of dropping the cut that would have won; no test is made on fewer
    than `MIN_WINDOWS` windows. Stops when one
    candidate is left or every window is used; the lowest mean loss among the survivors wins (ties: the
    earlier name). alpha = 0: no test, every candidate sees every window (exhaustive).

    window_losses(name, a, b) -> (sums (b - a,), counts (b - a,)): windows a..b's summed token loss and scored
    token counts under candidate `name` (the same counts for every candidate: the same windows)."""
    if not names:
        raise ValueError("race: no candidates")
    sums: dict[str, list] = {n: [] for n in names}
    counts: dict[str, list] = {n: [] for n in names}
    active, rounds, beaten = list(names), [], {}
    lo, hi = 0, n_windows if alpha <= 0 else min(n_windows, max(1, first_windows))

    def mean(n: str) -> float:
        return float(np.sum(sums[n]) / max(1, np.sum(counts[n])))

    while True:
        for n in active:
            s, c = window_losses(n, lo, hi)
            sums[n].extend(np.asarray(s, dtype=np.float64).tolist())
            counts[n].extend(np.asarray(c, dtype=np.int64).tolist())
        leader = min(active, key=lambda n: (mean(n), names.index(n)))
        dropped = []
        if alpha > 0 and hi < n_windows:
            c = np.asarray(counts[leader], dtype=np.float64)
            used = c > 0
            w = int(used.sum())
            if w >= MIN_WINDOWS:
                for n in active:
                    if n == leader:
                        continue
                    d = (np.asarray(sums[n])[used] - np.asarray(sums[leader])[used]) / c[used]
                    if shown_worse(d, alpha):
                        dropped.append(n)
        rounds.append({"windows": hi, "leader": leader, "dropped": dropped})
        beaten.update({n: (leader, mean(leader)) for n in dropped})
        active = [n for n in active if n not in dropped]
        if hi >= n_windows or len(active) == 1:
            break
        lo, hi = hi, min(n_windows, 2 * hi)
    chosen = min(active, key=lambda n: (mean(n), names.index(n)))
    return Race(
        losses={n: mean(n) for n in names},
        windows={n: len(sums[n]) for n in names},
        tokens={n: int(np.sum(counts[n])) for n in names},
        chosen=chosen,
        rounds=rounds,
        beaten_by=beaten,
    )


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
    alpha: float = 0.01,
    first_windows: int = 4,
) -> tuple[list[int], dict]:
    """(the n kept blocks, a record of what was measured and chosen) for `rule` (see the module docstring).
    `sample` = (inputs, labels) as `load_sample` gives (masked LM: already masked); not needed for `first`.
    `candidates` (auto): how many removable runs, smallest angular distance first, are evaluated besides `first`
    (named "angular" for the smallest, "remove A-B" for the others), raced over the sample's windows (`race`:
    `alpha`, `first_windows`; alpha = 0 evaluates each on the whole sample).

    The record's `search_flops` is the forward FLOPs the choice spent (positions run x forward FLOPs per token
    of the model run: the reference's backbone for the angular pass, each cut with its head for the race); a
    run started from the written checkpoint is charged them (train/setup_run.py). `chosen_train_flops_per_token`
    is the chosen cut's training FLOPs per token at the sample's seq_len (`chosen_train_seq_len`; fwd + bwd,
    `flops_per_token`), so search_flops / it is the search's cost in training tokens of that cut at that length."""
    if rule not in RULES:
        raise UserError(f"rule: {rule!r} is not a block rule (have: {', '.join(RULES)})")
    first = list(range(n))
    if rule == "first":
        return first, {"rule": "first", "chosen": "first", "search_flops": 0.0}
    if sample is None:
        raise UserError(f"rule: {rule} measures the blocks on a sample of your data; give --sample DATA_DIR")
    from warmstart.models.build import forward_flops_per_token
    from warmstart.models.loss import LossModel

    inputs, labels = sample
    seq_len = int(inputs.shape[1])
    m = k - n
    starts = removable_starts(k, n, keep_last)
    scored = labels != -100 if causal else np.ones(inputs.shape, dtype=bool)
    _, _, blocks = find_blocks(model, k)
    scores, positions = angular_scores(model, blocks, inputs, scored, m, starts, batch_size)
    angular_flops = positions * forward_flops_per_token(model, seq_len, head=False)
    best = min(starts, key=lambda s: (scores[s], s))

    def train_flops_per_token(kept: list[int]) -> float:  # fwd + bwd of the cut (flops_per_token's 6N + attention)
        record["chosen_train_seq_len"] = seq_len  # attention's share of the FLOPs grows with it
        with cut_view(model, k, kept):
            return 3.0 * forward_flops_per_token(model, seq_len)

    record: dict = {
        "rule": rule,
        "sample_tokens": int(scored.sum()),
        "angular": {
            "removed_run_length": m,
            "keep_last": keep_last,
            "tokens": "all scored tokens of each sample window",
            "distance_by_start": {str(s): round(scores[s], 6) for s in starts},
            "removed": [best, best + m - 1],
            "positions": positions,
            "flops": angular_flops,
        },
        "search_flops": angular_flops,
    }
    if rule == "angular":
        record["chosen"] = "angular"
        record["chosen_train_flops_per_token"] = train_flops_per_token(kept_blocks(k, best, m))
        return kept_blocks(k, best, m), record
    ranked = sorted(starts, key=lambda s: (scores[s], s))[: max(1, candidates)]
    cuts = {"first": first, "angular": kept_blocks(k, best, m)}
    cuts.update({f"remove {s}-{s + m - 1}": kept_blocks(k, s, m) for s in ranked[1:]})
    device = next(model.parameters()).device
    loss_model = LossModel(model)
    cost: dict[str, float] = dict.fromkeys(cuts, 0.0)
    runs = labels != -100 if causal else scored  # masked LM: bidirectional, every column is run

    def window_losses(name: str, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        sums, counts = np.zeros(b - a), np.zeros(b - a, dtype=np.int64)
        was = model.training
        model.eval()
        try:
            with torch.no_grad(), cut_view(model, k, cuts[name]):
                fpt = forward_flops_per_token(model, seq_len)
                for i, bx, _ in _batches(inputs, runs, a, b, batch_size):
                    x = torch.from_numpy(np.ascontiguousarray(bx)).to(device)
                    y = torch.from_numpy(np.ascontiguousarray(labels[i : i + len(bx), : bx.shape[1]])).to(device)
                    tok = loss_model(x, y, reduction="none")[0]  # (B, T), 0 where -100
                    sums[i - a : i - a + len(bx)] = tok.double().sum(dim=1).cpu().numpy()
                    counts[i - a : i - a + len(bx)] = (y != -100).sum(dim=1).cpu().numpy()
                    cost[name] += x.numel() * fpt
        finally:
            model.train(was)
        return sums, counts

    alpha = float(alpha) + 0.0  # -0.0 -> 0.0
    result = race(list(cuts), len(inputs), window_losses, first_windows, alpha)
    record["step0_loss"] = {r: round(v, 6) for r, v in result.losses.items()}
    record["evaluated"] = {r: {"windows": result.windows[r], "tokens": result.tokens[r]} for r in cuts}
    for r, (leader, loss) in result.beaten_by.items():  # what it lost to, on the same windows
        record["evaluated"][r].update({"dropped_for": leader, "leader_loss": round(loss, 6)})
    record["race"] = {"alpha": alpha, "first_windows": first_windows, "windows": len(inputs),
                      "rounds": result.rounds}
    record["candidate_flops"] = cost
    record["search_flops"] = angular_flops + sum(cost.values())
    chosen = result.chosen
    notes = []
    if len(inputs) < MIN_WINDOWS:  # a loss over 1-3 windows decides nothing
        lowest = "" if chosen == "first" else f" instead of {chosen}, whose loss was lowest"
        notes.append(f"the sample has {len(inputs)} window{'s' if len(inputs) != 1 else ''}: too few to choose "
                     f"between the cuts (at least {MIN_WINDOWS}); kept first (the default cut){lowest}; raise "
                     "--sample-tokens to decide")
        chosen = "first"
    record["chosen"] = chosen
    record["chosen_train_flops_per_token"] = train_flops_per_token(cuts[chosen])
    if candidates > len(starts):
        runs_word = "run" if len(starts) == 1 else "runs"
        notes.append(f"only {len(starts)} contiguous {runs_word} of {m} of the {k} blocks can be removed (keeping the "
                     f"final {keep_last}), fewer than the {candidates} auto candidates: all were evaluated")
    if MIN_WINDOWS <= len(inputs) < 2 * first_windows:
        notes.append(f"the sample has {len(inputs)} windows: too few to tell close cuts apart; raise --sample-tokens")
    if notes:
        record["note"] = "; ".join(notes)
    return cuts[chosen], record


def describe(record: dict, k: int) -> list[str]:
    """Human lines for a `choose_blocks` record (what `warmstart inherit` prints)."""
    lines = []
    ang = record.get("angular")
    if ang:
        d = ang["distance_by_start"]
        best = min(d, key=lambda s: (d[s], int(s)))
        lines.append(
            f"angular distance of removing {ang['removed_run_length']} contiguous "
            f"block{'s' if ang['removed_run_length'] != 1 else ''} (of {k}, keeping the final "
            f"{ang['keep_last']}), mean over {record['sample_tokens']} sample tokens: "
            + ", ".join(f"{s}-{int(s) + ang['removed_run_length'] - 1}: {v:.4f}" for s, v in d.items())
            + f" -> remove {best}-{int(best) + ang['removed_run_length'] - 1}"
        )
    if "step0_loss" in record:
        seen = record.get("evaluated", {})
        full = record.get("sample_tokens")

        def on(r: str) -> str:
            e = seen.get(r, {})
            t = e.get("tokens")
            if "dropped_for" in e:
                return f" (dropped after {t} tokens, where {e['dropped_for']} had {e['leader_loss']:.4f})"
            return "" if t is None or t == full else f" (on the first {t} tokens)"

        lines.append(
            "step-0 loss on the sample: " + ", ".join(f"{r} {v:.4f}{on(r)}" for r, v in record["step0_loss"].items())
        )
    lines.append(f"rule {record['rule']}: chose {record['chosen']}")
    if record.get("note"):
        lines.append(f"note: {record['note']}")
    if record.get("search_flops"):
        line = f"the search's forward passes: {record['search_flops']:.3g} FLOPs, charged to runs from this cut"
        per = record.get("chosen_train_flops_per_token")
        if per:  # the unit a user plans a budget in: is the search small against the training to come?
            at = record.get("chosen_train_seq_len")
            line += (f" (as much as training the cut on {record['search_flops'] / per:,.0f} tokens"
                     + (f" in {at}-token sequences" if at else "")
                     + "; keep it a small share of your training budget with --sample-tokens)")
        lines.append(line)
    return lines
