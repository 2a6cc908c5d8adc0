"""AdamW with the usual parameter groups: no weight decay on norms, biases and embeddings unless asked."""

from __future__ import annotations

import torch

from warmstart.config import OptimConfig


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    emb_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_emb = id(p) in emb_ids
        is_norm_or_bias = p.ndim < 2
        if (is_emb and not cfg.decay_embeddings) or (is_norm_or_bias and not cfg.decay_norms_and_biases):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float, device: torch.device):
    # fused AdamW runs on CUDA and (torch >= 2.4) on CPU, ~3x faster than foreach on CPU
    fused = cfg.fused if cfg.fused is not None else device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        param_groups(model, cfg), lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None
    )
