"""Linears that read the same input, computed by one of them: `fuse_shared_input(model, ...)`.

    q = x @ Wq, k = x @ Wk, v = x @ Wv   ->   [q | k | v] = x @ [Wq | Wk | Wv], then split

One recording forward (pre-hooks on every nn.Linear and QuantLinear) finds the runs of consecutive
Linear calls on the very same input tensor (q/k/v of an attention block, gate/up of a gated MLP),
whatever the architecture. Each run of modules of one kind (all nn.Linear of one dtype and device,
or all QuantLinear with equal bits, group size and g_idx) becomes one wider module, concatenated
along the outputs: the first module of the run is replaced by a `FusedHead` that computes every
member's output and keeps the others', the others by `FusedPart`s that return theirs when called
on the same tensor (and compute it from the wide module otherwise, so results never depend on
call order).
On the GPU a decode step then launches one kernel per run instead of one per Linear: a small
layer's kernel costs a few microseconds whatever its size (docs/gpu-results.md, tenth session).

    from gptq_export.fuse_linears import fuse_shared_input
    report = fuse_shared_input(model, input_ids=ids)   # runs model(input_ids=ids) once
    report.groups    # [("model.layers.0.self_attn.q_proj", "...k_proj", "...v_proj"), ...]
    report.skipped   # [(names, why), ...]: runs on one input left apart
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .kernels.reference import pack_zeros, unpack_zeros
from .pack import PackedLinear
from .quant_linear_module import QuantLinear


@dataclass
class FuseReport:
    """Runs of Linears fused into one module each, and runs on one input that were not (with why)."""

    groups: list[tuple[str, ...]] = field(default_factory=list)
    skipped: list[tuple[tuple[str, ...], str]] = field(default_factory=list)


class _Group(nn.Module):
    """The wide module of one run and the output widths of its members."""

    def __init__(self, wide: nn.Module, widths: list[int]):
        super().__init__()
        self.wide = wide
        self.widths = list(widths)
        self._last: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    def all_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(self.wide(x), self.widths, dim=-1)


class FusedHead(nn.Module):
    """The first Linear of a fused run: computes every member's output, returns its own."""

    def __init__(self, group: _Group):
        super().__init__()
        self.group = group  # registered here (once): parameters / buffers move with .to()
        self.in_features = group.wide.in_features
        self.out_features = group.widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.group.all_outputs(x)
        self.group._last = (x, outs)
        return outs[0]


