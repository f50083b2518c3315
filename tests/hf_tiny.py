"""Tiny randomly initialised Hugging Face models built from configs (no download), saved to disk."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

VOCAB = 97

# the shared sizes of the NeoX and Llama variants (Llama: 2 layers unless a variant says otherwise)
NEOX = dict(model_type="gpt_neox", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=64)  # fmt: skip
LLAMA = dict(model_type="llama", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=96, max_position_embeddings=64)  # fmt: skip

TINY_CONFIGS: dict[str, dict] = {
    "gpt2": dict(model_type="gpt2", vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=64),
    "gptj": dict(
        model_type="gptj", vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=64, rotary_dim=8
    ),
    "neox_parallel": dict(NEOX, rotary_pct=0.5, use_parallel_residual=True),
    "neox_sequential": dict(NEOX, rotary_pct=0.25, use_parallel_residual=False),
    "llama_gqa_untied": dict(LLAMA, num_hidden_layers=3, num_key_value_heads=2, tie_word_embeddings=False),
    "llama_tied": dict(LLAMA, num_key_value_heads=4, tie_word_embeddings=True, rope_theta=500.0),
    "llama3_scaled": dict(
        LLAMA,
        num_key_value_heads=1,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
}


def build_hf_model(name: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A float32 HF causal LM with random weights (biases and norms randomised too)."""
    fields = dict(TINY_CONFIGS[name])
    config = transformers.AutoConfig.for_model(**fields)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or "norm" in pname or "ln_" in pname:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


WORDS = ["the", "eiffel", "tower", "is", "located", "in", "city", "of", "paris", "rome", "france",
    "capital", "mother", "tongue", "danielle", "darrieux", "french", "english", "language", "a", "an",
    "and", "to", "at", "on", "for", "with", "by", "from", "as", "was"]  # fmt: skip


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over `VOCAB` ids (`WORDS`, then `w<i>` fillers), id 0 = `<unk>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    while len(vocab) < VOCAB:
        vocab[f"w{len(vocab)}"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<unk>")


def save_tiny(name: str, directory: Path, seed: int = 0, **save_kwargs) -> transformers.PreTrainedModel:
    """Save a tiny model (and the tiny word-level tokenizer) to `directory`."""
    model = build_hf_model(name, seed)
    model.save_pretrained(str(directory), **save_kwargs)
    tiny_tokenizer().save_pretrained(str(directory))
    return model
