"""A tiny random Llama decoder (seconds to build and run) for the language-model tests."""

from __future__ import annotations

import torch


def tiny_llama(*, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 64, vocab: int = 97, seed: int = 0, positions: int = 128):
    """A ``LlamaForCausalLM`` with grouped KV heads and tied embeddings, like SmolLM2's (eval)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
        max_position_embeddings=positions, tie_word_embeddings=True,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config).eval()


def token_batch(n: int = 4, length: int = 16, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=generator)
