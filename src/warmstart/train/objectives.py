"""What the model learns from a (seq_len + 1)-token window: next tokens (causal) or masked tokens (BERT-style).

Masking noise comes from a generator seeded by (seed, step) over the whole global batch, then sliced per process
and micro-batch: a resumed run and a data-parallel run mask exactly the positions an uninterrupted single-process
run masks.
"""

from __future__ import annotations

import numpy as np
import torch

from warmstart.models.loss import IGNORE
from warmstart.runtime.distributed import Dist, all_reduce_sum

__all__ = ["IGNORE", "Objective", "eval_pairs"]


def _generator(*key: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([abs(int(k)) for k in key]).generate_state(1)[0]))
    return g


class Objective:
    """Turns token windows into (inputs, labels); labels are IGNORE where no loss is taken.

    Masked LM (Devlin et al. 2019, sec. 3.1): 15% of non-special positions are predicted; of those 80% become
    [MASK], 10% a random token, 10% stay. The random token is drawn from the tokenizer's ids (`len(tokenizer)`,
    as Hugging Face's DataCollatorForLanguageModeling), never from an embedding table's padding rows, which are
    no token at all (with 576 rows for 512 tokens, 10.9% of the draws were such rows).
    """

    def __init__(self, kind: str, tokenizer=None, seed: int = 0, mask_prob: float = 0.15, packing: str = "stream"):
        self.kind = kind
        self.packing = packing if kind == "causal" else "stream"  # documents: windows carry position ids
        self.seed = seed
        self.mask_prob = mask_prob
        self.vocab_size = 0
        if kind == "masked":
            self.vocab_size = len(tokenizer)
            self.mask_id = int(tokenizer.mask_token_id)
            self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    def noise(self, key: tuple[int, ...], shape: tuple[int, int]) -> tuple[torch.Tensor, ...] | None:
        """Random draws for a whole global batch (masked objective only)."""
        if self.kind != "masked":
            return None
        g = _generator(self.seed, *key)
        return (torch.rand(shape, generator=g), torch.rand(shape, generator=g),
                torch.randint(self.vocab_size, shape, generator=g))

    def split(self, x: torch.Tensor, noise: tuple[torch.Tensor, ...] | None, rows: slice | None = None):
        """(inputs, labels) for windows `x`; `rows` picks this slice's rows out of the global-batch noise.
        Documents-packed windows come as (tokens, positions, scored) and give (inputs, labels, position ids)."""
        if isinstance(x, tuple):
            tokens, positions, keep = x
            return tokens[:, :-1], torch.where(keep, tokens[:, 1:], IGNORE), positions[:, :-1]
        if self.kind == "causal":
            return x[:, :-1], x[:, 1:]
        seq = x[:, :-1]
        pick, how, rand = (n[rows] if rows is not None else n for n in noise)
        chosen = (pick < self.mask_prob) & ~torch.isin(seq.cpu(), self.special)
        chosen = chosen.to(seq.device)
        how, rand = how.to(seq.device), rand.to(seq.device)
        labels = torch.where(chosen, seq, torch.full_like(seq, IGNORE))
        inputs = torch.where(chosen & (how < 0.8), torch.full_like(seq, self.mask_id), seq)  # 80%: [MASK]
        inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), rand, inputs)  # 10%: random token, 10%: kept
        return inputs, labels

    def loss_divisor(self, labels: list[torch.Tensor], d: Dist) -> float | None:
        """What each micro-batch's summed loss is divided by before backward; None: its own mean / accumulation.

        Causal windows of the stream all carry the same number of targets, so the mean of micro-batch means is
        the global token mean. Masked LM, and documents-packed windows (whose documents' first tokens are not
        scored, data/packing.py), score a varying number of tokens per micro-batch: there the sum is divided by
        the predicted tokens of the whole global batch (every micro-batch of every process, `labels` being this
        process's), times the process count that data-parallel gradient averaging divides by again — so the
        step is the same for any micro-batch size and process count.
        """
        if self.kind == "causal" and self.packing == "stream":
            return None
        count = torch.tensor(float(sum(int((y != IGNORE).sum()) for y in labels)), dtype=torch.float64,
                             device=labels[0].device if labels else None)
        return max(float(all_reduce_sum(count, d).item()), 1.0) / d.world


def eval_pairs(windows: np.ndarray, objective: Objective, key: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (inputs, labels) for a validation set: the same masked positions at every evaluation."""
    x = torch.from_numpy(windows)
    noise = objective.noise((2**31 - 1, key), (x.shape[0], x.shape[1] - 1))
    inputs, labels = objective.split(x, noise)
    return inputs.numpy(), labels.numpy()
