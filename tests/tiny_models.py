"""Tiny random models of every supported family, built from configs in milliseconds with no network."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

VOCAB = 128
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)


def _llama_like(config_cls, model_cls, **extra):
    return model_cls(config_cls(**_COMMON, num_key_value_heads=2, max_position_embeddings=256, **extra))


BUILDERS = {
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=0)
    ),
    "llama": lambda: _llama_like(LlamaConfig, LlamaForCausalLM),
    "mistral": lambda: _llama_like(MistralConfig, MistralForCausalLM),
    "qwen2": lambda: _llama_like(Qwen2Config, Qwen2ForCausalLM),
    "bert": lambda: BertModel(BertConfig(**_COMMON, max_position_embeddings=256)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**_COMMON, max_position_embeddings=256)),
    "mixtral": lambda: _llama_like(MixtralConfig, MixtralForCausalLM, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": lambda: _llama_like(
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
    ),
}
FAMILIES = list(BUILDERS)
DENSE = ["gpt2", "llama", "mistral", "qwen2", "bert", "gpt_neox"]


def tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = BUILDERS[family]()
    model.eval()
    return model


class CharTokenizer:
    """A tokenizer stand-in for tiny models: one token per character, called like a HF tokenizer."""

    def __call__(self, text, return_tensors="pt"):
        ids = torch.tensor([[ord(c) % VOCAB for c in text]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def decode(self, ids, **kwargs):
        return "".join(chr(i) if 32 <= i < 127 else "?" for i in ids)
