"""Trace a model into a torch.fx graph with `torch.export` (non-strict, dynamic batch and sequence).

    nn.Module -> torch.fx.GraphModule   (inputs: input_ids [, attention_mask]; output: logits or hidden states)
    causal LM, kv_cache -> GraphModule  (input_ids, attention_mask, position_ids, past_key_values.{i}.key/value
                                         -> logits, present.{i}.key/value; [batch, kv_heads, seq, head_dim])
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.export import Dim

from gptq_export.errors import TraceError
from gptq_export.models import LoadedModel, ModelKind

#: Attribute under which the wrapped model sits; module names in reports have it stripped.
ROOT = "model"


class CausalLMForward(nn.Module):
    """input_ids [batch, seq] -> logits [batch, seq, vocab] without a KV cache.

    Position ids are passed as [batch, seq] (when the model takes them), so rotary cos/sin tables get
    the batch dim; opset 23's RotaryEmbedding needs that, a [1, seq] table broadcast is refused.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.takes_positions = "position_ids" in inspect.signature(model.forward).parameters

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.takes_positions:
            return self.model(input_ids=input_ids, use_cache=False).logits
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0).expand(batch, seq)
        return self.model(input_ids=input_ids, position_ids=positions, use_cache=False).logits


class CausalLMWithPast(nn.Module):
    """input_ids, attention_mask, position_ids, past [k0, v0, k1, v1, ...] -> logits, present k0, v0, ...

    The cache is rebuilt from the flat past tensors ([batch, kv_heads, past_seq, head_dim]) on each
    call, so the exported graph concatenates past and new keys; a past of length 0 is a prefill.
    """

    def __init__(self, model: nn.Module, num_layers: int):
        super().__init__()
        self.model = model
        self.num_layers = num_layers

    def forward(self, input_ids, attention_mask, position_ids, past: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        cache = DynamicCache(pairs, config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present: list[torch.Tensor] = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


class EncoderForward(nn.Module):
    """input_ids, attention_mask [batch, seq] -> last hidden state [batch, seq, hidden]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@dataclass(frozen=True)
class KVLayout:
    """Shape of the KV cache: per layer, keys and values are [batch, kv_heads, seq, head_dim]."""

    num_layers: int
    kv_heads: int
    head_dim: int

    def input_names(self) -> tuple[str, ...]:
        return tuple(f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value"))

    def output_names(self) -> tuple[str, ...]:
        return tuple(f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value"))


@dataclass
class TracedModel:
    """The traced graph plus what is needed to run and re-export it."""

    graph_module: fx.GraphModule
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    kind: ModelKind
    max_seq: int
    kv: KVLayout | None = None  # set for a decoder with a KV cache
    auto_seq: bool = False  # the sequence dim was traced as Dim.AUTO (see trace_model)

    def example_inputs(self, batch: int = 2, seq: int = 8, vocab: int = 2) -> tuple:
        """Random inputs of the traced signature (token ids below `vocab`)."""
        return example_inputs(self.kind, batch, seq, vocab, self.kv)

    def dynamic_shapes(self) -> tuple:
        return dynamic_shapes(self.kind, self.max_seq, self.kv, self.auto_seq)


#: Past length of the example inputs used to trace a KV-cache decoder (not 0 or 1: torch.export
#: specializes those; the exported graph runs with any past length, 0 included).
EXAMPLE_PAST = 5


def example_inputs(kind: ModelKind, batch: int, seq: int, vocab: int, kv: KVLayout | None = None) -> tuple:
    """Random token ids [batch, seq] below `vocab` (+ an all-ones mask for encoders; + mask,
    positions and a random past of EXAMPLE_PAST tokens for a KV-cache decoder)."""
    ids = torch.randint(0, max(vocab, 2), (batch, seq))
    if kv is not None:
        mask = torch.ones(batch, EXAMPLE_PAST + seq, dtype=torch.long)
        pos = torch.arange(EXAMPLE_PAST, EXAMPLE_PAST + seq).expand(batch, seq).contiguous()
        past = [torch.randn(batch, kv.kv_heads, EXAMPLE_PAST, kv.head_dim) for _ in range(2 * kv.num_layers)]
        return ids, mask, pos, past
    return (ids, torch.ones_like(ids)) if kind is ModelKind.ENCODER else (ids,)


def dynamic_shapes(kind: ModelKind, max_seq: int, kv: KVLayout | None = None, auto_seq: bool = False) -> tuple:
    """Dynamic batch and sequence dims (and past / total lengths for a KV-cache decoder).

    auto_seq: let torch.export infer the sequence dim's range (Dim.AUTO) instead of [1, max_seq].
    """
    batch = Dim("batch", min=1, max=4096)
    seq = Dim.AUTO if auto_seq else Dim("seq", min=1, max=max_seq)
    if kv is not None:
        past = Dim("past", min=0, max=max_seq)
        return ({0: batch, 1: seq}, {0: batch, 1: Dim.AUTO}, {0: batch, 1: seq},
                [{0: batch, 2: past} for _ in range(2 * kv.num_layers)])
    return tuple({0: batch, 1: seq} for _ in range(2 if kind is ModelKind.ENCODER else 1))


def kv_layout(model: nn.Module) -> KVLayout:
    """The model's KV-cache shape, read from one short forward with use_cache=True."""
    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 2, dtype=torch.long), use_cache=True)
    layers = getattr(out.past_key_values, "layers", None)
    if not layers:
        raise TraceError(f"{type(model).__name__} returned no KV cache; export it without --kv-cache")
    kinds = sorted({type(layer).__name__ for layer in layers} - {"DynamicLayer"})
    if kinds:
        raise TraceError(f"{type(model).__name__} uses {', '.join(kinds)} cache layers (sliding window or hybrid); "
                         "only full DynamicCache layers are supported: export it without --kv-cache")
    shapes = {tuple(layer.keys.shape[1::2]) for layer in layers} | {tuple(layer.values.shape[1::2]) for layer in layers}
    if len(shapes) != 1:
        raise TraceError(f"{type(model).__name__} has KV caches of different shapes {sorted(shapes)}; "
                         "only uniform caches are supported: export it without --kv-cache")
    heads, head_dim = shapes.pop()
    return KVLayout(len(layers), int(heads), int(head_dim))


