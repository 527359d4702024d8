"""Registers and spills per kernel from a build log (nvcc --resource-usage / -Xptxas -v output).

    ninja -C build-lib -j2 2>&1 | tee build.log
    python3 tools/ptxas_report.py build.log            # markdown table, one row per kernel entry

Kernel names are demangled (c++filt) without namespaces or parameter lists; the template arguments
(dtype, head dim, tile, softcap flag) tell the instantiations apart.
"""

from __future__ import annotations

import re
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\w+)'")
# ptxas -v: "N bytes stack frame, S bytes spill stores, L bytes spill loads"
SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")
# nvcc --resource-usage: "Function properties for X ... REG:168 STACK:16 SHARED:0 ..."
RESOURCE = re.compile(r"Resource usage:\s*.*?REG:(\d+)\s+STACK:(\d+)")


def demangle(names):
    """c++filt when it is there (binutils), else the mangled names."""
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
        return out if len(out) == len(names) else list(names)
    except (OSError, subprocess.CalledProcessError):
        return list(names)


def short(name: str) -> str:
    name = re.sub(r"^void ", "", name)
    for ns in ("(anonymous namespace)::", "jax_flash3::", "bwd_sm90::", "sm90::", "simple::", "cutlass::"):
        name = name.replace(ns, "")
    name = re.sub(r"\([^()]*\)$", "", name)  # the parameter list repeats the template arguments
    return name.replace("bfloat16_t", "bf16").replace("half_t", "fp16").replace("float_e4m3_t", "e4m3")


def parse(lines):
    rows, cur = [], None
    for line in lines:
        m = ENTRY.search(line)
        if m:
            cur = {"name": m.group("name"), "arch": m.group("arch"), "regs": None,
                   "stack": None, "spill_st": None, "spill_ld": None}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = SPILL.search(line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
            continue
        m = REGS.search(line)
        if m:
            cur["regs"] = int(m.group(1))
    return rows


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    with open(argv[1], errors="replace") as fh:
        rows = parse(fh)
    for r, full in zip(rows, demangle([r["name"] for r in rows])):
        r["name"] = short(full)
    seen = set()
    print("| kernel | arch | registers | stack B | spill stores B | spill loads B |")
    print("|---|---|---|---|---|---|")
    for r in rows:  # a kernel compiled more than once (several builds in one log): the first wins
        key = (r["name"], r["arch"])
        if key in seen:
            continue
        seen.add(key)
        print(f"| {r['name']} | {r['arch']} | {r['regs']} | {r['stack']} | {r['spill_st']} | {r['spill_ld']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
