"""Records, without a GPU, every launch `kernels.cuda.quant_matmul(path="fused")` makes for 3360
configurations (bits 2/3/4/8; five shapes, act-order among them; M = 1..40; fp16/fp32 x, aligned
or not; the kernel options), through a stand-in CuPy: kernel names, grids, blocks, argument
values, shared memory, and the errors. Two revisions' snapshots must be equal when a change of
the launch code is meant to change nothing (e.g. the launch-plan cache of kernels/cuda_fused.py).

    cp tools/launch_snapshot.py /tmp/ && git checkout REV && python /tmp/launch_snapshot.py before.json
    git checkout - && python tools/launch_snapshot.py after.json
    python tools/launch_snapshot.py --compare before.json after.json

(the package must import from the checkout: an editable install does). The stand-in answers
sm_90 with 132 SMs, PDL off.
"""

from __future__ import annotations

import argparse
import json
import sys
import types

import numpy as np


class _Array:
    """What quant_matmul reads of a CuPy array."""

    def __init__(self, shape, dtype, ptr):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.data = types.SimpleNamespace(ptr=ptr)
        self.flags = types.SimpleNamespace(c_contiguous=True)

    def reshape(self, *shape):
        shape = list(shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)
        if -1 in shape:
            shape[shape.index(-1)] = int(np.prod(self.shape)) // -int(np.prod(shape))
        return _Array(shape, self.dtype, self.data.ptr)


def _install(record: list) -> object:
    """The stand-in CuPy in sys.modules, and the kernels module patched to record launches."""
    fake = types.ModuleType("cupy")
    fake.ndarray, fake.float16, fake.float32 = _Array, np.dtype(np.float16), np.dtype(np.float32)
    fake.ascontiguousarray = lambda x: x
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0))
    sys.modules["cupy"] = fake
    from gptq_export.kernels import cuda as kc

    def function(name):
        def run(grid, block, args, shared_mem=0, **_):
            vals = [a.data.ptr if isinstance(a, _Array) else int(a) for a in args]
            record.append([name, list(grid), list(block), vals, shared_mem])
        return run

    kc.function, kc.sm_count, kc._cupy = function, lambda: 132, lambda: fake
    for mod_name in ("gptq_export.kernels.cuda_fused", "gptq_export.kernels.cuda"):
        try:
            mod = __import__(mod_name, fromlist=["x"])
        except ImportError:
            continue
        for name, value in (("sm90", True), ("pdl_default", False), ("pdl_supported", True)):
            if hasattr(mod, name):
                setattr(mod, name, lambda value=value: value)
    return kc


def snapshot() -> list:
    record: list = []
    kc = _install(record)
    rows = []
    for bits in (2, 3, 4, 8):
        for K, N, act in ((576, 200, False), (1000, 77, True), (8192, 28672, False), (4096, 1024, False),
                          (2048, 512, True)):
            g = np.arange(K) // 128
            if act:
                g = np.random.default_rng(0).permutation(g)
            lay = kc.plan_layout(g.astype(np.int32), bits, K, N, int(g.max()) + 1)
            gl = kc.GpuLinear(lay, _Array((lay.words,), np.uint32, 0xA000000), _Array((lay.Gp, lay.Np), np.uint32, 0xB000000),
                              _Array((lay.Kp,), np.int32, 0xC000000))
            for M in (1, 2, 3, 8, 17, 40):
                for dt in (np.float16, np.float32):
                    for off in (0, 2):
                        for opts in ({}, {"xs": True}, {"xs": False}, {"mt": 1, "cs": 2}, {"nt": 2}, {"occ": 3},
                                     {"pd": 3}):
                            record.clear()
                            try:
                                kc.quant_matmul(_Array((M, K), dt, 0x5000000 + off), gl,
                                                _Array((N,), np.float32, 0x6000000) if M % 2 else None,
                                                _Array((M, N), dt, 0x7000000), path="fused",
                                                xbuf=_Array((M, lay.Kp), np.float16, 0x8000000), **opts)
                                result = [list(r) for r in record]
                            except Exception as exc:  # the error is part of the behaviour compared
                                result = f"{type(exc).__name__}: {exc}"
                            rows.append([bits, K, N, act, M, np.dtype(dt).name, off, sorted(opts.items()), result])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="where to write the snapshot; with --compare, two snapshots")
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args()
    if args.compare:
        a, b = (json.load(open(p)) for p in args.paths[:2])
        diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        print(f"{len(a)} configurations, {len(diff)} differ")
        for x, y in diff[:5]:
            print(f"  {x}\n  {y}")
        sys.exit(1 if diff else 0)
    rows = snapshot()
    with open(args.paths[0], "w") as f:
        json.dump(rows, f, default=str)
    print(f"{len(rows)} configurations, {sum(isinstance(r[-1], str) for r in rows)} of them errors -> {args.paths[0]}")


if __name__ == "__main__":
    main()
