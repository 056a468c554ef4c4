"""Tiny random models of many families, built from configs in milliseconds with no network.

``FAMILIES`` (3 layers) are the families whose parts are named by hand in ``nbinspect.adapters.FAMILIES``
and which the older tests run everywhere; ``ALL_FAMILIES`` adds one tiny model (2 layers) per family that
transformers ships and that nbinspect must find its way around by structure (tests/test_families.py).
Every model has hidden size 32, a vocabulary of ``VOCAB`` and 4 query heads; families with a choice of
sliding windows, soft-capping, grouped KV heads, MoE layers mixed with dense ones, etc. get small values so
that those paths are exercised by 9-token inputs.
"""

from __future__ import annotations


import torch
import transformers

VOCAB = 128
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)
# bos/eos/pad inside the small vocabulary (some configs default to ids of the real, larger one).
_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _llama_like(config_cls, model_cls, **extra):
    return model_cls(config_cls(**_COMMON, num_key_value_heads=2, max_position_embeddings=256, **extra))


def _build(config: str, model: str, **kwargs):
    """``model(config(**kwargs))`` by class name (so a missing class fails only its own family)."""
    config_cls, model_cls = getattr(transformers, config), getattr(transformers, model)
    return model_cls(config_cls(**kwargs))


# Two layers, hidden 32, 4 heads of 8, MLP 64.
_TWO = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256, **_IDS)
_GQA = dict(_TWO, num_key_value_heads=2)

BUILDERS = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=256, bos_token_id=0,
                                eos_token_id=0)
    ),
    "llama": lambda: _llama_like(transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": lambda: _llama_like(transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": lambda: _llama_like(transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "bert": lambda: transformers.BertModel(transformers.BertConfig(**_COMMON, max_position_embeddings=256)),
    "gpt_neox": lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**_COMMON, max_position_embeddings=256)),
    "mixtral": lambda: _llama_like(transformers.MixtralConfig, transformers.MixtralForCausalLM, num_local_experts=4,
                                   num_experts_per_tok=2),
    "qwen2_moe": lambda: _llama_like(
        transformers.Qwen2MoeConfig,
        transformers.Qwen2MoeForCausalLM,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
    ),
}
FAMILIES = list(BUILDERS)
DENSE = ["gpt2", "llama", "mistral", "qwen2", "bert", "gpt_neox"]

# Families found by structure (two layers each). Values: (config class, model class, config arguments).
_MORE = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_GQA, head_dim=8)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(_GQA, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_GQA, head_dim=8)),
    # Soft-capped attention and logits, and a sliding window shorter than the test inputs.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(_GQA, head_dim=8, query_pre_attn_scalar=8, sliding_window=4, attn_logit_softcapping=5.0,
                    final_logit_softcapping=3.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(_GQA, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                    layer_types=["sliding_attention", "full_attention"])),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(_TWO)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(_GQA)),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM",
                dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                     max_position_embeddings=256, window_size=4, attention_types=[[["global", "local"], 1]], **_IDS)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM",
             dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=64, rotary_dim=4, n_positions=256, **_IDS)),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                 word_embed_proj_dim=32, max_position_embeddings=256, **_IDS)),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, **_IDS)),
    "falcon": ("FalconConfig", "FalconForCausalLM",
               dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=256, **_IDS)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(_GQA)),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", dict(_GQA)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(_GQA)),
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(_GQA, logit_scale=0.5)),
    "granite": ("GraniteConfig", "GraniteForCausalLM",
                dict(_GQA, embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3,
                     logits_scaling=4.0)),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(_GQA, sliding_window=4)),
    # Multi-head latent attention (q/k and v of different widths); layer 0 dense, layer 1 routed.
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    dict(_TWO, num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4,
                         num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1,
                         q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8)),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", dict(_TWO, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    "distilbert": ("DistilBertConfig", "DistilBertForMaskedLM",
                   dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=256,
                        pad_token_id=0)),
}
for _name, (_config, _model, _kwargs) in _MORE.items():
    BUILDERS[_name] = lambda c=_config, m=_model, k=_kwargs: _build(c, m, **k)

ALL_FAMILIES = list(BUILDERS)
ENCODERS = ["bert", "roberta", "distilbert"]
MOE_FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3"]


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
