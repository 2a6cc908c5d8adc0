"""How a Hugging Face model is told where documents start in a packed window (`data.packing: documents`).

Two routes, chosen per model by a check against the model itself (one forward of 8 tokens, like LossModel's):

- `positions`: the window's position ids alone. Transformers >= 4.56 reads position ids that restart at 0 as
  packed sequences when no attention mask is passed (`masking_utils.find_packed_sequence_indices`): block-causal
  masks for eager / SDPA / FlexAttention, sliding windows kept inside each document (Mistral, Qwen2, Gemma 3),
  and flash-attention's variable-length kernel on GPU (`attn_implementation="flash_attention_2"`), no T x T mask.
  GPT-2, GPT-NeoX, LLaMA, Mistral, Qwen2 and Gemma 3 take this route.
- `mask`: the position ids plus an explicit 4-D block-causal mask, for a model whose own mask ignores its position
  ids (OPT in transformers 5.x: its learned positions follow the ids, its causal mask does not). Only for full
  attention (no sliding window: a 4-D mask would replace it) with the eager or SDPA kernels.

A model on which neither route keeps a document's logits independent of the document before it is refused in
one line naming `data.packing: stream` as the way out; nothing is ever silently packed across documents.
"""

from __future__ import annotations

import torch

from warmstart.errors import UserError

_DOC_A, _DOC_B = 3, 5  # the check's two documents, packed into one 8-token window


def segments(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document index of every token: a new document wherever the position id does not grow by one (the
    rule transformers uses)."""
    first = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 1, T, T) mask: query t sees key s when s <= t and both are in the same document. Boolean (True:
    attend) when `dtype` is None, else additive (0 or the dtype's minimum) for eager attention."""
    seg = segments(position_ids)
    t = position_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )


def _sliding(config) -> bool:
    if getattr(config, "use_sliding_window", True) is False:
        return False
    types = getattr(config, "layer_types", None) or []
    return bool(getattr(config, "sliding_window", None)) or any("sliding" in str(t) for t in types)


class DocumentAttention:
    """The forward arguments that make `model` attend within documents only.

    DocumentAttention(model) checks the routes (see the module docstring) and keeps the first that works; raises
    UserError when none does. `kwargs(position_ids (B, T))` -> the keyword arguments for the model's forward.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        name = type(model).__name__
        self.attn = getattr(model.config, "_attn_implementation", None) or "eager"
        routes = ["positions"]
        if not _sliding(model.config) and self.attn in ("eager", "sdpa"):
            routes.append("mask")
        self.route = next((r for r in routes if self._works(r)), None)
        if self.route is None:
            why = (
                " (a sliding-window model whose mask ignores position ids)" if _sliding(model.config) else ""
            )
            raise UserError(
                f"data.packing: documents cannot keep attention inside each document for {name} "
                f"(attention {self.attn}){why}; set data.packing: stream to pack as a plain token stream"
            )

    def kwargs(self, position_ids: torch.Tensor) -> dict:
        if self.route == "positions":  # transformers only reads packing from position ids without a KV cache
            return {"position_ids": position_ids, "use_cache": False}
        dtype = None if self.attn == "sdpa" else next(self.model.parameters()).dtype
        return {
            "position_ids": position_ids,
            "attention_mask": block_causal_mask(position_ids, dtype),
            "use_cache": False,
        }

    @torch.no_grad()
    def _works(self, route: str) -> bool:
        """Document B's logits packed after document A equal B's logits alone, and do not move when A changes."""
        self.route = route
        was = self.model.training
        self.model.eval()
        try:
            dev = self.model.get_input_embeddings().weight.device
            vocab = self.model.get_input_embeddings().weight.shape[0]
            ids = (torch.arange(_DOC_A + _DOC_B, device=dev) * 7919 + 11) % vocab
            other = ids.clone()
            other[:_DOC_A] = (other[:_DOC_A] * 31 + 3) % vocab
            pos = torch.cat([torch.arange(_DOC_A), torch.arange(_DOC_B)]).to(dev)[None]
            packed = [
                self.model(input_ids=x[None], **self.kwargs(pos)).logits[0, _DOC_A:].float()
                for x in (ids, other)
            ]
            alone = self.model(input_ids=ids[None, _DOC_A:], use_cache=False).logits[0].float()
        except (RuntimeError, ValueError, TypeError):  # a model that rejects the arguments: this route fails
            return False
        finally:
            self.model.train(was)
        tol = 2e-2 if next(self.model.parameters()).dtype in (torch.float16, torch.bfloat16) else 1e-4
        tol *= max(1.0, alone.abs().max().item())
        return all(torch.allclose(p, alone, rtol=0.0, atol=tol) for p in packed)
