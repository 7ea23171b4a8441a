"""Sequential GPTQ over any traced architecture (the paper's scheme, without per-model layer lists).

    aten.linear(x, W, b) -> aten.linear(x, Ŵ, b)     (Ŵ = GPTQ(W, H(x)) on the grid of `config`)

An `fx.Interpreter` runs every calibration sample through the graph in topological order. At each
Linear it accumulates H = 2 X X^T / n of the node's input (once per distinct input: q/k/v share
it), quantizes W, and continues with Ŵ, so later layers see the error of earlier ones. Only the
nodes that feed a Linear being quantized are run (the lm_head's logits never are), and values are
freed after their last use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from gptq_export.config import Method, QuantConfig
from gptq_export.gptq import (
    PreparedHessian,
    QuantizedWeight,
    gptq_quantize,
    prepare_hessian,
    reconstruction_error,
    rtn_quantize,
)
from gptq_export.observe import HessianObserver

from .linears import LinearPlan, LinearSite


@dataclass
class LayerReport:
    """What happened to one Linear: its reconstruction error ||WX - ŴX||² / n for both methods."""

    name: str
    in_features: int
    out_features: int
    loss: float  # error of the chosen method
    rtn_loss: float  # error of round-to-nearest on the same grid and inputs
    percdamp: float
    seconds: float
    bits: int = 0  # code width of this layer (QuantConfig.bits unless a layer_bits override)


@dataclass
class QuantizeResult:
    weights: dict[str, QuantizedWeight] = field(default_factory=dict)
    reports: list[LayerReport] = field(default_factory=list)


ProgressFn = Callable[[LayerReport, int, int], None]


def _needed_nodes(gm: fx.GraphModule, targets: set[str]) -> set[str]:
    """Names of the nodes the target nodes depend on (targets included)."""
    by_name = {n.name: n for n in gm.graph.nodes}
    stack, seen = [by_name[t] for t in targets], set()
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(node.all_input_nodes)
    return seen


class _SequentialQuantizer(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, plan: LinearPlan, config: QuantConfig, progress: ProgressFn | None):
        super().__init__(gm, garbage_collect_values=True)
        self.config = config
        self.progress = progress
        self.sites = {s.node: s for s in plan.sites}
        self.needed = _needed_nodes(gm, set(self.sites))
        # How many sites still read each input node, so shared Hessians are freed when done.
        self.pending: dict[str, int] = {}
        by_name = {n.name: n for n in gm.graph.nodes}
        for s in plan.sites:
            key = by_name[s.node].args[0].name
            self.pending[key] = self.pending.get(key, 0) + 1
        # H (and, for GPTQ, its factorization) per input node, shared by the Linears reading it.
        self.hessians: dict[str, tuple[torch.Tensor, PreparedHessian | None]] = {}
        self.result = QuantizeResult()

    def run_node(self, n: fx.Node):
        if n.op == "placeholder" or n.op == "output":
            return super().run_node(n)
        if n.name not in self.needed:
            return None
        if n.name in self.sites:
            return self._quantize(n, self.sites[n.name])
        return super().run_node(n)

    def _hessian(self, x_node: fx.Node, x: torch.Tensor) -> tuple[torch.Tensor, PreparedHessian | None]:
        if x_node.name not in self.hessians:
            obs = HessianObserver(x.shape[-1], x.device)
            obs.update(x)
            prepared = prepare_hessian(obs.H, self.config) if self.config.method is Method.GPTQ else None
            self.hessians[x_node.name] = (obs.H, prepared)
        entry = self.hessians[x_node.name]
        self.pending[x_node.name] -= 1
        if self.pending[x_node.name] == 0:
            del self.hessians[x_node.name]
        return entry

    def _quantize(self, n: fx.Node, site: LinearSite) -> torch.Tensor:
        start = time.perf_counter()
        x = self.env[n.args[0]]
        H, prepared = self._hessian(n.args[0], x)
        W = self.module.get_parameter(site.weight).detach().to(torch.float32)
        config = self.config.for_layer(site.name)
        rtn = rtn_quantize(W, config)
        rtn_loss = reconstruction_error(W, rtn.dequantized(), H)
        if config.method is Method.GPTQ:
            qw = gptq_quantize(W, H, config, prepared)
            loss = reconstruction_error(W, qw.dequantized(), H)
        else:
            qw, loss = rtn, rtn_loss
        W_hat = qw.dequantized().to(torch.float32)
        owner, _, attr = site.weight.rpartition(".")
        setattr(self.module.get_submodule(owner), attr, nn.Parameter(W_hat, requires_grad=False))
        self.result.weights[site.name] = qw
        report = LayerReport(
            site.name, site.in_features, site.out_features, loss, rtn_loss, qw.percdamp, time.perf_counter() - start,
            config.bits,
        )
        self.result.reports.append(report)
        if self.progress:
            self.progress(report, len(self.result.reports), len(self.sites))
        bias = self.module.get_parameter(site.bias) if site.bias else None
        return F.linear(x, W_hat, bias)


def quantize_graph(
    gm: fx.GraphModule,
    plan: LinearPlan,
    calib_inputs: tuple[torch.Tensor, ...],
    config: QuantConfig,
    progress: ProgressFn | None = None,
) -> QuantizeResult:
    """Quantize every site of `plan` sequentially on the calibration inputs (modifies gm's weights)."""
    for site in plan.sites:
        config.check_layer(site.name, site.in_features)
    runner = _SequentialQuantizer(gm, plan, config, progress)
    with torch.no_grad():
        runner.run(*calib_inputs)
    return runner.result
