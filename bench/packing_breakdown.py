"""Where the packing difference comes from on SmolLM2: per-token losses of the same packed validation windows
(bench/real_packing.py's data, which must exist: run it first) under `stream`, `documents`, and a variant of
`documents` for formats without a BOS in which each document's segment starts at the previous document's end
token (it stands in for the BOS the format lacks), split into targets of documents that start inside the window
and targets of the window's first fragment (a document begun in an earlier window).

    python bench/packing_breakdown.py      # after bench/real_packing.py; writes bench/results/packing-breakdown.json
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from warmstart.data.packing import document_packed, scored
from warmstart.data.shards import open_data_dir
from warmstart.eval.perplexity import val_sequences
from warmstart.models.loss import LossModel
from warmstart.models.packing import DocumentAttention

ck, shards, L, M = (
    "/work/cache/smollm2",
    sys.argv[1] if len(sys.argv) > 1 else "/tmp/ws-real-packing/shards",
    512,
    4096,
)
dom = open_data_dir(shards)["prose"]
fmt = dom.document_format
offs = dom.doc_offsets("val")
win = val_sequences(dom, L, M)
starts = np.arange(len(win)) * L
model = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
lm = LossModel(model)
att = DocumentAttention(model)


def losses(tokens, pos=None):
    out = []
    for i in range(0, len(tokens), 2):
        x = torch.from_numpy(tokens[i : i + 2])
        y = x[:, 1:]
        kw = att.kwargs(torch.from_numpy(pos[i : i + 2, :-1])) if pos is not None else {"use_cache": False}
        with torch.no_grad():
            out.append(lm(x[:, :-1], y, reduction="none", **kw)[0].numpy())
    return np.concatenate(out)


stream = losses(win)
tok_d, pos_d = document_packed(win, starts, offs, fmt.prefix)
docs = losses(tok_d, pos_d)
keep = scored(pos_d, len(fmt.prefix))
# alternative: segments start at the previous document's end token (suffix), which stands in as the prefix
k = len(fmt.suffix)
alt_offs = np.concatenate([[0], offs[1:-1] - k, offs[-1:]])
tok_a, pos_a = document_packed(win, starts, alt_offs, fmt.suffix)
alt = losses(tok_a, pos_a)
# which targets belong to the window's first fragment (a document begun in an earlier window)
absolute = starts[:, None] + np.arange(1, L + 1)[None]
doc_start = offs[np.searchsorted(offs, absolute, side="right") - 1]
frag = doc_start < starts[:, None]
res = {}
for name, sel in {
    "all scored by documents": keep,
    "documents starting in the window": keep & ~frag,
    "first fragment of a window": keep & frag,
}.items():
    res[name] = {
        "targets": int(sel.sum()),
        "stream": float(stream[sel].mean()),
        "documents": float(docs[sel].mean()),
        "documents, after previous end token": float(alt[sel].mean()),
    }
res["all targets"] = {
    "targets": int(keep.size),
    "stream": float(stream.mean()),
    "documents(scored only)": float(docs[keep].mean()),
    "documents, after previous end token (all targets)": float(alt.mean()),
}
res["command"] = "python " + " ".join(sys.argv)
print(json.dumps(res, indent=1))
out = Path(__file__).resolve().parent / "results" / "packing-breakdown.json"
out.write_text(json.dumps(res, indent=1) + "\n")
