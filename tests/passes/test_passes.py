"""Graph passes on small hand-written modules: canonicalize, plan, sequential GPTQ, rewrite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gptq_export.config import QuantConfig
from gptq_export.gptq import gptq_quantize
from gptq_export.observe import HessianObserver
from gptq_export.ops import quant_linear_target
from gptq_export.pack import pack_linear
from gptq_export.passes.canonicalize import canonicalize_linears
from gptq_export.passes.gptq_pass import quantize_graph
from gptq_export.passes.linears import plan_linears
from gptq_export.passes.rewrite import rewrite_quantized_linears

aten = torch.ops.aten


class Conv1DLike(nn.Module):
    """GPT-2's Conv1D: weight stored [K, N], forward through addmm."""

    def __init__(self, k: int, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, n) * 0.2)
        self.bias = nn.Parameter(torch.randn(n) * 0.1)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(48, 64)
        self.conv = Conv1DLike(64, 40)
        self.down = nn.Linear(40, 24, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.conv(torch.tanh(self.up(x)))))


def traced(model: nn.Module, example: torch.Tensor):
    return torch.export.export(model, (example,), strict=False).module()


def test_canonicalize_turns_addmm_into_linear_and_keeps_the_function():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(3, 5, 48)
    gm = canonicalize_linears(traced(model, x))
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert aten.addmm.default not in targets
    assert targets.count(aten.linear.default) == 3
    torch.testing.assert_close(gm(x), model(x))
    assert model.conv.weight.shape == (64, 40)  # the caller's module is untouched


def test_plan_names_modules_and_reports_skips():
    model = MLP().eval()
    gm = canonicalize_linears(traced(model, torch.randn(2, 4, 48)))
    plan = plan_linears(gm, model, QuantConfig(skip=("down",)))
    assert [s.name for s in plan.sites] == ["up", "conv"]
    assert [(s.in_features, s.out_features) for s in plan.sites] == [(48, 64), (64, 40)]
    assert plan.skipped == [("down", "matches --skip pattern 'down'")]


def test_sequential_scheme_feeds_quantized_outputs_to_later_layers():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(8, 16, 48)
    gm = canonicalize_linears(traced(model, x))
    cfg = QuantConfig(bits=3, group_size=16)
    plan = plan_linears(gm, model, cfg)
    result = quantize_graph(gm, plan, (x,), cfg)
    assert [r.name for r in result.reports] == ["up", "conv", "down"]

    # Redo by hand: layer 2's Hessian comes from layer 1's *quantized* output.
    def hessian(inp):
        obs = HessianObserver(inp.shape[-1])
        obs.update(inp)
        return obs.H

    w_up = gptq_quantize(model.up.weight.detach(), hessian(x), cfg).dequantized()
    h1 = torch.tanh(nn.functional.linear(x, w_up, model.up.bias))
    w_conv = gptq_quantize(model.conv.weight.detach().T, hessian(h1), cfg).dequantized()
    torch.testing.assert_close(result.weights["up"].dequantized(), w_up)
    torch.testing.assert_close(result.weights["conv"].dequantized(), w_conv)
    # The float model would give a different Hessian, hence different weights.
    w_conv_float_inputs = gptq_quantize(
        model.conv.weight.detach().T, hessian(torch.tanh(model.up(x))), cfg
    ).dequantized()
    assert not torch.equal(w_conv_float_inputs, w_conv)


def test_hessian_observer_running_average_equals_batch_formula():
    rng = np.random.default_rng()
    xs = [torch.from_numpy(rng.standard_normal((n, 7)).astype(np.float32)) for n in (3, 10, 1)]
    obs = HessianObserver(7)
    for x in xs:
        obs.update(x)
    X = torch.cat(xs).double()
    torch.testing.assert_close(obs.H.double(), 2 * X.T @ X / X.shape[0], rtol=1e-5, atol=1e-6)
    assert obs.nsamples == 14


@pytest.mark.parametrize("bits,group", [(2, 16), (3, -1), (4, 16), (8, 32)])
def test_rewrite_uses_the_custom_op_and_matches_dequantized_linear(bits, group):
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(4, 6, 48)
    gm = canonicalize_linears(traced(model, x))
    cfg = QuantConfig(bits=bits, group_size=group, act_order=True)
    plan = plan_linears(gm, model, cfg)
    result = quantize_graph(gm, plan, (x,), cfg)
    expected = gm(x)  # graph with dequantized float weights
    packed = {name: pack_linear(qw, cfg.group_size) for name, qw in result.weights.items()}
    rewrite_quantized_linears(gm, plan, packed)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(quant_linear_target()) == 3 and aten.linear.default not in targets
    assert not hasattr(gm.get_submodule("up"), "weight")
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)
