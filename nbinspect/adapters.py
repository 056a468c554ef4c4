"""Where each model family keeps its parts.

Every architecture difference nbinspect knows about lives in this module and nowhere else: the capture
engine, perturbations and views ask an :class:`Adapter` for "layer 3's attention" or "the module whose
input is layer 3's MLP neurons" and never look at class names themselves.

A family is described by dotted paths relative to the model's ``base_model`` (so ``LlamaModel`` and
``LlamaForCausalLM`` share one entry). A model outside the table raises :class:`UnsupportedModelError`
naming what could not be found; pass ``parts=ModelParts(...)`` to name the modules by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn


class UnsupportedModelError(TypeError):
    """The model is not a transformer nbinspect can find its way around."""


@dataclass(frozen=True)
class ModelParts:
    """Dotted paths (relative to ``model.base_model``) of the parts nbinspect hooks.

    ``layers`` names the list of transformer blocks; the other paths are relative to one block.
    ``None`` means the family has no such part (BERT has no final norm, dense models no router).
    For a model nbinspect does not know, name them by hand, e.g. for a block ``blocks[i]`` with
    ``.attn`` (calling transformers' attention functions), ``.attn.proj`` and ``.ff.down``::

        parts = nbinspect.ModelParts(layers="blocks", attention="attn", attention_output="attn.proj",
                                     mlp="ff", neurons="ff.down", n_heads=8)
        with nbinspect.capture(model, residual=True, neurons=True, parts=parts) as record: ...
    """

    layers: str
    attention: str  # the module that calls the attention function (receives q, k, v)
    attention_output: str  # the linear layer whose *input* is the concatenated per-head outputs
    mlp: str
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
    "bert": ModelParts(
        layers="encoder.layer",
        attention="attention.self",
        attention_output="attention.output.dense",
        mlp="intermediate",
        neurons="output.dense",
        final_norm=None,
        embedding="embeddings.word_embeddings",
        causal=False,
    ),
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


@dataclass
class Adapter:
    """A model together with the paths to its parts, resolved to modules."""

    model: nn.Module
    parts: ModelParts
    family: str

    @classmethod
    def of(cls, model: nn.Module, parts: ModelParts | None = None) -> Adapter:
        if not isinstance(model, nn.Module):
            raise UnsupportedModelError(
                f"expected a torch.nn.Module transformer (e.g. from nbinspect.load or transformers), got {type(model).__name__}"
            )
        config = getattr(model, "config", None)
        family = getattr(config, "model_type", None) or "custom"
        if parts is None:
            parts = FAMILIES.get(family)
        if parts is None:
            known = ", ".join(sorted(FAMILIES))
            raise UnsupportedModelError(
                f"nbinspect does not know where the layers of a {family!r} model ({type(model).__name__}) are; "
                f"supported families: {known}. Name them by hand with parts=nbinspect.ModelParts(layers=..., attention=..., ...)."
            )
        adapter = cls(model=model, parts=parts, family=family)
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
        c = getattr(self.model, "config", None)
        n = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None)
        if not n:
            raise UnsupportedModelError(
                f"could not read the number of attention heads of {type(self.model).__name__} from a config; "
                "give it with parts=nbinspect.ModelParts(..., n_heads=...)."
            )
        return n

    @property
    def n_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.n_heads

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
        get = getattr(self.model, "get_output_embeddings", None)
        return get() if get else None

    def tied_embeddings(self) -> bool:
        emb, unemb = self.embedding(), self.unembedding()
        return emb is not None and unemb is not None and emb.weight is unemb.weight

    # --- one layer ------------------------------------------------------------------------
    def check_layer(self, layer: int) -> int:
        n = self.n_layers
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
            raise UnsupportedModelError(f"a {self.family!r} model has no {name} part that nbinspect can hook.")
        return _get(self.layers[self.check_layer(layer)], path)

    def attention(self, layer: int) -> nn.Module:
        return self.part(layer, "attention")

    def has_part(self, layer: int, name: str) -> bool:
        """Whether this layer has the part (Qwen2-MoE, for one, mixes dense and routed MLP layers)."""
        path = getattr(self.parts, name)
        if path is None:
            return False
        return self._has(self.layers[self.check_layer(layer)], path)

    def router_layers(self) -> list[int]:
        """The layers whose MLP is a mixture of experts with a router nbinspect can read."""
        return [i for i in range(self.n_layers) if self.has_part(i, "router")]

    @property
    def n_experts(self) -> int | None:
        c = self.config
        return getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None)

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
