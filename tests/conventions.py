"""Tiny tokenizers built here that imitate each family's special-token convention (no download).

- llama: `<s>` BOS added by its template, EOS `</s>` (Llama-2 / Mistral style)
- gemma: `<bos>` added by its template, EOS `<eos>`, turn tokens `<start_of_turn>` / `<end_of_turn>`
- gpt2: no template, `<|endoftext|>` is BOS, EOS and UNK (GPT-2 / Pythia)
- qwen: no template, EOS `<|im_end|>` (a chat-turn end), document token `<|endoftext|>`, a chat template
- opt: `</s>` is BOS and EOS and its template puts it first (OPT)
- bert: `[CLS] text [SEP]` template (masked LMs)
"""

from __future__ import annotations

from pathlib import Path

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "Language models predict the next token given the previous ones.",
    "Continual pre-training re-warms the learning rate; replay mixes in old data.",
] * 10

QWEN_CHAT = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
)

CONVENTIONS: dict[str, dict] = {
    "llama": {
        "specials": ["<unk>", "<s>", "</s>"],
        "kwargs": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "template": "<s>",
        "expect_prefix": ["<s>"],
        "expect_suffix": ["</s>"],
    },
    "gemma": {
        "specials": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        "kwargs": {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"},
        "template": "<bos>",
        "expect_prefix": ["<bos>"],
        "expect_suffix": ["<eos>"],
    },
    "gpt2": {
        "specials": ["<|endoftext|>"],
        "kwargs": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
        "template": None,
        "expect_prefix": [],
        "expect_suffix": ["<|endoftext|>"],
    },
    "qwen": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "kwargs": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "template": None,
        "chat_template": QWEN_CHAT,
        "expect_prefix": [],
        "expect_suffix": ["<|endoftext|>"],
    },
    "opt": {
        "specials": ["<pad>", "</s>", "<unk>"],
        "kwargs": {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
        "template": "</s>",
        "expect_prefix": ["</s>"],
        "expect_suffix": ["</s>"],
    },
    "bert": {
        "specials": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        "kwargs": {
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "unk_token": "[UNK]",
            "pad_token": "[PAD]",
            "mask_token": "[MASK]",
        },
        "template": "bert",
        "expect_prefix": ["[CLS]"],
        "expect_suffix": ["[SEP]"],
    },
}


def build_tokenizer(convention: str, out: Path, template: bool = True) -> Path:
    """A byte-level BPE of ~400 tokens with `convention`'s specials and template, saved to `out`.

    `template=False` saves the same vocabulary without the template (same vocab hash, no BOS added)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = CONVENTIONS[convention]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=spec["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS, trainer=trainer)
    if template and spec["template"] == "bert":
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
        )
    elif template and spec["template"]:
        b = spec["template"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, tok.token_to_id(b))]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **spec["kwargs"])
    if spec.get("chat_template"):
        fast.chat_template = spec["chat_template"]
    fast.save_pretrained(str(out))
    return out
