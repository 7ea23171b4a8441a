"""The onnxruntime custom-op runtime: kernel registry and dequantization cache."""

from __future__ import annotations

import numpy as np
import pytest

from gptq_export import runtime
from gptq_export.errors import RuntimeSetupError
from gptq_export.kernels.reference import default_g_idx, pack_codes, pack_zeros, quant_matmul


def random_layer(rng, bits=4, K=70, N=9, group=32):
    codes = rng.integers(0, 1 << bits, (K, N))
    g_idx = default_g_idx(K, group)
    G = int(g_idx.max()) + 1
    scales = rng.uniform(0.01, 0.1, (G, N)).astype(np.float32)
    zeros = rng.integers(0, 1 << bits, (G, N))
    return pack_codes(codes, bits), scales, pack_zeros(zeros, bits), g_idx


def test_cpu_kernel_matches_reference_and_caches_by_content():
    rng = np.random.default_rng()
    runtime._cache.clear()
    layer = random_layer(rng)
    x = rng.standard_normal((3, 70)).astype(np.float32)
    bias = np.zeros(0, np.float32)
    y1 = runtime.cpu_kernel(x, *layer, bias, 70, 9, 4, 32)
    ref = quant_matmul(x, *layer, None, 4, 70, 9)
    np.testing.assert_allclose(y1, ref, rtol=1e-6, atol=1e-6)
    assert len(runtime._cache._items) == 1
    runtime.cpu_kernel(x, *[a.copy() for a in layer], bias, 70, 9, 4, 32)  # same content, new arrays
    assert len(runtime._cache._items) == 1
    other = random_layer(rng)
    y2 = runtime.cpu_kernel(x, *other, rng.standard_normal(9).astype(np.float32), 70, 9, 4, 32)
    assert len(runtime._cache._items) == 2 and not np.allclose(y1, y2)


def test_cache_is_bounded_in_bytes():
    cache = runtime.DequantCache(max_bytes=1000)
    for i in range(5):
        cache.get_or_make(bytes([i]), lambda: np.zeros(100, np.float32))  # 400 bytes each
    assert cache._bytes <= 1000 and len(cache._items) == 2


def test_registry_rejects_unknown_device_and_plugs_in_new_ones():
    reg = runtime.KernelRegistry()
    reg.register("cpu", runtime.cpu_kernel)
    with pytest.raises(RuntimeSetupError, match="no QuantLinear kernel for device 'cuda'"):
        reg.select("cuda")
    reg.register("fake", lambda *a, **k: np.ones(1))
    reg.select("fake")
    assert reg(1, 2, 3) == np.ones(1)


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeSetupError, match="does not exist"):
        runtime.InferenceSession(tmp_path / "nope.onnx")
