"""Run under torchrun by test_distributed.py: a model started on the meta device under FSDP from the checkpoint
directory argv[1] holds, on every process, exactly what the plain `from_pretrained` load holds, and reads only
its own shards. Prints one line "meta-start rank R: read B of T bytes" per process when every check passes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from warmstart.models.sharded_load import MetaStart
from warmstart.runtime.distributed import setup, teardown
from warmstart.train.parallelize import parallelize


def main(src: Path) -> None:
    d = setup("cpu")
    try:
        start = MetaStart.plan(AutoModelForCausalLM, AutoConfig.from_pretrained(str(src)), src, torch.float32)
        assert start is not None
        model = parallelize(start.model, d, "fsdp")
        start.materialise(model, d.device)
        model.eval()
        want = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
        wanted = want.state_dict()
        for name, t in model.state_dict().items():
            full = t.full_tensor() if hasattr(t, "full_tensor") else t
            assert full.dtype == torch.float32 and torch.equal(full, wanted[name]), name
        for (name, a), (_, b) in zip(model.named_buffers(), want.named_buffers(), strict=True):
            assert torch.equal(a, b), name
        assert model.lm_head.weight is model.model.embed_tokens.weight  # tied before sharding, tied after
        ids = torch.randint(0, want.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, want(input_ids=ids).logits)
        total = sum(math.prod(start.files.shape(k)) * start.files.dtype(k).itemsize for k in start.files.where)
        print(f"meta-start rank {d.rank}: read {start.files.bytes_read} of {total} bytes", flush=True)
    finally:
        teardown(d)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
