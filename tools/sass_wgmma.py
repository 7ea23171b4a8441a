"""What ptxas made of the Hopper wgmma kernels, without a GPU: registers, spills, serialization
warnings (C75xx), and the order of the main loop's instructions.

    python tools/sass_wgmma.py                        # the default plans' kernels, 3 and 4 bits, g128
    python tools/sass_wgmma.py --all                  # every tile of kernels.cuda_wgmma.TILES
    python tools/sass_wgmma.py "qgemm_wg<4,8,2,128,1,1,1,6>" -D WG_NC_PREFETCH=1

Needs nvcc (CUDA 12.4+, sm_90a) and cuobjdump on PATH (`pip install nvidia-cuda-cuobjdump`
puts one under site-packages/nvidia/cu13/bin; run `chmod +x` on it). Per kernel it prints the
sequence of HGMMA (H), 16-byte global loads (L: the weight prefetch of WR tiles), 8-byte global
loads (l) and mbarrier arrives (a), in code order: the first loads are the prologue's, then one
unit of the main loop (unrolled k-steps), whose weight prefetch for the next unit should come
before or right after its first HGMMA ("LLHLLaHHHHHHH"), not at its end ("LLHaHHHHHHLLH", what
ptxas made of read-only loads: docs/gpu-results-h200.md).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from gptq_export.kernels import cuda as kc
from gptq_export.kernels import cuda_wgmma as kw


def kernel_signature(source: str) -> str:
    """The parameter types of qgemm_wg, from its definition (for explicit instantiations)."""
    params = re.search(r"\bqgemm_wg\(([^)]*)\)\s*\{", source).group(1)
    return ", ".join(re.sub(r"\s*\b\w+\s*$", "", p.strip()) for p in params.split(","))


def default_names(sms: int = 132) -> list[str]:
    """The kernels of the default plans at 32-512 rows on a GPU of `sms` SMs (H100 / H200: 132)."""
    from gptq_export.kernels import cuda_mma

    cuda_mma.sm_count = lambda: sms  # no GPU here
    names = set()
    for bits in (3, 4):
        for K, N in ((4096, 11008), (8192, 8192), (8192, 28672)):
            lay = kc.plan_layout(np.arange(K) // 128, bits, K, N, K // 128)
            for M in (32, 128, 256, 512):
                tile, _ = kw.default_plan(kc.GpuLinear(lay, None, None, None), M)
                names.update(kw.kernel_name(bits, 8, p) for p in tile.parts())
    return sorted(names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="qgemm_wg<...> name expressions (default: the default plans')")
    ap.add_argument("--all", action="store_true", help="every tile, 3 and 4 bits, groups of 128")
    ap.add_argument("-D", action="append", default=[], help="a macro, e.g. WG_NC_PREFETCH=1")
    args = ap.parse_args()
    names = args.names or (kw.kernel_names(bits=(3, 4), gstcs=(8,)) if args.all else default_names())
    source = kc.source(True)
    sig = kernel_signature(source)
    with tempfile.TemporaryDirectory() as tmp:
        cu, cubin = Path(tmp) / "k.cu", Path(tmp) / "k.cubin"
        cu.write_text(source + "\n" + "\n".join(f"template __global__ void {n}({sig});" for n in names))
        try:
            r = subprocess.run(["nvcc", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-Xptxas", "-v",
                                *[f"-D{d}" for d in args.D], "-o", str(cubin), str(cu)], capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"error: nvcc failed:\n{r.stderr[-3000:]}")
            sass = subprocess.run(["cuobjdump", "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
        except FileNotFoundError as exc:
            sys.exit(f"error: {exc.filename} not found: put nvcc and cuobjdump on PATH (see this script's docstring)")
    info: dict[str, list[str]] = {}
    for line in r.stderr.splitlines():
        m = re.search(r"(_Z8qgemm_wgI\w+)", line)
        if m and ("C75" in line or "Used" in line or "spill" in line):
            info.setdefault(m.group(1), [])
        if m and "C75" in line:
            info[m.group(1)].append(re.search(r"\((C75\d+)\)", line).group(1))
    props = re.findall(r"Function properties for (_Z8qgemm_wgI\w+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores.*\n"
                       r".*Used (\d+) registers", r.stderr)
    print(f"{'kernel':<34} {'regs':>4} {'spill':>5}  warnings  code order (H hgmma, L ldg.128, l ldg.64, a arrive)")
    for mangled, _, spill, regs in props:
        targs = ",".join(re.findall(r"Li(\d+)E", mangled))
        body = sass.split(f"Function : {mangled}")[1].split("Function : ")[0]
        seq = "".join("H" if "HGMMA" in ln else "L" if re.search(r"LDG\.E[.\w]*\.128", ln)
                      else "l" if re.search(r"LDG\.E[.\w]*\.64", ln) else "a" if "SYNCS.ARRIVE" in ln else ""
                      for ln in body.splitlines())
        print(f"qgemm_wg<{targs}>".ljust(34), f"{regs:>4} {spill:>5}  {','.join(info.get(mangled, [])) or '-':<8}  {seq[:90]}")


if __name__ == "__main__":
    main()
