"""Shared fixture of the kernel tests: CuPy, skipped cleanly where CUDA is absent (CI has no GPU)."""

from __future__ import annotations

import pytest

from gptq_export.kernels import cuda as kc


@pytest.fixture(scope="module")
def cp():
    """The cupy module, when CuPy imports and a CUDA device answers; else the test is skipped."""
    cupy = pytest.importorskip("cupy")
    reason = kc.cuda_available()
    if reason:
        pytest.skip(reason)
    return cupy
