"""Checks, without a GPU, what ptxas made of the one-token kernels built for programmatic
dependent launch (`qgemm_small_pdl`, `qgemm_split_pdl`; kernels/launch.py).

    python tools/sass_pdl.py                 # the _pdl twin of every precompiled / swept small-M kernel
    python tools/sass_pdl.py --plain-same    # + the plain kernels' SASS against a git revision's (default HEAD)

Each _pdl kernel must hold one PREEXIT (griddepcontrol.launch_dependents) before one ACQBULK
(griddepcontrol.wait), and before the wait nothing but the weights' streaming loads (LDG with
.NA, L1::no_allocate) and the 32-bit scale/zero loads: no read of x, no store. With --plain-same,
the plain kernels (what runs unless PDL is asked for) must compile to the same SASS as at REV.
Needs nvcc (CUDA 12.4+) and cuobjdump on PATH (see tools/sass_wgmma.py). Exit status 1 on a finding.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from gptq_export.kernels import cuda as kc

ROOT = Path(__file__).resolve().parents[1]


def small_names(pdl: bool) -> list[str]:
    """Every small-M kernel the package precompiles or sweeps, as its plain or _pdl twin."""
    out = set()
    for n in kc.common_kernel_names() + [n for n, _ in kc.sweep_kernel_names()]:
        p = kc.small_params(n)
        if p:
            out.add(kc.small_kernel_name(p["bits"], p["mt"], p["nt"], p["gstc"], bool(p["xs"]), p["occ"], p["pd"], p["cs"],
                                         pdl=pdl))
    return sorted(out)


def sass_of(source: str, names: list[str], tmp: Path, tag: str) -> str:
    """cuobjdump -sass of `source` with `names` instantiated, for sm_90 (addresses and encodings dropped)."""
    cu, cubin = tmp / f"{tag}.cu", tmp / f"{tag}.cubin"
    cu.write_text(source + "\n" + "\n".join(f"template __global__ void {n}(SMALL_PARAMS);" for n in names) + "\n")
    r = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-cubin", "-diag-suppress", "177", "-o", str(cubin), str(cu)],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"error: nvcc failed:\n{r.stderr[-3000:]}")
    sass = subprocess.run(["cuobjdump", "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    return re.sub(r"/\* 0x[0-9a-f]+ \*/", "", sass)


def check_pdl(sass: str) -> list[str]:
    """Findings of the PREEXIT / ACQBULK check over every _pdl function of `sass`."""
    problems, n = [], 0
    for f in re.split(r"\n\s*Function : ", sass)[1:]:
        name = f.split("\n", 1)[0].strip()
        if "_pdl" not in name:
            continue
        n += 1
        ops = [re.sub(r"^.*?\*/\s*", "", ln).split(";")[0].strip() for ln in f.splitlines()
               if re.search(r"/\*[0-9a-f]{4,}\*/", ln)]
        acq = [i for i, o in enumerate(ops) if o.startswith("ACQBULK")]
        pre = [i for i, o in enumerate(ops) if o.startswith("PREEXIT")]
        if len(acq) != 1 or len(pre) != 1 or pre[0] > acq[0]:
            problems.append(f"{name}: PREEXIT at {pre}, ACQBULK at {acq} (want one each, PREEXIT first)")
            continue
        for o in ops[: acq[0]]:
            op = re.match(r"(@!?U?P\w+\s+)?(\S+)", o).group(2)
            if (op.startswith("LDG") and ".NA" not in op and op != "LDG.E.CONSTANT") or op.startswith(
                    ("STG", "RED", "ATOM", "LDS", "STS", "LD.", "ST.")):
                problems.append(f"{name}: before the wait: {o}")
    if n == 0:
        problems.append("no _pdl kernel in the SASS")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plain-same", nargs="?", const="HEAD", metavar="REV",
                    help="also compare the plain kernels' SASS with that git revision's (default HEAD)")
    args = ap.parse_args()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pdl_names = small_names(True)
            problems = check_pdl(sass_of(kc.source(), pdl_names, Path(tmp), "pdl"))
            print(f"{len(pdl_names)} _pdl kernels: {len(problems)} findings")
            if args.plain_same:
                plain = small_names(False)
                old_source = "\n".join(
                    subprocess.run(["git", "-C", str(ROOT), "show", f"{args.plain_same}:kernels/{name}"],
                                   capture_output=True, text=True, check=True).stdout for name in kc.SOURCES)
                same = sass_of(kc.source(), plain, Path(tmp), "now") == sass_of(old_source, plain, Path(tmp), "rev")
                print(f"{len(plain)} plain kernels: SASS {'the same as' if same else 'DIFFERS from'} {args.plain_same}'s")
                if not same:
                    problems.append(f"plain kernels differ from {args.plain_same}")
    except FileNotFoundError as exc:
        sys.exit(f"error: {exc.filename} not found: put nvcc and cuobjdump on PATH (see this script's docstring)")
    for p in problems[:40]:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
