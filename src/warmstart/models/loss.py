"""Token cross-entropy from a model's final hidden states and its output embedding, a block of tokens at a time.

A language model's loss is usually taken from the full logits (batch x sequence x vocabulary, in float32): 17 GB
for 16 x 1024 tokens of a 262,144-token vocabulary. Here the backbone runs as usual, and the output layer and the
cross-entropy run over blocks of token rows: each block's logits exist only while that block's loss and gradient
are computed (the fused linear + cross-entropy of Liger-Kernel / Wijmans et al. 2024, "Cut Your Losses in
Large-Vocabulary Language Models", done in plain PyTorch). The gradients of the hidden states and of the output
weight are formed in the forward pass, block by block, so a training step costs the same three matmuls as the
full-logits path and no recomputation.

`LossModel(hf_model)` is what the training loop, evaluation and quality scoring call: it takes over the model's
output layer, so the model's own forward (through DDP, FSDP2 or torch.compile alike) hands the final hidden
states to the blockwise loss instead of producing logits. Only positions whose label is not -100 get logits at
all (masked LM: about 15% of the tokens). Heads handled: a linear output layer, tied or untied, with or without
bias, after whatever the model does before it (the BERT / RoBERTa MLM transform included); Gemma 2/3 final logit
soft-capping; Cohere's `logit_scale` and Granite's `logits_scaling`. Anything else the model does to its logits
is caught once, against the model's own logits, and refused in one line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from warmstart.errors import UserError

IGNORE = -100
BLOCK_BYTES = 256 * 2**20  # float32 logits of one block of token rows (256 MiB: 256 rows of a 262k vocabulary)


def block_rows(vocab: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Token rows per block so that one block's float32 logits take about `block_bytes`."""
    return max(1, block_bytes // (4 * vocab))


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `post(h @ W.T + b)` against `y`; forward also forms dL/dh, dL/dW, dL/db per block."""

    @staticmethod
    def forward(ctx, h, weight, bias, y, scale, softcap, rows, cdt):
        loss, grads = _blocks(h, weight, bias, y, scale, softcap, rows, cdt, want_grad=True)
        ctx.grads = grads
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy: backward twice through one loss is not supported")
        dh, dw, db = ctx.grads
        ctx.grads = None  # scaled in place: each gradient exists once
        dh, dw, db = (t.mul_(grad_out.to(t.dtype)) if t is not None else None for t in (dh, dw, db))
        return dh, dw, db, None, None, None, None, None


def _blocks(h, weight, bias, y, scale, softcap, rows, cdt, want_grad=False, per_token=False):
    """The block loop. h: (N, d); weight: (V, d); bias: (V,) or None; y: (N,) all valid. Float32 (or 64) loss."""
    n = h.shape[0]
    acc = torch.promote_types(cdt, torch.float32)  # float32, or float64 for float64 inputs
    hc = h.to(cdt)
    wc = weight.to(cdt)
    total = torch.zeros((), dtype=acc, device=h.device)
    out = torch.empty(n, dtype=acc, device=h.device) if per_token else None
    need_h = want_grad and h.requires_grad
    need_w = want_grad and weight.requires_grad
    need_b = want_grad and bias is not None and bias.requires_grad
    dh = torch.empty_like(h) if need_h else None
    dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    db = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
    for start in range(0, n, rows):
        hb, yb = hc[start : start + rows], y[start : start + rows]
        z = (hb @ wc.T).to(acc)  # the block's logits: the only (rows, V) buffer, updated in place from here on
        if bias is not None:
            z += bias.to(acc)
        if scale != 1.0:
            z *= scale
        t = None
        if softcap is not None:
            z.div_(softcap).tanh_()
            t = z.clone() if (need_h or need_w or need_b) else None  # tanh, kept for the gradient
            z.mul_(softcap)
        target = z.gather(1, yb[:, None]).squeeze(1)
        top = z.amax(dim=1)
        z.sub_(top[:, None]).exp_()
        total_exp = z.sum(dim=1)
        losses = top + total_exp.log() - target  # log-sum-exp minus the target's logit
        if per_token:
            out[start : start + rows] = losses
        total += losses.sum()
        if not (need_h or need_w or need_b):
            continue
        g = z.div_(total_exp[:, None])  # softmax, in place
        g[torch.arange(len(yb), device=g.device), yb] -= 1.0  # d(sum of losses)/d(logits)
        if t is not None:
            g *= t.mul_(t).neg_().add_(1.0)  # through cap * tanh(z / cap): 1 - tanh^2, in place
            del t
        if scale != 1.0:
            g *= scale
        if need_b:
            db += g.sum(0)
        gc = g.to(cdt)
        if need_h:
            dh[start : start + rows] = (gc @ wc).to(dh.dtype)
        if need_w:
            if gc.dtype == acc:
                dw.addmm_(gc.T, hb)
            else:
                dw += (gc.T @ hb).to(acc)
    if per_token:
        return out
    return total, (dh, dw.to(weight.dtype) if dw is not None else None,
                   db.to(bias.dtype) if db is not None else None)


@torch.compiler.disable  # a Python loop over blocks: torch.compile covers the backbone, not this
def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    y: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float = 1.0,
    softcap: float | None = None,
    rows: int | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Cross-entropy of logits `post(h @ weight.T + bias)` without holding them all, in float32.

    h: (N, d) hidden rows; weight: (V, d); y: (N,) target ids, every one valid (drop -100 rows first); post
    multiplies by `scale` then soft-caps (`softcap * tanh(logits / softcap)`, Gemma 2). Blocks of `rows` token rows
    (default: 256 MiB of float32 logits each; bench/results/blockwise_loss.md). reduction "sum" -> a scalar
    that backpropagates into h, weight and bias (the gradients are formed in the forward pass; backward only
    scales them, so one backward per loss); "none" -> (N,) per-token losses, no gradient. Matmuls run in the autocast dtype when autocast is on.
    """
    dev = h.device.type
    cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    rows = rows or block_rows(weight.shape[0])
    with torch.autocast(dev, enabled=False):
        if reduction == "none":
            with torch.no_grad():
                return _blocks(h, weight, bias, y, scale, softcap, rows, cdt, per_token=True)
        if reduction != "sum":
            raise ValueError(f"reduction: {reduction!r} (have: sum, none)")
        grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias))
        if not grads:
            return _blocks(h, weight, bias, y, scale, softcap, rows, cdt)[0]
        return _LinearCrossEntropy.apply(h, weight, bias, y, scale, softcap, rows, cdt)


