"""Canonicalize matrix products with a parameter weight into `aten.linear`.

    aten.addmm(b, x, W[K, N]) -> aten.linear(x, Wᵀ, b)      (GPT-2's Conv1D)
    aten.mm(x, W[K, N])       -> aten.linear(x, Wᵀ)

The parameter is replaced by its transpose (a new tensor: the caller's model is not modified), so
every later pass sees one pattern: `aten.linear(x, W[N, K], b)`.
"""

from __future__ import annotations

import torch
from torch import fx, nn

aten = torch.ops.aten


def _param(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    if node.op != "get_attr":
        return None
    try:
        value = gm.get_parameter(node.target)
    except AttributeError:
        return None
    return value if value.dim() == 2 else None


def canonicalize_linears(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite addmm/mm whose right operand is a parameter used nowhere else into aten.linear."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.addmm.default, aten.mm.default):
            continue
        if node.kwargs:  # beta/alpha scaling: leave it alone
            continue
        if node.target is aten.addmm.default:
            bias, x, w_node = node.args
        else:
            (x, w_node), bias = node.args, None
        weight = _param(gm, w_node)
        if weight is None or len(w_node.users) != 1:
            continue
        owner, _, attr = w_node.target.rpartition(".")
        module = gm.get_submodule(owner) if owner else gm
        setattr(module, attr, nn.Parameter(weight.detach().t().contiguous(), requires_grad=False))
        w_node.meta.pop("val", None)
        args = (x, w_node) if bias is None else (x, w_node, bias)
        with gm.graph.inserting_before(node):
            linear = gm.graph.call_function(aten.linear.default, args)
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm
