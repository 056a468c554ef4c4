"""Where each model family keeps its parts.

Every architecture difference nbinspect knows about lives in this module and nowhere else: the capture
engine, perturbations and views ask an :class:`Adapter` for "layer 3's attention" or "the module whose
input is layer 3's MLP neurons" and never look at class names themselves.

A family is described by dotted paths relative to the model's ``base_model`` (so ``LlamaModel`` and
``LlamaForCausalLM`` share one entry). Three sources, in this order:

1. ``parts=ModelParts(...)`` given by hand;
2. :data:`FAMILIES`, the families whose paths were checked by hand;
3. :func:`find_parts`, a structural search that works on any Hugging Face transformer: the block list
   is the largest ``nn.ModuleList`` of identical blocks, the attention is the module whose ``forward``
   calls transformers' attention interface (or, in the few families that never did — Bloom, Falcon,
   GPT-Neo — the one that computes a softmax itself), its output projection the linear layer reading
   ``n_heads * head_dim`` features and writing the hidden size, the MLP's down projection the one
   linear layer outside the attention that writes the hidden size, a router a ``gate``/``router``
   module with one output per expert. Fused QKV projections and parallel attention + MLP blocks need
   nothing special: only the *output* side of each sub-layer is hooked.

A part the search cannot find is ``None``; only the features that need it refuse, with an
:class:`UnsupportedModelError` naming the part and how to name it by hand. A model without a block
list at all is refused at once.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import dataclass, replace

import torch
from torch import nn

from ._attention_hook import calls_attention_interface


class UnsupportedModelError(TypeError):
    """The model is not a transformer nbinspect can find its way around."""


@dataclass(frozen=True)
class ModelParts:
    """Dotted paths (relative to ``model.base_model``) of the parts nbinspect hooks.

    ``layers`` names the list of transformer blocks; the other paths are relative to one block.
    ``None`` means the family has no such part (BERT has no final norm, dense models no router), or
    that nbinspect could not find it; the views that need it then say so.
    For a model nbinspect does not know, name them by hand, e.g. for a block ``blocks[i]`` with
    ``.attn`` (calling transformers' attention functions), ``.attn.proj`` and ``.ff.down``::

        parts = nbinspect.ModelParts(layers="blocks", attention="attn", attention_output="attn.proj",
                                     mlp="ff", neurons="ff.down", n_heads=8)
        with nbinspect.capture(model, residual=True, neurons=True, parts=parts) as record: ...
    """

    layers: str
    attention: str | None  # the module that calls the attention function (receives q, k, v)
    attention_output: str | None  # the linear layer whose *input* is the concatenated per-head outputs
    mlp: str | None
    neurons: str | None  # the linear layer whose *input* is the MLP neuron activations
    final_norm: str | None = None  # relative to base_model
    embedding: str | None = None  # relative to base_model
    router: str | None = None  # MoE gate; its output holds router logits/probabilities
    causal: bool = True
    n_heads: int | None = None  # only needed when the model's config does not say


_LLAMA_LIKE = ModelParts(
    layers="layers",
    attention="self_attn",
    attention_output="self_attn.o_proj",
    mlp="mlp",
    # Gated MLPs: down_proj reads act(gate) * up, which is what a "neuron activation" is.
    neurons="mlp.down_proj",
    final_norm="norm",
    embedding="embed_tokens",
)
_BERT = ModelParts(
    layers="encoder.layer",
    attention="attention.self",
    attention_output="attention.output.dense",
    mlp="intermediate",
    neurons="output.dense",
    final_norm=None,
    embedding="embeddings.word_embeddings",
    causal=False,
)

FAMILIES: dict[str, ModelParts] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "gpt2": ModelParts(
        layers="h",
        attention="attn",
        attention_output="attn.c_proj",
        mlp="mlp",
        neurons="mlp.c_proj",
        final_norm="ln_f",
        embedding="wte",
    ),
    "bert": _BERT,
    "roberta": _BERT,
    "gpt_neox": ModelParts(
        layers="layers",
        attention="attention",
        attention_output="attention.dense",
        mlp="mlp",
        neurons="mlp.dense_4h_to_h",
        final_norm="final_layer_norm",
        embedding="embed_in",
    ),
    # MoE families: experts are fused 3-D parameters in recent transformers, so there is no single
    # linear layer whose input is "the" neuron activation; neurons are not offered for them.
    "mixtral": replace(_LLAMA_LIKE, neurons=None, router="mlp.gate"),
    "qwen2_moe": replace(_LLAMA_LIKE, neurons=None, router="mlp.gate"),
}

# Families whose attention and MLP outputs are left as returned: no later in-place op changes them, so
# a capture may keep the tensors themselves instead of a copy (a copy into fresh memory each layer cost
# ~6 % of a 128-token forward). Checked per family by tests/test_families.py with tensor version
# counters. Falcon is not here: its block adds the attention output into the MLP output in place.
# Other families copy; a family whose outputs are found changed anyway is added to _OUTPUTS_CHANGED.
OUTPUTS_KEPT_AS_RETURNED = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "gpt2", "bert", "roberta", "distilbert", "gpt_neox", "mixtral",
    "qwen2_moe", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "gpt_neo", "gptj", "opt", "bloom",
    "stablelm", "olmo", "olmo2", "cohere", "granite", "starcoder2", "deepseek_v3",
})
_OUTPUTS_CHANGED: set[str] = set()  # found at run time (see capture): copied from then on

# What each part is called in words, for the errors that name a missing part.
_PART_WORDS = {
    "attention": "attention module (the one calling transformers' attention function)",
    "attention_output": "attention output projection (o_proj / c_proj / dense)",
    "mlp": "MLP module",
    "neurons": "MLP down projection (the linear layer reading the neuron activations)",
    "router": "mixture-of-experts router",
}


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def _materialized(module: nn.Module, name: str) -> torch.Tensor | None:
    """``module.<name>``, read from accelerate's offload store when the module keeps it on "meta".

    accelerate loads offloaded weights only inside the module's own forward (after torch's pre-hooks
    and before its post-hooks run), so a hook never sees them; the store holds the real values.
    """
    tensor = getattr(module, name, None)
    if tensor is None or tensor.device.type != "meta":
        return tensor
    hook = getattr(module, "_hf_hook", None)
    store = getattr(hook, "weights_map", None)
    if store is None:
        raise RuntimeError(f"{type(module).__name__}.{name} is on the meta device and no offload store holds it; load the model's weights first.")
    return store[name].to(hook.execution_device)


# --- finding the parts by structure ------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _source(obj) -> str:
    """A class's source (cached: read from disk once per class)."""
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _computes_attention(cls: type) -> bool:
    """An older-style attention class (Bloom, Falcon, GPT-Neo): computes the softmax in its own code."""
    source = _source(cls)
    return "softmax(" in source and ("def _attn" in source or "query" in source) and "ModuleList" not in source


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a linear-like module (nn.Linear and subclasses, GPT-2's Conv1D)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:
        return weight.shape[0], weight.shape[1]  # Conv1D stores [in, out]
    return None


def _last(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _config_value(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if value:
            return value
    return None


_OUTPUT_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "out_lin", "wo", "o", "proj", "out")
_QKV_WORDS = {"q", "k", "v", "query", "key", "value", "qkv", "c_attn", "query_key_value", "qkv_proj", "q_proj",
              "k_proj", "v_proj", "in_proj", "wqkv"}
_DOWN_NAMES = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out", "lin2", "w2", "dense", "wo", "out_proj")
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm", "ln_final")


def _pick(candidates: list[str], preferred: tuple[str, ...]) -> str | None:
    """The only candidate, or the one whose last name comes first in ``preferred``; None when unsure."""
    if len(candidates) == 1:
        return candidates[0]
    for name in preferred:
        named = [c for c in candidates if _last(c) == name]
        if len(named) == 1:
            return named[0]
    return None


def _find_layers(base: nn.Module) -> str | None:
    """The largest (by parameters) ``nn.ModuleList`` whose entries all have one class: the blocks."""
    best, best_size = None, -1
    for name, module in base.named_modules():
        if not name or not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:  # ties keep the outer list (named_modules walks outer lists first)
            best, best_size = name, size
    return best


def _n_experts(config) -> int | None:
    return _config_value(config, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _find_router(blocks: nn.ModuleList, config) -> str | None:
    n_experts = _n_experts(config)
    if not n_experts:
        return None
    for block in blocks:
        for name, module in block.named_modules():
            weight = getattr(module, "weight", None)
            if (
                name
                and _last(name) in ("gate", "router")
                and isinstance(weight, torch.Tensor)
                and weight.dim() == 2
                and n_experts in (weight.shape[0], weight.shape[1])
            ):
                return name
    return None


def find_parts(model: nn.Module) -> tuple[ModelParts | None, list[str]]:
    """Find a Hugging Face transformer's parts by structure (see the module docs).

    Returns the parts (``None`` when there is no block list or no attention in the blocks: not a
    transformer nbinspect can read) and one line per part that could not be found, for the error messages.
    """
    base = getattr(model, "base_model", model)
    config = getattr(model, "config", None)
    layers = _find_layers(base)
    if layers is None:
        return None, ["the list of transformer blocks (an nn.ModuleList of identical blocks)"]
    blocks = base.get_submodule(layers)
    block = blocks[0]
    missing: list[str] = []
    modules = dict(block.named_modules())
    hidden = _config_value(config, "hidden_size", "n_embd", "d_model", "dim")
    embedding = getattr(model, "get_input_embeddings", lambda: None)()
    if not hidden and embedding is not None:
        hidden = embedding.weight.shape[-1]

    # The attention: the module calling the attention interface, else an older one computing a softmax.
    attention = next((n for n, m in modules.items() if n and calls_attention_interface(type(m))), None)
    if attention is None:
        attention = next((n for n, m in modules.items() if n and _computes_attention(type(m))), None)
    if attention is None:  # blocks without attention: not a transformer (or one nbinspect cannot read)
        return None, [f"an attention module in the blocks at {layers!r} (none calls transformers' attention functions)"]
    n_heads = _config_value(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    if not n_heads:
        n_heads = _config_value(modules[attention], "num_heads", "num_attention_heads", "n_head", "n_heads")

    # Its output projection: inside the attention module, else (BERT) beside it in the attention's parent.
    attention_output = None
    parent = attention.rsplit(".", 1)[0] if "." in attention else attention
    for scope in dict.fromkeys((attention, parent)):
        candidates = [
            n for n, m in modules.items()
            if n.startswith(scope + ".") and (shape := _linear_shape(m)) is not None
            and shape[1] == hidden and (not n_heads or shape[0] % n_heads == 0) and _last(n) not in _QKV_WORDS
        ]
        attention_output = _pick(candidates, _OUTPUT_NAMES)
        if attention_output is not None:
            break
    if attention_output is None:
        missing.append(_PART_WORDS["attention_output"])

    # MoE router (in any block: some models keep dense MLPs in their first layers).
    router = _find_router(blocks, config)
    # The MLP's down projection: the one linear layer outside the attention block that writes the hidden
    # size. MoE blocks have fused experts (and maybe a shared expert): no single one, so no neurons.
    outside = attention.split(".")[0]
    candidates = [
        n for n, m in modules.items()
        if n and not (n == outside or n.startswith(outside + "."))
        and (shape := _linear_shape(m)) is not None and shape[1] == hidden and shape[0] != hidden
    ]
    neurons = None if router is not None else _pick(candidates, _DOWN_NAMES)
    # The MLP: the block's child holding the router or the down projection, when it holds more than that.
    anchor = router or neurons or (candidates[0] if candidates else None)
    mlp = None
    if anchor is not None and "." in anchor:
        child = anchor.split(".")[0]
        linears = [n for n, m in modules.items() if n.startswith(child + ".") and _linear_shape(m) is not None]
        if router is not None or len(linears) >= 2:
            mlp = child
    if neurons is None and router is None:
        missing.append(_PART_WORDS["neurons"])
    if mlp is None:
        missing.append(_PART_WORDS["mlp"])

    # The final norm: a norm of the base model outside the blocks and the embeddings.
    norms = [
        n for n, m in base.named_modules()
        if n and "norm" in type(m).__name__.lower() and not n.startswith(layers + ".") and "embed" not in n.lower()
    ]
    final_norm = _pick(norms, _NORM_NAMES)
    embedding_path = next((n for n, m in base.named_modules() if m is embedding), None) if embedding is not None else None

    causal = getattr(modules[attention], "is_causal", None)
    if causal is None:
        causal = not getattr(config, "is_encoder_decoder", False) and type(model).__name__.endswith(("CausalLM", "LMHeadModel"))
    parts = ModelParts(
        layers=layers,
        attention=attention,
        attention_output=attention_output,
        mlp=mlp,
        neurons=neurons,
        final_norm=final_norm,
        embedding=embedding_path or None,
        router=router,
        causal=bool(causal),
        n_heads=None if _config_value(config, "num_attention_heads", "n_head") else n_heads,
    )
    return parts, missing


# --- the adapter ---------------------------------------------------------------------------------------

# model -> (parts, not found): the structural search walks every module (~ms) and captures ask on every
# call. Keyed weakly and holding no reference to the model, so the model can still be freed.
_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class Adapter:
    """A model together with the paths to its parts, resolved to modules.

    ``by_structure`` is True when the parts were found by :func:`find_parts` (the family is not in
    :data:`FAMILIES`); ``not_found`` then lists the parts that search could not find.
    """

    model: nn.Module
    parts: ModelParts
    family: str
    by_structure: bool = False
    not_found: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: nn.Module, parts: ModelParts | None = None) -> Adapter:
        if not isinstance(model, nn.Module):
            raise UnsupportedModelError(
                f"expected a torch.nn.Module transformer (e.g. from nbinspect.load or transformers), got {type(model).__name__}"
            )
        config = getattr(model, "config", None)
        family = getattr(config, "model_type", None) or "custom"
        by_structure, not_found = False, []
        if parts is None:
            parts = FAMILIES.get(family)
        if parts is None:
            found = _FOUND.get(model)
            if found is None:
                found = _FOUND[model] = find_parts(model)
            parts, not_found = found
            by_structure = True
        if parts is None:
            known = ", ".join(sorted(FAMILIES))
            raise UnsupportedModelError(
                f"nbinspect could not find {not_found[0]} in a {family!r} model ({type(model).__name__}); families checked "
                f"by hand: {known}. Name the parts with parts=nbinspect.ModelParts(layers=..., attention=..., ...)."
            )
        adapter = cls(model=model, parts=parts, family=family, by_structure=by_structure, not_found=tuple(not_found))
        adapter._check()
        return adapter

    def _check(self) -> None:
        missing = []
        try:
            layers = self.layers
        except AttributeError:
            raise UnsupportedModelError(
                f"could not find the layer list {self.parts.layers!r} in {type(self.model).__name__}; "
                "name it by hand with parts=nbinspect.ModelParts(layers=...)."
            ) from None
        if not isinstance(layers, (nn.ModuleList, nn.Sequential, list, tuple)):
            raise UnsupportedModelError(
                f"{self.parts.layers!r} in {type(self.model).__name__} is a {type(layers).__name__}, not a list of "
                "transformer blocks; name the block list with parts=nbinspect.ModelParts(layers=...)."
            )
        if len(layers) == 0:
            raise UnsupportedModelError(f"{type(self.model).__name__} has an empty layer list at {self.parts.layers!r}.")
        for name in ("attention", "attention_output", "mlp", "neurons", "router"):
            path = getattr(self.parts, name)
            if path is None:
                continue
            # Some MoE models keep dense MLPs in a few layers, so a router only has to exist somewhere.
            where = layers if name == "router" else layers[:1]
            if not any(self._has(layer, path) for layer in where):
                missing.append(f"{name} ({path!r})")
        if missing:
            raise UnsupportedModelError(
                f"could not find {', '.join(missing)} in layer 0 of {type(self.model).__name__}; "
                "name the modules by hand with parts=nbinspect.ModelParts(...)."
            )

    @staticmethod
    def _has(block: nn.Module, path: str) -> bool:
        try:
            _get(block, path)
        except AttributeError:
            return False
        return True

    # --- the model as a whole -------------------------------------------------------------
    @property
    def base(self) -> nn.Module:
        return getattr(self.model, "base_model", self.model)

    @property
    def layers(self) -> nn.ModuleList:
        return _get(self.base, self.parts.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def config(self):
        return getattr(self.model, "config", None)

    @property
    def n_heads(self) -> int:
        if self.parts.n_heads:
            return self.parts.n_heads
        n = _config_value(self.config, "num_attention_heads", "n_head", "num_heads", "n_heads")
        if not n:
            raise UnsupportedModelError(
                f"could not read the number of attention heads of {type(self.model).__name__} from a config; "
                "give it with parts=nbinspect.ModelParts(..., n_heads=...)."
            )
        return n

    @property
    def n_kv_heads(self) -> int:
        c = self.config
        if getattr(c, "multi_query", False) and not getattr(c, "new_decoder_architecture", False):
            return 1  # Falcon-7B style multi-query attention
        return _config_value(c, "num_key_value_heads", "num_kv_heads") or self.n_heads

    @property
    def head_dim(self) -> int:
        """Width of one head's output: the attention output projection reads ``n_heads * head_dim`` features."""
        width = self.output_projection(0)[0].shape[1]
        return width // self.n_heads

    @property
    def max_positions(self) -> int | None:
        c = self.config
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(c, name, None)
            if value:
                return int(value)
        return None

    @property
    def is_causal(self) -> bool:
        return self.parts.causal

    def final_norm(self) -> nn.Module | None:
        return _get(self.base, self.parts.final_norm) if self.parts.final_norm else None

    def embedding(self) -> nn.Module | None:
        return _get(self.base, self.parts.embedding) if self.parts.embedding else None

    def unembedding(self) -> nn.Module | None:
        """The output embedding (``get_output_embeddings``): the vocabulary projection, None for encoders
        without a head. Some heads do more around it; :meth:`unembed` applies the whole head."""
        get = getattr(self.model, "get_output_embeddings", None)
        return get() if get else None

    def head(self) -> nn.Module | None:
        """The module that turns final hidden states into logits: the output embedding, or the masked-LM
        head around it (BERT's ``cls.predictions``, RoBERTa's ``lm_head``: transform + projection)."""
        projection = self.unembedding()
        if projection is None:
            return None
        for name, module in self.model.named_modules():
            if any(child is projection for child in module.children()):
                inside_base = any(m is self.base for m in module.modules())
                if module is self.model or inside_base or _last(name) in ("", "model"):
                    return projection
                return module
        return projection

    def unembed(self, hidden: torch.Tensor, vocab: slice | None = None, *, head: nn.Module | None = None) -> torch.Tensor | None:
        """Logits from hidden states *after* the final norm, as the model's own head computes them.

        That is :meth:`head` (DistilBERT's transform is three loose modules, applied here in its
        order) followed by the logit scaling some families apply after it: Gemma 2/3 soft-capping,
        Cohere's ``logit_scale``, Granite's ``logits_scaling``. None for models without a head.
        ``vocab``: only the logits of these token ids (a slice), for reductions that walk the vocabulary
        a block at a time; a plain linear head then computes just those rows. ``head``: what :meth:`head`
        returns, from a caller that unembeds block after block (finding it walks the model's modules).
        """
        head = self.head() if head is None else head
        if head is None:
            return None
        m = self.model
        if head is self.unembedding() and all(hasattr(m, n) for n in ("vocab_transform", "activation", "vocab_layer_norm")):
            hidden = m.vocab_layer_norm(m.activation(m.vocab_transform(hidden)))  # DistilBERT's masked-LM head
        if vocab is None:
            logits = head(hidden)
        elif type(head) is nn.Linear:
            weight, bias = _materialized(head, "weight"), _materialized(head, "bias")
            logits = torch.nn.functional.linear(hidden, weight[vocab], None if bias is None else bias[vocab])
        else:
            logits = head(hidden)[..., vocab]
        factor, cap = self.logit_transform()
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        if factor != 1.0:
            logits = logits * factor
        return logits

    def logit_transform(self) -> tuple[float, float | None]:
        """(linear factor, soft cap or None) that :meth:`unembed` applies after the head: Cohere's
        ``logit_scale`` multiplies, Granite's ``logits_scaling`` divides, Gemma 2/3 soft-cap (no family
        has both, so their order never matters)."""
        c = self.config
        factor = 1.0
        scale = getattr(c, "logit_scale", None)
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            factor *= float(scale)
        divide = getattr(c, "logits_scaling", None)
        if isinstance(divide, (int, float)) and not isinstance(divide, bool) and divide:
            factor /= float(divide)
        cap = getattr(c, "final_logit_softcapping", None)
        return factor, (float(cap) if cap else None)

    def tied_embeddings(self) -> bool:
        emb, unemb = self.embedding(), self.unembedding()
        return emb is not None and unemb is not None and emb.weight is unemb.weight

    # --- one layer ------------------------------------------------------------------------
    @property
    def outputs_kept_as_returned(self) -> bool:
        """Whether the attention and MLP outputs this model returns stay unchanged (see
        :data:`OUTPUTS_KEPT_AS_RETURNED`), so a capture may keep them without a copy."""
        return self.family in OUTPUTS_KEPT_AS_RETURNED and self.family not in _OUTPUTS_CHANGED

    def outputs_changed(self) -> None:
        """Note that this family changes its outputs in place after all: captures copy them from now on."""
        _OUTPUTS_CHANGED.add(self.family)

    def check_layer(self, layer: int, n: int | None = None) -> int:
        n = self.n_layers if n is None else n
        if not isinstance(layer, int) or isinstance(layer, bool) or not -n <= layer < n:
            raise IndexError(f"layer {layer!r} is out of range: this model has layers 0..{n - 1}.")
        return layer % n

    def check_head(self, head: int) -> int:
        n = self.n_heads
        if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < n:
            raise IndexError(f"head {head!r} is out of range: this model has heads 0..{n - 1} per layer.")
        return head

    def part(self, layer: int, name: str) -> nn.Module:
        path = getattr(self.parts, name)
        if path is None:
            words = _PART_WORDS.get(name, name)
            raise UnsupportedModelError(
                f"nbinspect knows no {words} in this {self.family!r} model ({type(self.model).__name__}), and this "
                f"needs one; name it by hand with parts=nbinspect.ModelParts({name}=...) if the model has one."
            )
        layers = self.layers  # looked up once: captures call this for every hook of every layer
        return _get(layers[self.check_layer(layer, len(layers))], path)

    def attention(self, layer: int) -> nn.Module:
        return self.part(layer, "attention")

    def uses_attention_interface(self, layer: int = 0) -> bool:
        """Whether the layer's attention goes through transformers' attention functions, so its q, k and v
        can be seen by wrapping them. Bloom, Falcon and GPT-Neo compute attention in their own code: only
        the weights they return can be captured (see :mod:`nbinspect._attention_hook`)."""
        return self.parts.attention is not None and calls_attention_interface(type(self.attention(layer)))

    def has_part(self, layer: int, name: str) -> bool:
        """Whether this layer has the part (Qwen2-MoE, for one, mixes dense and routed MLP layers)."""
        path = getattr(self.parts, name)
        if path is None:
            return False
        layers = self.layers
        return self._has(layers[self.check_layer(layer, len(layers))], path)

    def router_layers(self) -> list[int]:
        """The layers whose MLP is a mixture of experts with a router nbinspect can read."""
        return [i for i in range(self.n_layers) if self.has_part(i, "router")]

    @property
    def n_experts(self) -> int | None:
        return _n_experts(self.config)

    def output_projection(self, layer: int, module: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W, b)`` of the attention output projection with ``W`` as ``[d_model, n_heads * head_dim]``.

        GPT-2's Conv1D stores its weight transposed (``[in, out]``); this hides that, so head ``h``
        writes ``z[..., h*d:(h+1)*d] @ W[:, h*d:(h+1)*d].T``. Pass ``module`` to read the weights of the
        module as it is during a forward (offloaded weights are only materialized then).
        """
        module = self.part(layer, "attention_output") if module is None else module
        weight = _materialized(module, "weight")
        if type(module).__name__ == "Conv1D":
            weight = weight.t()
        return weight, _materialized(module, "bias")

    def is_offloaded(self, layer: int) -> bool:
        """Whether accelerate keeps this layer's weights off the device between forwards (cpu/disk offload).

        Such weights are swapped back to "meta" after each forward, so anything read from them during the
        forward must be copied to outlive it.
        """
        for module in self.layers[self.check_layer(layer)].modules():
            hook = getattr(module, "_hf_hook", None)
            for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
                if getattr(h, "offload", False):
                    return True
        return False

    def device_of(self, layer: int) -> torch.device:
        """Where the layer computes (layers may sit on different devices under a device_map).

        Offloaded layers keep their weights on "meta" between forwards; accelerate's hook then says
        where they are brought to run.
        """
        block = self.layers[self.check_layer(layer)]
        for module in block.modules():
            device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
            if device is not None:
                return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
        for p in block.parameters():
            if p.device.type != "meta":
                return p.device
        for p in self.model.parameters():
            if p.device.type != "meta":
                return p.device
        return torch.device("cpu")

