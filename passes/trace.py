"""Trace a model into a torch.fx graph with `torch.export` (non-strict, dynamic batch and sequence).

    nn.Module -> torch.fx.GraphModule   (inputs: input_ids [, attention_mask]; output: logits or hidden states)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.export import Dim

from gptq_export.errors import TraceError
from gptq_export.models import LoadedModel, ModelKind

#: Attribute under which the wrapped model sits; module names in reports have it stripped.
ROOT = "model"


class CausalLMForward(nn.Module):
    """input_ids [batch, seq] -> logits [batch, seq, vocab] without a KV cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


class EncoderForward(nn.Module):
    """input_ids, attention_mask [batch, seq] -> last hidden state [batch, seq, hidden]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@dataclass
class TracedModel:
    """The traced graph plus what is needed to run and re-export it."""

    graph_module: fx.GraphModule
    input_names: tuple[str, ...]
    output_name: str
    kind: ModelKind
    max_seq: int

    def example_inputs(self, batch: int = 2, seq: int = 8, vocab: int = 2) -> tuple[torch.Tensor, ...]:
        """Random inputs of the traced signature (token ids below `vocab`)."""
        return example_inputs(self.kind, batch, seq, vocab)

    def dynamic_shapes(self) -> tuple[dict[int, Dim], ...]:
        return dynamic_shapes(self.input_names, self.max_seq)


def example_inputs(kind: ModelKind, batch: int, seq: int, vocab: int) -> tuple[torch.Tensor, ...]:
    """Random token ids [batch, seq] below `vocab` (plus an all-ones mask for encoders)."""
    ids = torch.randint(0, max(vocab, 2), (batch, seq))
    return (ids, torch.ones_like(ids)) if kind is ModelKind.ENCODER else (ids,)


def dynamic_shapes(input_names: tuple[str, ...], max_seq: int) -> tuple[dict[int, Dim], ...]:
    """Dynamic batch and sequence dims, shared by every input."""
    batch, seq = Dim("batch", min=1, max=4096), Dim("seq", min=1, max=max_seq)
    return tuple({0: batch, 1: seq} for _ in input_names)


def wrap_for_export(loaded: LoadedModel) -> tuple[nn.Module, tuple[str, ...], str]:
    """The forward wrapper, input names and output name for this kind of model."""
    if loaded.kind is ModelKind.ENCODER:
        return EncoderForward(loaded.model), ("input_ids", "attention_mask"), "last_hidden_state"
    return CausalLMForward(loaded.model), ("input_ids",), "logits"


def trace_model(loaded: LoadedModel) -> TracedModel:
    """torch.export the wrapped model with dynamic batch/sequence dims and return its GraphModule."""
    wrapper, names, out_name = wrap_for_export(loaded)
    max_seq = max(16, loaded.max_context or 4096)
    example = example_inputs(loaded.kind, 2, 8, loaded.vocab_size or 2)
    try:
        with torch.no_grad():
            ep = torch.export.export(wrapper, example, dynamic_shapes=dynamic_shapes(names, max_seq), strict=False)
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
    return TracedModel(gm, names, out_name, loaded.kind, max_seq)
