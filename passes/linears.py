"""Find the Linear layers of a traced graph and decide which ones to quantize.

    GraphModule -> LinearPlan(sites = quantizable aten.linear nodes, skipped = [(name, reason)])

Names are module qualified names as in `model.named_modules()`; a Linear left in float is always
listed with the reason.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from gptq_export.config import QuantConfig

from .trace import ROOT

aten = torch.ops.aten


@dataclass(frozen=True)
class LinearSite:
    """One `aten.linear(x, W, b)` node to quantize."""

    name: str  # module qualified name, e.g. "model.layers.0.self_attn.q_proj"
    node: str  # fx node name
    weight: str  # get_attr target of W [N, K]
    bias: str | None  # get_attr target of b [N], if any
    in_features: int
    out_features: int


@dataclass
class LinearPlan:
    sites: list[LinearSite] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def _strip_root(path: str) -> str:
    return path[len(ROOT) + 1 :] if path.startswith(ROOT + ".") else path


def module_name(node: fx.Node) -> str | None:
    """Qualified name of the innermost module that called this node (from nn_module_stack)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return _strip_root(path)


def linear_modules(model: nn.Module) -> list[str]:
    """Names of every Linear-like module (nn.Linear and transformers' Conv1D) of the model."""
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D":
            names.append(name)
    return names


def plan_linears(gm: fx.GraphModule, model: nn.Module, config: QuantConfig) -> LinearPlan:
    """Quantizable Linear sites of the graph and the reasons for those left in float."""
    plan = LinearPlan()
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not aten.linear.default:
            continue
        w_node = node.args[1]
        b_node = node.args[2] if len(node.args) > 2 else None
        name = module_name(node) or (_strip_root(w_node.target.rpartition(".")[0]) if w_node.op == "get_attr" else node.name)
        seen.add(name)
        reason = _skip_reason(gm, name, w_node, b_node, config)
        if reason:
            plan.skipped.append((name, reason))
            continue
        weight = gm.get_parameter(w_node.target)
        plan.sites.append(
            LinearSite(
                name=name,
                node=node.name,
                weight=w_node.target,
                bias=b_node.target if b_node is not None else None,
                in_features=int(weight.shape[1]),
                out_features=int(weight.shape[0]),
            )
        )
    for name in linear_modules(model):
        if name not in seen:
            plan.skipped.append((name, "not called by the traced forward (dead code for this export)"))
    return plan


def _skip_reason(gm: fx.GraphModule, name: str, w_node, b_node, config: QuantConfig) -> str | None:
    for pattern in config.skip:
        if fnmatch.fnmatchcase(name, pattern) and not config.overrides_skip(name):
            return f"matches --skip pattern '{pattern}'"
    if not isinstance(w_node, fx.Node) or w_node.op != "get_attr":
        return "weight is computed in the graph, not a parameter"
    try:
        gm.get_parameter(w_node.target)
    except AttributeError:
        return "weight is a buffer or constant, not a parameter"
    if len(w_node.users) > 1:
        return "weight is shared with another op (tied embeddings); quantizing it would change both"
    if b_node is not None and (not isinstance(b_node, fx.Node) or b_node.op != "get_attr"):
        return "bias is computed in the graph, not a parameter"
    return None