# --------------------------------------------------------------------------------------------- the model side
def post_scale(model) -> tuple[float, float | None]:
    cfg = model.config
    scale = 1.0
    if getattr(cfg, "logit_scale", None) is not None:  # Cohere: logits * logit_scale
        scale *= float(cfg.logit_scale)
    if getattr(cfg, "logits_scaling", None) is not None:  # Granite: logits / logits_scaling
        scale /= float(cfg.logits_scaling)
    cap = getattr(cfg, "final_logit_softcapping", None)
    return scale, float(cap) if cap else None


class LossModel:
    """A Hugging Face LM's summed token cross-entropy, taken without the full logits.

    `LossModel(hf_model)` takes over the model's output layer (`get_output_embeddings()`, a Linear): while a loss
    is asked for, that layer receives the final hidden states (after any MLM transform: BERT, RoBERTa), computes
    the blockwise loss from them with its own weight and bias, and hands the model an empty tensor instead of
    logits; otherwise it is the plain layer (`model(x).logits` is unchanged). Because the loss is formed inside
    the model's own forward, the forward can run through DDP, FSDP2 (whose root gathers the head's weight) or
    torch.compile: pass that module as `runner`.

    __call__(input_ids (B, T), labels (B, T) aligned with the inputs (the target of position t is labels[:, t];
    -100: no loss), attention_mask=None, reduction="sum", runner=None, **forward: more keyword arguments for the
    model's forward, e.g. position_ids for packed documents) -> (loss, n): the float32 loss summed over
    the n labelled tokens (a 0-d tensor with gradient), or with reduction="none" the (B, T) per-token losses (0
    where -100). Raises UserError at construction when the head is not a linear layer or the model does
    something to its logits this class does not reproduce (checked once against the model's own logits).
    """

    def __init__(self, model: torch.nn.Module, rows: int | None = None):
        self.model = model
        self.rows = rows
        head = model.get_output_embeddings()
        name = type(model).__name__
        if not isinstance(head, torch.nn.Linear):
            raise UserError(f"model: {name} has no linear output layer; the blockwise loss cannot run on it")
        self.scale, self.softcap = post_scale(model)
        self._request: tuple | None = None
        self._result = None
        prior = head.__dict__.get("forward")
        if isinstance(getattr(prior, "__self__", None), LossModel):  # a model taken over before: take it again
            del head.forward
        head.forward = self._head_forward  # an instance attribute: only this module instance is changed
        self._check_against_full_logits(name)

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def __call__(self, input_ids, labels, attention_mask=None, reduction: str = "sum", runner=None, **forward):
        if reduction not in ("sum", "none"):
            raise ValueError(f"reduction: {reduction!r} (have: sum, none)")
        return self._run(("loss", labels, reduction), input_ids, attention_mask, runner, reduction == "sum", forward)

    def with_head(self, head_fn, input_ids, attention_mask=None, runner=None, **forward):
        """The model's forward with its output layer replaced by `head_fn(hidden (B, T, d), head module)`; returns
        what head_fn returns (a (loss, n) pair backpropagates like `__call__`'s). Distillation (models/distill.py)
        takes the teacher's final hidden states and the student's loss this way, inside each model's own forward.
        `forward`: further keyword arguments of the model's forward (position_ids of packed documents)."""
        return self._run(("fn", head_fn), input_ids, attention_mask, runner, True, forward)

    def _run(self, request, input_ids, attention_mask, runner, is_loss, forward):
        self._request = request
        if attention_mask is not None:
            forward = {**forward, "attention_mask": attention_mask}
        try:
            output = (runner or self.model)(input_ids=input_ids, **forward)
            out = self._result
        finally:
            self._request, self._result = None, None
        if out is None:
            raise RuntimeError(f"{type(self.model).__name__}: the forward did not call its output layer")
        logits = output.logits  # empty: (B, T, 0)
        if is_loss and isinstance(out, tuple) and logits.requires_grad:
            # the backward also passes through the forward's output, so hooks a wrapper put there run (FSDP2's
            # pre-backward hook on the root's output); an empty sum is exactly 0.0: the loss is unchanged
            out = (out[0] + logits.sum().to(out[0].dtype), out[1])
        return out

    @torch.compiler.disable  # data-dependent row selection and a Python block loop: compile covers the backbone
    def _head_forward(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        if self._request is None:
            return F.linear(hidden, head.weight, head.bias)
        kind, *rest = self._request
        if kind == "fn":
            self._result = rest[0](hidden, head)
            return hidden[..., :0]
        if kind == "probe":
            ref = F.linear(hidden, head.weight, head.bias)
            z = ref.float() * self.scale
            if self.softcap is not None:
                z = torch.tanh(z / self.softcap) * self.softcap
            self._result = z
            return ref
        labels, reduction = rest
        h, y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        keep = y != IGNORE
        n = keep.sum()
        every = bool(keep.all())
        if not every:  # only labelled positions get logits
            idx = keep.nonzero().squeeze(1)
            h, y = h.index_select(0, idx), y.index_select(0, idx)
        out = linear_cross_entropy(h, head.weight, y, head.bias, self.scale, self.softcap, self.rows, reduction)
        if reduction == "none":
            if not every:
                out = torch.zeros(labels.numel(), dtype=out.dtype, device=out.device).index_copy_(0, idx, out)
            out = out.view(labels.shape)
        self._result = (out, n)
        return hidden[..., :0]  # what the model's own logit post-processing sees: nothing

    @torch.no_grad()
    def _check_against_full_logits(self, name: str) -> None:
        """The blockwise head must give the model's own logits on a short probe sequence (no randomness used)."""
        was = self.model.training
        self.model.eval()
        head = self.model.get_output_embeddings()
        try:
            x = (torch.arange(6, device=head.weight.device) * 7919 + 5) % head.weight.shape[0]
            self._request = ("probe",)
            ref = self.model(input_ids=x[None]).logits[0].float()
            z = self._result[0]
        finally:
            self._request, self._result = None, None
            self.model.train(was)
        low = head.weight.dtype in (torch.float16, torch.bfloat16)
        tol = (2e-2 if low else 1e-4) * max(1.0, ref.abs().max().item())
        if z.shape != ref.shape or not torch.allclose(z, ref, rtol=0.0, atol=tol):
            raise UserError(
                f"model: {name}'s output head does something this toolkit's blockwise loss does not reproduce "
                "(supported: a linear layer, soft-capping, logit scaling)"
            )
