"""The blockwise loss equals the full-logits cross-entropy (loss and every gradient) for each head form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

from warmstart.errors import UserError
from warmstart.models.loss import IGNORE, LossModel, linear_cross_entropy

V = 300
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
FAMILIES = {
    "gpt2-tied": ("gpt2", {"n_embd": 32, "n_layer": 2, "n_head": 4, "tie_word_embeddings": True}),
    "neox-untied": ("gpt_neox", {**SMALL, "tie_word_embeddings": False}),
    "llama-tied": ("llama", {**SMALL, "num_key_value_heads": 2, "tie_word_embeddings": True}),
    "llama-untied": ("llama", {**SMALL, "num_key_value_heads": 2, "tie_word_embeddings": False}),
    "qwen2": ("qwen2", {**SMALL, "num_key_value_heads": 2}),
    "opt": ("opt", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 64,
                    "word_embed_proj_dim": 32}),
    "gemma2-softcap": ("gemma2", {**SMALL, "num_key_value_heads": 2, "head_dim": 8,
                                  "final_logit_softcapping": 0.5, "sliding_window": 8}),
    "gemma3-softcap": ("gemma3_text", {**SMALL, "num_key_value_heads": 2, "head_dim": 8,
                                       "final_logit_softcapping": 0.5, "sliding_window": 8}),
    "cohere-scale": ("cohere", {**SMALL, "num_key_value_heads": 2, "logit_scale": 0.3}),
    "granite-scale": ("granite", {**SMALL, "num_key_value_heads": 2, "logits_scaling": 4.0}),
    "bert-mlm": ("bert", SMALL),
    "roberta-mlm": ("roberta", {**SMALL, "pad_token_id": 1}),
}
MASKED = {"bert", "roberta"}


def _model(family: str, kw: dict) -> torch.nn.Module:
    cfg = AutoConfig.for_model(family, vocab_size=V, **kw)
    torch.manual_seed(0)
    cls = AutoModelForMaskedLM if family in MASKED else AutoModelForCausalLM
    model = cls.from_config(cfg)
    with torch.no_grad():  # weights big enough that soft-capping and scaling change the loss a lot
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(8.0)
    return model


def _batch(masked: bool):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(5, V, (3, 17), generator=g)
    y = torch.randint(0, V, (3, 17), generator=g)
    drop = torch.rand(3, 17, generator=g) < (0.8 if masked else 0.2)
    return x, torch.where(drop, torch.full_like(y, IGNORE), y)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_loss_and_gradients_equal_the_full_logits(name):
    family, kw = FAMILIES[name]
    model = _model(family, kw)
    model.eval()  # dropout off: both passes see the same network (gradients flow in eval mode too)
    x, y = _batch(family in MASKED)
    logits = model(input_ids=x).logits.float()
    ref = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")
    ref.backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    loss, n = LossModel(model, rows=5)(x, y)  # 5 rows per block: several blocks and a ragged last one
    assert int(n) == int((y != IGNORE).sum())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys()
    gmax = max(g.abs().max().item() for g in ref_grads.values())
    for k, g in grads.items():  # (some, like attention key biases, are zero up to rounding: atol from the largest)
        assert torch.allclose(g, ref_grads[k], rtol=1e-3, atol=1e-5 * gmax), k
    per_token, _ = LossModel(model, rows=7)(x, y, reduction="none")
    full = F.cross_entropy(logits.detach().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="none")
    assert torch.allclose(per_token.flatten(), full, rtol=1e-5, atol=1e-5)


def test_softcap_and_scale_actually_matter():
    """The families above would not pass by accident: without soft-capping the loss is far from the model's."""
    family, kw = FAMILIES["gemma2-softcap"]
    model = _model(family, kw)
    x, y = _batch(False)
    lm = LossModel(model)
    with torch.no_grad():
        capped = lm(x, y)[0].item()
        lm.softcap = None
        plain = lm(x, y)[0].item()
    assert abs(capped - plain) > 0.02 * abs(capped)


def test_bias_blocks_and_reductions_of_the_function():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(23, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(41, 16, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(41, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 41, (23,), generator=g)
    for softcap in (None, 2.0):
        z = F.linear(h, w, b) * 0.7
        z = torch.tanh(z / softcap) * softcap if softcap else z
        ref = F.cross_entropy(z, y, reduction="none")
        want = torch.autograd.grad(ref.sum() * 0.3, (h, w, b))
        loss = linear_cross_entropy(h, w, y, b, scale=0.7, softcap=softcap, rows=4)
        got = torch.autograd.grad(loss * 0.3, (h, w, b))
        assert loss.item() == pytest.approx(ref.sum().item(), rel=1e-12)
        for a, e in zip(got, want, strict=True):
            assert torch.allclose(a, e, rtol=1e-10, atol=1e-12)
        per_token = linear_cross_entropy(h, w, y, b, 0.7, softcap, rows=6, reduction="none")
        assert torch.allclose(per_token.double(), ref, atol=1e-5)


def test_unsupported_head_is_refused_in_one_line():
    from transformers import LlamaForCausalLM

    class Doubled(LlamaForCausalLM):  # a family that post-processes its logits in a way LossModel does not know
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

    family, kw = FAMILIES["llama-tied"]
    model = Doubled(AutoConfig.for_model(family, vocab_size=V, **kw))
    with pytest.raises(UserError, match="output head does something"):
        LossModel(model)


def test_plain_logits_are_unchanged_and_the_loss_runs_through_a_wrapper():
    """Outside a loss call the output layer is the plain layer; a loss call may run the forward through any
    module that calls the model (here a wrapper standing in for DDP / torch.compile)."""
    family, kw = FAMILIES["gemma2-softcap"]
    model = _model(family, kw).eval()
    x, y = _batch(False)
    before = model(input_ids=x).logits
    lm = LossModel(model)
    assert torch.equal(model(input_ids=x).logits, before)

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, **kw):
            return self.m(**kw)

    direct, n = lm(x, y)
    wrapped, n2 = lm(x, y, runner=Wrapper(model))
    assert torch.equal(direct, wrapped) and int(n) == int(n2)
    again = LossModel(model)  # taking a model over twice is allowed; the newest LossModel serves it
    assert torch.equal(again(x, y)[0], direct)
