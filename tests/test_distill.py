"""Distillation loss (models/distill.py): equal to the full-logits computation, loss and every gradient; memory
independent of the vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from test_loss import FAMILIES, _model

from warmstart.errors import UserError
from warmstart.models.distill import DistillLoss, linear_distill
from warmstart.models.loss import IGNORE, LossModel

V = 300


def _full(student, teacher, x, y, temperature, alpha):
    """The textbook loss from both models' full logits (Hinton et al. 2015), summed over the scored tokens."""
    zs = student(input_ids=x).logits.float().flatten(0, 1)
    with torch.no_grad():
        zt = teacher(input_ids=x).logits.float().flatten(0, 1)
    keep = y.flatten() != IGNORE
    zs, zt, yy = zs[keep], zt[keep], y.flatten()[keep]
    kl = F.kl_div(
        F.log_softmax(zs / temperature, -1),
        F.log_softmax(zt / temperature, -1),
        log_target=True,
        reduction="sum",
    )
    ce = F.cross_entropy(zs, yy, reduction="sum")
    return alpha * temperature**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize(
    "student_name,teacher_name,temperature,alpha",
    [
        ("llama-tied", "llama-untied", 1.0, 1.0),
        ("llama-untied", "llama-tied", 2.0, 0.3),
        ("gemma2-softcap", "gemma3-softcap", 1.5, 0.5),
        ("gemma3-softcap", "gemma3-softcap", 0.7, 1.0),
        ("qwen2", "llama-untied", 3.0, 0.0),
        ("granite-scale", "cohere-scale", 2.0, 0.6),
    ],
)
def test_loss_and_gradients_equal_the_full_logits(student_name, teacher_name, temperature, alpha):
    student = _model(*FAMILIES[student_name]).eval()
    torch.manual_seed(5)
    teacher = _model(*FAMILIES[teacher_name]).eval()
    with torch.no_grad():  # a teacher that differs from the student (same seed, same family otherwise)
        for p in teacher.parameters():
            p.add_(0.5 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(5, V, (3, 17), generator=g)
    y = torch.where(torch.rand(3, 17, generator=g) < 0.2, IGNORE, torch.randint(0, V, (3, 17), generator=g))
    ref = _full(student, teacher, x, y, temperature, alpha)
    ref.backward()
    want = {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)

    loss, n = DistillLoss(LossModel(student, rows=5), teacher, temperature, alpha)(x, y)
    assert int(n) == int((y != IGNORE).sum())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert ref.item() > 1.0  # the teacher really differs: KL far from 0
    loss.backward()
    got = {k: p.grad for k, p in student.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    assert not any(p.grad is not None for p in teacher.parameters())
    gmax = max(v.abs().max().item() for v in want.values())
    for k, v in got.items():
        assert torch.allclose(v, want[k], rtol=1e-3, atol=1e-5 * gmax), k


def test_the_function_in_float64_with_bias_scale_and_cap():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(23, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(41, 16, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(41, generator=g, dtype=torch.float64, requires_grad=True)
    ht, wt, bt = (
        torch.randn(23, 8, generator=g, dtype=torch.float64),
        torch.randn(41, 8, generator=g, dtype=torch.float64),
        torch.randn(41, generator=g, dtype=torch.float64),
    )
    y = torch.randint(0, 41, (23,), generator=g)
    for cap, tcap, temp, alpha in ((None, None, 1.0, 1.0), (2.0, 3.0, 2.5, 0.4), (1.5, None, 0.5, 0.0)):
        zs = F.linear(h, w, b) * 0.7
        zs = torch.tanh(zs / cap) * cap if cap else zs
        zt = F.linear(ht, wt, bt) * 1.3
        zt = torch.tanh(zt / tcap) * tcap if tcap else zt
        pt = F.softmax(zt / temp, -1)
        kl = (pt * (F.log_softmax(zt / temp, -1) - F.log_softmax(zs / temp, -1))).sum()
        ref = alpha * temp**2 * kl + (1 - alpha) * F.cross_entropy(zs, y, reduction="sum")
        want = torch.autograd.grad(ref * 0.3, (h, w, b))
        loss = linear_distill(h, w, b, ht, wt, bt, y, temp, alpha, (0.7, cap), (1.3, tcap), rows=4)
        got = torch.autograd.grad(loss * 0.3, (h, w, b))
        assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
        for a, e in zip(got, want, strict=True):
            assert torch.allclose(a, e, rtol=1e-10, atol=1e-12)
        with torch.no_grad():
            assert linear_distill(h, w, b, ht, wt, bt, y, temp, alpha, (0.7, cap), (1.3, tcap)).item() == (
                pytest.approx(ref.item(), rel=1e-12)
            )


def test_a_teacher_with_another_vocabulary_is_refused():
    student = _model(*FAMILIES["llama-tied"])
    from transformers import AutoConfig, AutoModelForCausalLM

    family, kw = FAMILIES["llama-untied"]
    teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, vocab_size=V + 1, **kw))
    with pytest.raises(UserError, match="its vocabulary has 301 tokens, the student's 300"):
        DistillLoss(LossModel(student), teacher)


def test_memory_at_a_262k_vocabulary_is_bounded():
    """1024 token rows of a 262,144-token vocabulary: the two models' full float32 logits would take 2 GiB (and
    their softmaxes as much again); the blockwise loss and its gradients stay under a fifth of that above the
    inputs (peak RSS of a fresh process: a few 256 MiB / 6 blocks, the output weight's gradient and copies)."""
    script = textwrap.dedent(
        """
        import json, resource, torch
        from warmstart.models.distill import linear_distill
        torch.manual_seed(0)
        V, N = 262_144, 1024
        h = torch.randn(N, 16, requires_grad=True); w = (0.1 * torch.randn(V, 16)).requires_grad_()
        ht = torch.randn(N, 8); wt = 0.1 * torch.randn(V, 8); y = torch.randint(0, V, (N,))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        loss = linear_distill(h, w, None, ht, wt, None, y, 2.0, 0.5)
        loss.backward()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"above_mb": (peak - base) / 1024, "loss": loss.item()}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    full_logits_mb = 2 * 1024 * 262_144 * 4 / 2**20  # 2048 MB
    assert out["above_mb"] < full_logits_mb / 5, out
    assert out["loss"] > 0