def wrap_for_export(loaded: LoadedModel, kv: KVLayout | None = None) -> tuple[nn.Module, tuple[str, ...], tuple[str, ...]]:
    """The forward wrapper, input names and output names for this kind of model."""
    if loaded.kind is ModelKind.ENCODER:
        return EncoderForward(loaded.model), ("input_ids", "attention_mask"), ("last_hidden_state",)
    if kv is not None:
        return (CausalLMWithPast(loaded.model, kv.num_layers),
                ("input_ids", "attention_mask", "position_ids", *kv.input_names()), ("logits", *kv.output_names()))
    return CausalLMForward(loaded.model), ("input_ids",), ("logits",)


def trace_model(loaded: LoadedModel, kv_cache: bool = False) -> TracedModel:
    """torch.export the wrapped model with dynamic batch/sequence dims and return its GraphModule.

    kv_cache: trace the decoder with past/present key-values (causal LMs only).
    """
    if kv_cache and loaded.kind is not ModelKind.CAUSAL_LM:
        raise TraceError(f"{loaded.name} is a {loaded.kind} model; a KV cache needs a causal LM: drop --kv-cache")
    kv = kv_layout(loaded.model) if kv_cache else None
    wrapper, names, out_names = wrap_for_export(loaded, kv)
    max_seq = max(16, loaded.max_context or 4096)
    example = example_inputs(loaded.kind, 2, 8, loaded.vocab_size or 2, kv)
    auto_seq = False
    try:
        try:
            ep = _export(wrapper, example, dynamic_shapes(loaded.kind, max_seq, kv))
        except Exception as exc:
            # Some torch/transformers pairs (torch 2.11 + transformers 5.17) derive a sequence range that
            # contradicts [1, max_seq] ("Constraints violated"); let torch.export infer it instead.
            if "Constraints violated" not in str(exc):
                raise
            auto_seq = True
            ep = _export(wrapper, example, dynamic_shapes(loaded.kind, max_seq, kv, auto_seq=True))
    except Exception as exc:  # torch.export raises many types; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(
            f"torch.export could not trace {loaded.name}: {first[:300]}; "
            "export needs a model that torch.export supports (transformers >= 5)"
        ) from exc
    gm = ep.module()
    # Drop computations the output does not need (e.g. BERT's pooler when exporting hidden states).
    if gm.graph.eliminate_dead_code():
        gm.recompile()
    return TracedModel(gm, names, out_names, loaded.kind, max_seq, kv, auto_seq)


def _export(wrapper: nn.Module, example: tuple, shapes: tuple) -> torch.export.ExportedProgram:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(wrapper, example, dynamic_shapes=shapes, strict=False)
