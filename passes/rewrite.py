"""Replace quantized Linears by the packed custom op.

    aten.linear(x, W, b) -> gptq_export::quant_linear(x, qweight, scales, qzeros, g_idx, b, K, N, bits, group_size)

The packed tensors become buffers of the Linear's own module (so ONNX initializers are named like
`model.layers.0.self_attn.q_proj.qweight`) and the float weight is deleted.
"""

from __future__ import annotations

import torch
from torch import fx

from gptq_export.ops import quant_linear_target
from gptq_export.pack import PackedLinear

from .linears import LinearPlan

NO_BIAS = "no_bias"  # buffer name of the empty bias of a Linear without one


def rewrite_quantized_linears(gm: fx.GraphModule, plan: LinearPlan, packed: dict[str, PackedLinear]) -> fx.GraphModule:
    """Swap every planned aten.linear node for quant_linear on its packed buffers."""
    nodes = {n.name: n for n in gm.graph.nodes}
    target = quant_linear_target()
    for site in plan.sites:
        p = packed[site.name]
        node = nodes[site.node]
        w_node = node.args[1]
        owner_name, _, weight_attr = site.weight.rpartition(".")
        owner = gm.get_submodule(owner_name)
        for attr in ("qweight", "scales", "qzeros", "g_idx"):
            owner.register_buffer(attr, getattr(p, attr))
        getters = {}
        with gm.graph.inserting_before(node):
            for attr in ("qweight", "scales", "qzeros", "g_idx"):
                getters[attr] = gm.graph.get_attr(f"{owner_name}.{attr}")
            if site.bias is not None:
                bias = node.args[2]
            else:
                owner.register_buffer(NO_BIAS, torch.zeros(0))
                bias = gm.graph.get_attr(f"{owner_name}.{NO_BIAS}")
            new = gm.graph.call_function(
                target,
                (
                    node.args[0],
                    getters["qweight"],
                    getters["scales"],
                    getters["qzeros"],
                    getters["g_idx"],
                    bias,
                    p.in_features,
                    p.out_features,
                    p.bits,
                    p.group_size,
                ),
            )
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        if not w_node.users:
            gm.graph.erase_node(w_node)
            delattr(owner, weight_attr)
    gm.graph.lint()
    gm.recompile()
    return gm
