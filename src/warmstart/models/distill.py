"""Knowledge distillation from a reference model's logits, a block of tokens at a time.

Loss per scored token t (Hinton et al. 2015; forward KL as in NVIDIA's Minitron, Muralidharan et al. 2024):

    alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

z_t, z_s the teacher's and student's logits after each model's own post-processing (logit scale, soft-capping),
T the temperature; the T^2 factor keeps the gradient's size independent of T (Hinton et al. 2015, sec. 2), so
alpha means the same at every T. As with `models/loss.py`, neither model's full logits ever exist: the teacher's
final hidden states are taken from its forward (no gradient), and the student's head turns them and its own hidden
states into both models' logits a block of token rows at a time, forming the student's gradients in the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from warmstart.errors import UserError
from warmstart.models.loss import BLOCK_BYTES, IGNORE, LossModel, block_rows, post_scale

# float32 (rows, V) buffers alive at once in one block: teacher log-probs and probs, student logits, their
# temperature-scaled copy and log-probs, the soft-cap's tanh
DISTILL_BUFFERS = 6


def _post(z: torch.Tensor, bias, scale: float, softcap: float | None, keep_tanh: bool):
    """In place: z (+ bias) * scale, then soft-capped; returns tanh(z / cap) when asked (for the gradient)."""
    if bias is not None:
        z += bias.to(z.dtype)
    if scale != 1.0:
        z *= scale
    if softcap is None:
        return None
    z.div_(softcap).tanh_()
    t = z.clone() if keep_tanh else None
    z.mul_(softcap)
    return t


def _distill_blocks(h, w, b, ht, wt, bt, y, post, tpost, temperature, alpha, rows, cdt, want_grad):
    n = h.shape[0]
    acc = torch.promote_types(cdt, torch.float32)
    hc, wc, htc, wtc = h.to(cdt), w.to(cdt), ht.to(cdt), wt.to(cdt)
    total = torch.zeros((), dtype=acc, device=h.device)
    need_h = want_grad and h.requires_grad
    need_w = want_grad and w.requires_grad
    need_b = want_grad and b is not None and b.requires_grad
    grads = need_h or need_w or need_b
    dh = torch.empty_like(h) if need_h else None
    dw = torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None
    db = torch.zeros(b.shape, dtype=acc, device=b.device) if need_b else None
    tt = float(temperature)
    for start in range(0, n, rows):
        hb, yb = hc[start : start + rows], y[start : start + rows]
        zt = (htc[start : start + rows] @ wtc.T).to(acc)
        _post(zt, bt, *tpost, keep_tanh=False)
        log_pt = F.log_softmax(zt.div_(tt), dim=1)
        del zt
        pt = log_pt.exp()
        z = (hb @ wc.T).to(acc)
        tanh = _post(z, b, *post, keep_tanh=grads)
        log_qs = F.log_softmax(z / tt, dim=1)
        kl = torch.linalg.vecdot(pt, log_pt.sub_(log_qs))  # sum_v p_t (log p_t - log q_s), no further buffer
        del log_pt
        losses = (alpha * tt * tt) * kl
        g = None
        if grads:  # d/dz of alpha T^2 KL = alpha T (softmax(z / T) - p_t)
            g = log_qs.exp_().sub_(pt).mul_(alpha * tt)
        del pt
        if alpha < 1.0:
            lse = torch.logsumexp(z, dim=1)
            losses = losses + (1.0 - alpha) * (lse - z.gather(1, yb[:, None]).squeeze(1))
            if grads:  # d/dz of (1 - alpha) CE = (1 - alpha) (softmax(z) - onehot(y))
                sm = z.sub_(lse[:, None]).exp_()
                sm[torch.arange(len(yb), device=sm.device), yb] -= 1.0
                g.add_(sm, alpha=1.0 - alpha)
        del z
        total += losses.sum()
        if not grads:
            continue
        if tanh is not None:
            g *= tanh.mul_(tanh).neg_().add_(1.0)
        if post[0] != 1.0:
            g *= post[0]
        if need_b:
            db += g.sum(0)
        gc = g.to(cdt)
        if need_h:
            dh[start : start + rows] = (gc @ wc).to(dh.dtype)
        if need_w:
            dw += (gc.T @ hb).to(acc)
    return total, (
        dh,
        dw.to(w.dtype) if dw is not None else None,
        db.to(b.dtype) if db is not None else None,
    )


class _LinearDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, ht, wt, bt, y, post, tpost, temperature, alpha, rows, cdt):
        loss, grads = _distill_blocks(
            h, w, b, ht, wt, bt, y, post, tpost, temperature, alpha, rows, cdt, True
        )
        ctx.grads = grads
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("linear_distill: backward twice through one loss is not supported")
        dh, dw, db = (t.mul_(grad_out.to(t.dtype)) if t is not None else None for t in ctx.grads)
        ctx.grads = None
        return dh, dw, db, *([None] * 10)


@torch.compiler.disable
def linear_distill(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ht: torch.Tensor,
    teacher_weight: torch.Tensor,
    teacher_bias: torch.Tensor | None,
    y: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 1.0,
    post: tuple[float, float | None] = (1.0, None),
    teacher_post: tuple[float, float | None] = (1.0, None),
    rows: int | None = None,
) -> torch.Tensor:
    """Summed distillation loss (module docstring) over N token rows, in float32, without full logits.

    h: (N, d) student hidden rows, weight: (V, d), bias: (V,) or None; ht: (N, d_t) teacher hidden rows (no
    gradient), teacher_weight: (V, d_t); y: (N,) next-token ids (all valid); post / teacher_post: (logit scale,
    soft-cap or None) of each model. Gradients flow into h, weight and bias (formed in the forward pass, block by
    block; one backward per loss). Blocks of `rows` rows (default: DISTILL_BUFFERS float32 (rows, V) buffers
    of 256 MiB together). Matmuls run in the autocast dtype when autocast is on.
    """
    dev = h.device.type
    cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    rows = rows or block_rows(weight.shape[0], BLOCK_BYTES // DISTILL_BUFFERS)
    ht = ht.detach()
    with torch.autocast(dev, enabled=False):
        args = (
            h,
            weight,
            bias,
            ht,
            teacher_weight.detach(),
            None if teacher_bias is None else teacher_bias.detach(),
            y,
        )
        rest = (post, teacher_post, float(temperature), float(alpha), rows, cdt)
        grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias))
        if not grads:
            return _distill_blocks(*args, *rest, False)[0]
        return _LinearDistill.apply(*args, *rest)


def _whole(t: torch.Tensor | None) -> torch.Tensor | None:
    """A sharded (FSDP2 DTensor) parameter gathered whole; a plain tensor as it is."""
    return t.full_tensor() if t is not None and hasattr(t, "full_tensor") else t


class DistillLoss:
    """The training loss of a run with a teacher: callable like `LossModel` (same arguments, same (loss, n)).

    `student` is the run's LossModel; `teacher` the reference (frozen: eval mode, no gradient), `teacher_runner`
    what its forward runs through (the teacher itself, or the same model sharded by FSDP2: its head weight is then
    gathered whole for the student's head). Both forwards are the models' plain `model(input_ids, attention_mask)`.
    Raises UserError when the two vocabularies differ.
    """

    def __init__(
        self,
        student: LossModel,
        teacher: torch.nn.Module,
        temperature: float = 1.0,
        alpha: float = 1.0,
        teacher_runner: torch.nn.Module | None = None,
        teacher_packing=None,
    ):
        teacher.eval().requires_grad_(False)
        self.student = student
        self.teacher = LossModel(teacher)
        self.teacher_runner = teacher_runner
        self.teacher_packing = teacher_packing  # a models.packing.DocumentAttention of the teacher, or None
        self.temperature, self.alpha = float(temperature), float(alpha)
        vs = student.model.get_output_embeddings().weight.shape[0]
        vt = teacher.get_output_embeddings().weight.shape[0]
        if vs != vt:
            raise UserError(
                f"distill.teacher: its vocabulary has {vt} tokens, the student's {vs}; distillation compares "
                "next-token distributions, so both need the same tokenizer"
            )
        self.teacher_post = post_scale(teacher)

    @property
    def model(self) -> torch.nn.Module:
        return self.student.model

    def __call__(self, input_ids, labels, attention_mask=None, reduction: str = "sum", runner=None, **forward):
        """`forward`: the student's further forward arguments (data.packing: documents: its position ids and
        mask); the teacher gets the same documents through its own `teacher_packing`, so it sees what the student
        sees, each document attending only to itself."""
        if reduction != "sum":
            raise ValueError(f"reduction: {reduction!r} (distillation: sum)")
        teacher_forward = forward
        if "position_ids" in forward and self.teacher_packing is not None:
            teacher_forward = self.teacher_packing.kwargs(forward["position_ids"])
        with torch.no_grad():
            hidden_t = self.teacher.with_head(
                lambda h, _head: h, input_ids, attention_mask, self.teacher_runner, **teacher_forward
            )
        thead = self.teacher.model.get_output_embeddings()
        post = (self.student.scale, self.student.softcap)

        def head_loss(hidden, head):
            h, y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
            ht = hidden_t.reshape(-1, hidden_t.shape[-1])
            keep = y != IGNORE
            n = keep.sum()
            if not bool(keep.all()):
                idx = keep.nonzero().squeeze(1)
                h, ht, y = h.index_select(0, idx), ht.index_select(0, idx), y.index_select(0, idx)
            loss = linear_distill(
                h,
                head.weight,
                head.bias,
                ht,
                _whole(thead.weight),
                _whole(thead.bias),
                y,
                self.temperature,
                self.alpha,
                post,
                self.teacher_post,
                self.student.rows,
            )
            return loss, n

        return self.student.with_head(head_loss, input_ids, attention_mask, runner, **forward)