class FusedPart(nn.Module):
    """A later Linear of a fused run: its output from the head's call on the same tensor."""

    def __init__(self, group: _Group, index: int):
        super().__init__()
        object.__setattr__(self, "_group", group)  # not a submodule: the head owns it
        self.index = index
        self.in_features = group.wide.in_features
        self.out_features = group.widths[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self._group
        last = g._last
        if last is not None and last[0] is x:
            if self.index == len(g.widths) - 1:  # last member: drop the kept outputs
                g._last = None
            return last[1][self.index]
        return g.all_outputs(x)[self.index]


def _packed_mismatch(members) -> str | None:
    """Why packed Linears (PackedLinear or QuantLinear: the same attribute names) cannot be
    concatenated along the outputs; None when they can."""
    m0 = members[0]
    if any(m.in_features != m0.in_features for m in members):
        return "different input sizes"
    if any((m.bits, m.group_size) != (m0.bits, m0.group_size) for m in members):
        return "different bits or group sizes"
    if any(not torch.equal(m.g_idx, m0.g_idx) for m in members):
        return "different g_idx (act-order permutations)"
    return None


def concat_packed(parts: list[PackedLinear]) -> PackedLinear:
    """PackedLinears of equal bits, input size, group size and g_idx -> one, outputs concatenated."""
    why = _packed_mismatch(parts)
    if why:
        raise ValueError(f"cannot concatenate these packed Linears: {why}")
    p0 = parts[0]
    zeros = np.concatenate([unpack_zeros(p.qzeros.numpy(), p.bits, p.out_features) for p in parts], axis=1)
    return PackedLinear(
        qweight=torch.cat([p.qweight for p in parts], dim=1).contiguous(),
        scales=torch.cat([p.scales for p in parts], dim=1).contiguous(),
        qzeros=torch.from_numpy(pack_zeros(zeros, p0.bits)),
        g_idx=p0.g_idx.clone(),
        bits=p0.bits,
        in_features=p0.in_features,
        out_features=sum(p.out_features for p in parts),
        group_size=p0.group_size,
    )


def _packed_of(m: QuantLinear) -> PackedLinear:
    return PackedLinear(qweight=m.qweight.cpu(), scales=m.scales.float().cpu(), qzeros=m.qzeros.cpu(),
                        g_idx=m.g_idx.cpu(), bits=m.bits, in_features=m.in_features, out_features=m.out_features,
                        group_size=m.group_size)


def _bias(mods: list[nn.Module], like: torch.Tensor) -> torch.Tensor | None:
    """The members' biases concatenated (zeros for a member without one), or None if none has one."""
    if all(m.bias is None for m in mods):
        return None
    return torch.cat([m.bias.detach().to(like) if m.bias is not None else like.new_zeros(m.out_features)
                      for m in mods])


def _wide_module(mods: list[nn.Module]) -> nn.Module:
    """One module computing the members' outputs side by side (they passed `_why_not`)."""
    m0 = mods[0]
    if isinstance(m0, QuantLinear):
        like = next((m.bias for m in mods if m.bias is not None), m0.scales).detach()
        wide = QuantLinear(concat_packed([_packed_of(m) for m in mods]), _bias(mods, like.cpu()))
        return wide.to(device=m0.qweight.device, dtype=m0.scales.dtype)  # the members' scale dtype
    w0 = m0.weight
    wide = nn.Linear(m0.in_features, sum(m.out_features for m in mods), bias=any(m.bias is not None for m in mods),
                     device=w0.device, dtype=w0.dtype)
    with torch.no_grad():
        wide.weight.copy_(torch.cat([m.weight for m in mods], dim=0))
        if wide.bias is not None:
            wide.bias.copy_(_bias(mods, w0.detach()))
    return wide.requires_grad_(w0.requires_grad)


def _why_not(mods: list[nn.Module]) -> str | None:
    """Why these Linears cannot become one module (None: they can)."""
    m0 = mods[0]
    if any(type(m) is not type(m0) for m in mods):
        return "mixed module types"
    if isinstance(m0, QuantLinear):
        if any(m.qweight.device != m0.qweight.device for m in mods):
            return "on different devices"
        return _packed_mismatch(mods)
    if any(m.in_features != m0.in_features for m in mods):
        return "different input sizes"
    if any((m.weight.dtype, m.weight.device) != (m0.weight.dtype, m0.weight.device) for m in mods):
        return "different dtypes or devices"
    return None


def _record_runs(model: nn.Module, args, kwargs) -> tuple[list[list[str]], set[str]]:
    """Runs (>= 2) of consecutive Linear calls on one tensor, in one forward; and the Linears
    called more than once (left alone: their inputs differ between calls)."""
    calls: list[tuple[str, torch.Tensor]] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | QuantLinear):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: calls.append((name, inp[0] if inp else None))))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    counts = Counter(name for name, _ in calls)
    runs: list[list[str]] = []
    prev = None
    for name, x in calls:  # (x None: called with keyword arguments only, a run of its own)
        if prev is not None and x is prev:
            runs[-1].append(name)
        else:
            runs.append([name])
        prev = x
    return [r for r in runs if len(r) > 1], {n for n, c in counts.items() if c > 1}


def fuse_shared_input(model: nn.Module, *args, **kwargs) -> FuseReport:
    """Fuse the runs of Linears that read one tensor (found by running `model(*args, **kwargs)`
    once, under no_grad), in place; returns what was fused and what was left apart, with why."""
    runs, repeated = _record_runs(model, args, kwargs)
    report = FuseReport()
    for run in runs:
        names = tuple(run)
        again = [n for n in names if n in repeated]
        if again:
            report.skipped.append((names, f"called more than once per forward: {', '.join(again)}"))
            continue
        mods = [model.get_submodule(n) for n in names]
        why = _why_not(mods)
        if why:
            report.skipped.append((names, why))
            continue
        group = _Group(_wide_module(mods), [m.out_features for m in mods])
        for i, name in enumerate(names):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, FusedHead(group) if i == 0 else FusedPart(group, i))
        report.groups.append(names)
    return report
